"""calicoctl's Felix configuration commands and its connection to etcd, against a real etcd
over both APIs: `config set|get|unset` validated against Felix's parameter table (local-only
parameters refused with the reason, bad values with Felix's message, nothing written), and the
connection read from Felix's own sources (TLS files from the config file)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from test_calicoctl import Ctl, api, ctl

from calico.ctl.cli import main

__all__ = ["api", "ctl"]  # fixtures shared with test_calicoctl.py


def test_config_set_get_unset(ctl: Ctl) -> None:
    code, out, _ = ctl("config", "set", "metadataport", "8776")
    assert code == 0 and "MetadataPort" in out
    assert ctl.client.get("/calico/v1/config/MetadataPort") == "8776"
    assert ctl("config", "set", "LogSeverityScreen", "INFO", "--host", "h1")[0] == 0
    assert ctl.client.get("/calico/v1/host/h1/config/LogSeverityScreen") == "INFO"
    code, out, _ = ctl("config", "get", "LogSeverityScreen", "--host", "h1", "-o", "json")
    rows = json.loads(out)
    assert {(r["scope"], r["value"]) for r in rows} == {("h1", "INFO"), ("default", "ERROR")}
    code, out, _ = ctl("config", "get")
    assert "MetadataPort" in out and "LogSeverityScreen" in out
    assert ctl("config", "set", "MetadataPort", "8776")[1].startswith("MetadataPort is already")
    assert ctl("config", "unset", "MetadataPort")[0] == 0
    assert ctl.client.get("/calico/v1/config/MetadataPort") is None
    assert ctl("config", "unset", "MetadataPort")[0] == 1


@pytest.mark.parametrize(
    "name", ["EtcdEndpoints", "FelixHostname", "EtcdCaFile", "DataplaneDriver", "DatastoreType"]
)
def test_config_set_of_a_local_only_parameter_is_refused(ctl: Ctl, name: str) -> None:
    before = ctl.tree()
    code, _, err = ctl("config", "set", name, "x")
    assert code == 1
    assert "local-only" in err and "Felix never reads it from etcd" in err
    assert ctl.tree() == before


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["MetadataPort", "eighty"], "not an integer"),
        (["IptablesMarkMask", "0x1"], "bits"),
        (["NoSuchThing", "1"], "unknown Felix parameter"),
        (["MetadataPrt", "1"], "did you mean MetadataPort"),
        (["LogSeverityScreen", " "], "empty value"),
        (["LogSeverityScreen", "INFO", "--host", "bad host"], "--host"),
    ],
)
def test_config_set_of_an_invalid_value_is_refused(ctl: Ctl, args: list[str], problem: str) -> None:
    before = ctl.tree()
    code, _, err = ctl("config", "set", *args)
    assert code == 2 and problem in err, err
    assert ctl.tree() == before


def test_etcd_down_is_exit_1(ctl: Ctl, tmp_path: Path) -> None:
    code, _, err = ctl("get", "profile", "--etcd-endpoints", "http://127.0.0.1:9")
    assert code == 1 and "etcd error" in err
    code, _, err = ctl("get", "profile", "--etcd-endpoints", "not a url")
    assert code == 2 and "EtcdEndpoints" in err


def test_tls_and_the_config_file_as_felix_reads_them(
    etcd_factory: Any, api: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The connection comes from Felix's own sources: TLS files from the config file, the
    endpoints and API from the environment; without the client certificate etcd refuses."""
    server = etcd_factory(tls=True)
    cfg = tmp_path / "felix.cfg"
    cfg.write_text(
        f"[global]\nEtcdCaFile = {server.tls.ca_file}\nEtcdCertFile = {server.tls.client_cert}\n"
        f"EtcdKeyFile = {server.tls.client_key}\n"
    )
    env = {"FELIX_ETCDENDPOINTS": server.client_url, "FELIX_DATAPLANEDRIVER": f"etcd{api}"}
    tier = "kind: tier\nmetadata: {name: t1}\nspec: {order: 1}\n"
    assert main(["apply", "-f", "-", "-c", str(cfg)], env, io.StringIO(tier)) == 0
    assert capsys.readouterr().out == "tier t1 created\n"
    assert main(["get", "tier", "t1", "-o", "json", "-c", str(cfg)], env) == 0
    assert json.loads(capsys.readouterr().out)[0]["spec"] == {"order": 1}
    cfg.write_text(f"[global]\nEtcdCaFile = {server.tls.ca_file}\n")
    assert main(["get", "tier", "-c", str(cfg)], env) == 1
    assert "etcd error" in capsys.readouterr().err
