"""`calico-felix diags` in a lab namespace against a real etcd: the tarball holds the resolved
config with sources, the namespace's iptables/ipset/route/link state, Felix's status keys
and its log's tail; with etcd down, or a tool missing, the failing items become error files
and everything else is still collected."""

from __future__ import annotations

import json
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from calico.common import datamodel_v1 as dm
from calico.felix import diags
from calico.lab.etcd_server import EtcdServer, free_port
from calico.lab.felix import felix_env, run_felix
from calico.lab.netns import NetNS
from calico.lab.relay import LoopbackRelay

HOST = "diags-host"
KERNEL_FILES = [name for name, _ in diags.COMMANDS]


@pytest.fixture
def ns(netns: Callable[[], NetNS]) -> NetNS:
    """A namespace with some state of its own for the collectors to find."""
    ns = netns()
    ns.run(["ipset", "create", "calt-diag-set", "hash:ip"])
    ns.run(["ipset", "add", "calt-diag-set", "10.65.0.7"])
    ns.run(["iptables", "-N", "CALT-DIAG-V4"])
    ns.run(["ip6tables", "-N", "CALT-DIAG-V6"])
    ns.add_addr("lo", "198.18.5.5/32")
    ns.run(["ip", "-6", "route", "add", "2001:db8:5::/64", "dev", "lo"])
    return ns


@pytest.fixture
def relay(etcd: EtcdServer, ns: NetNS) -> Iterator[LoopbackRelay]:
    with LoopbackRelay(ns.name, etcd.port) as r:
        yield r


def _run_diags(ns: NetNS, tmp: Path, etcd_url: str, **env: str) -> tuple[dict[str, str], str]:
    """Run diags in the namespace; the tarball's files (relative to its top directory)."""
    cfg = tmp / "felix.cfg"
    cfg.write_text("[global]\nMetadataPort = 1234\n")
    log_file = tmp / "felix.log"
    log_file.write_text("".join(f"2024-01-01 line {i}\n" for i in range(5)))
    output = tmp / "out" / "diags.tar.gz"
    output.parent.mkdir()
    extra = {"FELIX_LOGFILEPATH": str(log_file), **env}
    proc = run_felix(
        ns,
        ["diags", "-c", str(cfg), "--output", str(output)],
        felix_env(etcd_url, HOST, extra),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(output)
    assert "Traceback" not in proc.stderr
    assert output.stat().st_mode & 0o077 == 0  # private: the config names key files
    with tarfile.open(output) as tar:
        members = tar.getmembers()
        tops = {m.name.split("/")[0] for m in members}
        assert len(tops) == 1 and tops.pop().startswith(f"calico-felix-diags-{HOST}-")
        files = {}
        for member in members:
            extracted = tar.extractfile(member)
            assert extracted is not None
            files[member.name.split("/", 1)[1]] = extracted.read().decode()
    return files, proc.stderr


def test_diags_against_a_live_etcd(
    etcd: EtcdServer, ns: NetNS, relay: LoopbackRelay, tmp_path: Path
):
    status = json.dumps({"time": "2024-01-01T00:00:00Z", "uptime": 12.5, "first_update": False})
    etcd.v2_put(dm.FelixStatusKey(HOST).path, status)
    etcd.v2_put(dm.FelixLastStatusKey(HOST).path, status)
    wep = dm.WorkloadEndpointStatusKey(HOST, "openstack", "vm1", "tap1")
    etcd.v2_put(wep.path, '{"status": "up"}')
    etcd.v2_put(dm.FelixStatusKey("another-host").path, status)  # not ours
    etcd.v2_put(dm.config_key("ReportingTTLSecs"), "77")
    etcd.v2_put(dm.config_key("MetadataAddr", HOST), "10.0.0.1")

    files, stderr = _run_diags(ns, tmp_path, etcd.client_url)

    assert "ERROR" not in files["index.txt"], files["index.txt"]
    assert not [name for name in files if name.endswith(".error.txt")]
    assert stderr.count("ERROR ") == 0

    config = json.loads(files["config.json"])
    params = config["parameters"]
    assert params["MetadataPort"] == {"value": 1234, "source": "file"}
    assert params["ReportingTTLSecs"] == {"value": 77, "source": "etcd-global"}
    assert params["MetadataAddr"] == {"value": "10.0.0.1", "source": "etcd-host"}
    assert params["FelixHostname"] == {"value": HOST, "source": "env"}
    assert params["StartupCleanupDelay"] == {"value": 30, "source": "default"}
    assert "note" not in config
    assert config["problems"] == []
    assert json.loads(files["config-etcd.json"]) == {
        "host": {"MetadataAddr": "10.0.0.1"},
        "global": {"ReportingTTLSecs": "77"},
    }

    assert ":CALT-DIAG-V4 - [0:0]" in files["iptables-save.txt"]
    assert ":CALT-DIAG-V6 - [0:0]" in files["ip6tables-save.txt"]
    assert "Name: calt-diag-set" in files["ipset-list.txt"]
    assert "10.65.0.7" in files["ipset-list.txt"]
    assert "198.18.5.5" in files["ip-route.txt"]  # the local table: "table all"
    assert "2001:db8:5::/64" in files["ip6-route.txt"]
    assert "lo:" in files["ip-link.txt"] and "LOOPBACK" in files["ip-link.txt"]
    assert "inet 198.18.5.5/32" in files["ip-addr.txt"]

    keys = json.loads(files["etcd-status.json"])
    assert keys["prefix"] == dm.felix_host_status_dir(HOST)
    assert keys["keys"] == {
        dm.FelixStatusKey(HOST).path: status,
        dm.FelixLastStatusKey(HOST).path: status,
        wep.path: '{"status": "up"}',
    }
    assert files["felix-log-tail.txt"] == "".join(f"2024-01-01 line {i}\n" for i in range(5))

    index = files["index.txt"].splitlines()
    expected = {"config-etcd.json", "config.json", *KERNEL_FILES}
    expected |= {"etcd-status.json", "felix-log-tail.txt"}
    assert {line.split()[1] for line in index} == expected
    assert set(files) == expected | {"index.txt"}


def test_diags_with_etcd_down_still_collects_the_rest(ns: NetNS, tmp_path: Path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there, in the namespace
    started = time.monotonic()
    files, stderr = _run_diags(ns, tmp_path, dead)
    assert time.monotonic() - started < 60

    assert "cannot read configuration from etcd" in files["config-etcd.error.txt"]
    assert (
        "cannot read /calico/felix/v1/host/diags-host from etcd" in (files["etcd-status.error.txt"])
    )
    assert "ERROR  etcd-status.json" in files["index.txt"]
    assert "ERROR  config-etcd.json" in files["index.txt"]
    assert "ERROR  etcd-status.json" in stderr

    # The configuration from the environment and the file, marked as such.
    config = json.loads(files["config.json"])
    assert "environment and file only" in config["note"]
    assert config["parameters"]["MetadataPort"] == {"value": 1234, "source": "file"}
    assert config["parameters"]["EtcdEndpoints"] == {"value": [dead], "source": "env"}

    for name in KERNEL_FILES:
        assert f"ok     {name}" in files["index.txt"]
    assert ":CALT-DIAG-V4 - [0:0]" in files["iptables-save.txt"]
    assert "line 4" in files["felix-log-tail.txt"]


def test_bad_config_and_no_log_file_are_recorded(
    etcd: EtcdServer, ns: NetNS, relay: LoopbackRelay, tmp_path: Path
):
    etcd.v2_put(dm.config_key("ReportingTTLSecs"), "soon")
    files, _ = _run_diags(
        ns, tmp_path, etcd.client_url, FELIX_METADATAPORT="seventy", FELIX_LOGFILEPATH="none"
    )
    error = files["config.error.txt"]
    assert error.startswith("Felix would refuse this configuration:")
    assert "MetadataPort='seventy' (from env FELIX_METADATAPORT)" in error
    assert "ReportingTTLSecs='soon' (from etcd-global)" in error
    # The rest still resolved, so the hostname and etcd were the configured ones.
    config = json.loads(files["config.json"])
    assert len(config["problems"]) == 2
    assert config["parameters"]["FelixHostname"] == {"value": HOST, "source": "env"}
    assert "ERROR  config.json: Felix would refuse" in files["index.txt"]
    assert "etcd-status.json" in files
    assert "LogFilePath is none" in files["felix-log-tail.error.txt"]
    assert "ipset-list.txt" in files  # the kernel state is still there


# -- Collectors on their own (no namespace: nothing here touches the kernel) -------------------


def test_a_missing_tool_is_an_error_file_and_the_rest_goes_on():
    bundle = diags.Bundle()
    assert not bundle.add("tool.txt", lambda: diags.run_command(["calt-no-such-tool", "x"]))
    assert not bundle.add("false.txt", lambda: diags.run_command(["false"]))
    assert bundle.add("true.txt", lambda: diags.run_command(["echo", "hello"]))
    assert bundle.files["tool.error.txt"] == b"calt-no-such-tool: command not found\n"
    assert bundle.files["false.error.txt"].startswith(b"false exited with status 1")
    assert bundle.files["true.txt"] == b"hello\n"
    assert bundle.index == [
        "ERROR  tool.txt: calt-no-such-tool: command not found",
        "ERROR  false.txt: false exited with status 1",
        "ok     true.txt",
    ]


def test_a_collector_bug_is_recorded_not_raised():
    bundle = diags.Bundle()
    assert not bundle.add("x.json", lambda: 1 / 0)  # type: ignore[arg-type,return-value]
    assert bundle.files["x.error.txt"] == b"unexpected ZeroDivisionError: division by zero\n"


def test_a_slow_tool_times_out():
    started = time.monotonic()
    with pytest.raises(diags.CollectError, match="no answer within 1 s"):
        diags.run_command(["sleep", "30"], timeout=1)
    assert time.monotonic() - started < 10


def test_log_tail_starts_at_a_whole_line(tmp_path: Path):
    log_file = tmp_path / "felix.log"
    log_file.write_bytes(b"".join(b"line %03d\n" % i for i in range(100)))
    tail = diags.tail_file(str(log_file), max_bytes=50)
    assert tail.splitlines()[0].startswith(b"line ")
    assert tail.endswith(b"line 099\n")
    assert len(tail) <= 50
    with pytest.raises(diags.CollectError, match="cannot read log file"):
        diags.tail_file(str(tmp_path / "absent.log"))
