"""The Neutron side's `[calico]` options (calico.openstack.config) read from a real neutron.conf
by oslo.config, and the etcd settings they give: one etcd by host and port (the contract's
names and defaults), or a cluster by `etcd_endpoints`; the DHCP agent reads the same options
(test_dhcp_agent_config.py) and must agree."""

from __future__ import annotations

from pathlib import Path

import pytest

cfg = pytest.importorskip("oslo_config.cfg")

from calico.common.etcd.failover import FailoverClient  # noqa: E402
from calico.dhcp.agent import load_config  # noqa: E402
from calico.openstack import config  # noqa: E402

CLUSTER = "http://10.0.0.1:2379,http://10.0.0.2:2379,http://10.0.0.3:2379"


def conf_from(tmp_path: Path, text: str) -> cfg.ConfigOpts:
    path = tmp_path / "neutron.conf"
    path.write_text(text)
    conf = config.register(cfg.ConfigOpts())
    conf(args=[], default_config_files=[str(path)])
    return conf


def test_defaults_are_the_contract(tmp_path: Path) -> None:
    conf = conf_from(tmp_path, "")
    assert (conf.calico.etcd_host, conf.calico.etcd_port) == ("localhost", 4001)
    assert conf.calico.etcd_endpoints == []
    settings = config.etcd_settings(conf.calico)
    assert settings.endpoints == ("http://localhost:4001",)
    assert (settings.key_file, settings.cert_file, settings.ca_file) == (None, None, None)


def test_host_and_port_with_tls(tmp_path: Path) -> None:
    conf = conf_from(
        tmp_path, "[calico]\netcd_host = fd00::1\netcd_port = 2379\netcd_ca_cert_file = /ca.pem\n"
    )
    settings = config.etcd_settings(conf.calico)
    assert settings.endpoints == ("https://[fd00::1]:2379",)
    assert settings.ca_file == "/ca.pem"


def test_endpoints_list_overrides_host_and_port(tmp_path: Path) -> None:
    conf = conf_from(
        tmp_path,
        f"[calico]\netcd_host = etcd0\netcd_port = 2379\netcd_endpoints = {CLUSTER}\n",
    )
    assert config.etcd_settings(conf.calico).endpoints == tuple(CLUSTER.split(","))


def test_endpoints_over_tls(tmp_path: Path) -> None:
    conf = conf_from(
        tmp_path,
        "[calico]\netcd_endpoints = https://e1:2379, https://e2:2379\n"
        "etcd_key_file = /k.pem\netcd_cert_file = /c.pem\netcd_ca_cert_file = /ca.pem\n",
    )
    settings = config.etcd_settings(conf.calico)
    assert settings.endpoints == ("https://e1:2379", "https://e2:2379")
    assert (settings.key_file, settings.cert_file, settings.ca_file) == (
        "/k.pem",
        "/c.pem",
        "/ca.pem",
    )


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("http://a:1,https://b:2", "same scheme"),
        ("etcd1:2379", "http or https"),
        ("http://a:2379/v2/keys", "no path"),
        ("http://user:pw@a:2379", "user or password"),
        ("http://a:2379?x=1", "no path"),
    ],
)
def test_bad_endpoints_name_the_option(tmp_path: Path, value: str, problem: str) -> None:
    conf = conf_from(tmp_path, f"[calico]\netcd_endpoints = {value}\n")
    with pytest.raises(ValueError, match=rf"\[calico\] etcd_endpoints: .*{problem}"):
        config.etcd_settings(conf.calico)


def test_tls_files_with_http_endpoints_are_refused(tmp_path: Path) -> None:
    conf = conf_from(tmp_path, f"[calico]\netcd_endpoints = {CLUSTER}\netcd_cert_file = /c.pem\n")
    with pytest.raises(ValueError, match="TLS files are set but the endpoints use http://"):
        config.etcd_settings(conf.calico)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[calico]\netcd_host = e.example\netcd_port = 2379\netcd_key_file = /k\n",
        f"[calico]\netcd_endpoints = {CLUSTER}\netcd_host = ignored\n",
        "[calico]\netcd_endpoints = https://a:1 , https://b:2/\netcd_ca_cert_file = /ca\n",
    ],
)
def test_the_dhcp_agent_reads_the_same_options_the_same_way(tmp_path: Path, text: str) -> None:
    conf = conf_from(tmp_path, text)
    assert load_config([str(tmp_path / "neutron.conf")]).etcd == config.etcd_settings(conf.calico)


@pytest.mark.parametrize("api", ["v2", "v3"])
def test_the_store_tries_every_endpoint(tmp_path: Path, api: str) -> None:
    conf = conf_from(tmp_path, f"[calico]\netcd_endpoints = {CLUSTER}\netcd_api_version = {api}\n")
    store = config.connect_store(conf)
    try:
        assert isinstance(store.client, FailoverClient)
        assert store.client.endpoint in CLUSTER.split(",")
        seen = set()
        for _ in range(3):
            seen.add(store.client.endpoint)
            store.client.rotate()
        assert seen == set(CLUSTER.split(","))
    finally:
        store.client.close()


def test_sample_config_lists_the_new_option() -> None:
    (group, opts), *_ = config.list_opts()
    assert group == "calico"
    names = [opt.name for opt in opts]
    assert names[:3] == ["etcd_host", "etcd_port", "etcd_endpoints"]
