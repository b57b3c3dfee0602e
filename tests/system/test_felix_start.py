"""The real calico-felix, in a network namespace, against a real etcd: configuration from
all four sources, --show-config, the Ready wait, in-sync, restart on config change."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from calico.lab.etcd_server import EtcdServer, free_port
from calico.lab.felix import FelixProcess, felix_env, run_felix
from calico.lab.netns import NetNS
from calico.lab.relay import LoopbackRelay

HOST = "felix-host-1"


class Lab:
    """One etcd (root loopback), one host namespace that reaches it through a relay."""

    def __init__(self, etcd: EtcdServer, ns: NetNS, tmp: Path, api: str = "v2"):
        self.etcd, self.ns, self.tmp, self.api = etcd, ns, tmp, api
        self.relay = LoopbackRelay(ns.name, etcd.port)
        self.processes: list[FelixProcess] = []

    def put(self, key: str, value: str) -> None:
        (self.etcd.v2_put if self.api == "v2" else self.etcd.v3_put)(key, value)

    def delete(self, key: str) -> None:
        (self.etcd.v2_delete if self.api == "v2" else self.etcd.v3_delete)(key)

    def env(self, **extra: str) -> dict[str, str]:
        driver = {"FELIX_DATAPLANEDRIVER": "etcdv2" if self.api == "v2" else "etcdv3"}
        return felix_env(self.etcd.client_url, HOST, {**driver, **extra})

    def show_config(self, *args: str, **env: str) -> tuple[int, dict, str]:
        proc = run_felix(self.ns, ["--show-config", *args], self.env(**env))
        data = json.loads(proc.stdout) if proc.returncode == 0 else {}
        assert "Traceback" not in proc.stderr
        # Felix's own messages (the INFO log lines on stderr are not the contract).
        messages = [line for line in proc.stderr.splitlines() if line.startswith("calico-felix:")]
        return proc.returncode, data, "\n".join(messages)

    def start(self, *args: str, **env: str) -> FelixProcess:
        felix_args = args or ("-c", str(self.tmp / "absent.cfg"))
        out = self.tmp / f"felix-{len(self.processes)}.log"
        felix = FelixProcess(self.ns, self.env(**env), out, felix_args)
        self.processes.append(felix)
        return felix

    def close(self) -> None:
        for felix in self.processes:
            felix.stop()
        self.relay.close()


@pytest.fixture(params=["v2", "v3"])
def lab(
    request: pytest.FixtureRequest, etcd: EtcdServer, netns: Callable[[], NetNS], tmp_path: Path
) -> Iterator[Lab]:
    lab = Lab(etcd, netns(), tmp_path, request.param)
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def lab_v2(etcd: EtcdServer, netns: Callable[[], NetNS], tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(etcd, netns(), tmp_path, "v2")
    try:
        yield lab
    finally:
        lab.close()


def test_show_config_precedence_over_all_four_sources(lab: Lab):
    cfg = lab.tmp / "felix.cfg"
    cfg.write_text(
        "[global]\nMetadataPort = 1002\nReportingIntervalSecs = 12\n"
        "[other]\nFailsafeInboundHostPorts = 22, 80\n"
    )
    lab.put("/calico/v1/config/MetadataPort", "1004")
    lab.put("/calico/v1/config/ReportingIntervalSecs", "14")
    lab.put("/calico/v1/config/ReportingTTLSecs", "44")
    lab.put("/calico/v1/config/MaxIpsetSize", "4444")
    lab.put("/calico/v1/config/InterfacePrefix", "cali,tap")
    lab.put(f"/calico/v1/host/{HOST}/config/MaxIpsetSize", "3333")
    lab.put(f"/calico/v1/host/{HOST}/config/MetadataAddr", "None")
    lab.put("/calico/v1/host/another-host/config/ReportingTTLSecs", "99")
    code, data, stderr = lab.show_config(
        "-c", str(cfg), FELIX_METADATAPORT="1001", FELIX_PROMETHEUSMETRICSENABLED="yes"
    )
    assert code == 0, stderr

    def check(name: str, value: object, source: str) -> None:
        assert data[name] == {"value": value, "source": source}, name

    check("MetadataPort", 1001, "env")
    check("PrometheusMetricsEnabled", True, "env")
    check("ReportingIntervalSecs", 12, "file")
    check("FailsafeInboundHostPorts", [22, 80], "file")
    check("MaxIpsetSize", 3333, "etcd-host")
    check("MetadataAddr", None, "etcd-host")
    check("ReportingTTLSecs", 44, "etcd-global")
    check("InterfacePrefix", ["cali", "tap"], "etcd-global")
    check("StartupCleanupDelay", 30, "default")
    check("FailsafeOutboundHostPorts", [2379, 2380, 4001, 7001], "default")
    check("LogFilePath", None, "env")
    check("FelixHostname", HOST, "env")
    check("EtcdEndpoints", [lab.etcd.client_url], "env")
    assert data["EtcdEndpoints"]["value"] == [lab.etcd.client_url]


def test_etcd_names_are_case_sensitive_and_local_only_is_ignored(lab: Lab):
    lab.put("/calico/v1/config/metadataport", "1")  # wrong case: not a parameter
    lab.put("/calico/v1/config/FelixHostname", "stolen")
    lab.put(f"/calico/v1/host/{HOST}/config/EtcdEndpoints", "http://elsewhere:2379")
    code, data, stderr = lab.show_config()
    assert code == 0, stderr
    assert data["MetadataPort"] == {"value": 8775, "source": "default"}
    assert data["FelixHostname"]["value"] == HOST
    assert data["EtcdEndpoints"]["value"] == [lab.etcd.client_url]


def test_bad_value_in_etcd_refuses_to_start(lab: Lab):
    lab.put("/calico/v1/config/IptablesMarkMask", "0x1")
    lab.put(f"/calico/v1/host/{HOST}/config/DefaultEndpointToHostAction", "REJECT")
    code, _, stderr = lab.show_config()
    assert code == 2
    lines = sorted(stderr.strip().splitlines())
    assert lines == [
        "calico-felix: configuration error: DefaultEndpointToHostAction='REJECT' (from "
        "etcd-host): not one of DROP, RETURN, ACCEPT",
        "calico-felix: configuration error: IptablesMarkMask='0x1' (from etcd-global): "
        "has 1 bits set; Felix needs 3",
    ]
    # The daemon refuses the same way (after Ready), without a traceback.
    lab.put("/calico/v1/Ready", "true")
    felix = lab.start()
    assert felix.wait_exit() == 2
    assert "Traceback" not in felix.text()
    assert "IptablesMarkMask='0x1' (from etcd-global)" in felix.text()


def test_bad_env_and_malformed_file_refuse_to_start(lab_v2: Lab):
    code, _, stderr = lab_v2.show_config(FELIX_METADATAPORT="eighty")
    assert code == 2
    assert stderr.strip() == (
        "calico-felix: configuration error: MetadataPort='eighty' (from env "
        "FELIX_METADATAPORT): not an integer"
    )
    bad = lab_v2.tmp / "bad.cfg"
    bad.write_text("[global]\nno equals sign here\n")
    code, _, stderr = lab_v2.show_config("-c", str(bad))
    assert code == 2
    assert "malformed config file" in stderr and str(bad) in stderr
    assert "Traceback" not in stderr


def test_kubernetes_datastore_without_an_api_server_is_a_configuration_error(lab_v2: Lab):
    # More in tests/system/test_k8s_felix.py.
    code, _, stderr = lab_v2.show_config(
        FELIX_DATAPLANEDRIVER="kubernetes", K8S_SERVICE_ACCOUNT_DIR="/nonexistent"
    )
    assert code == 2
    assert "DataplaneDriver=kubernetes needs the Kubernetes API" in stderr
    assert "Traceback" not in stderr


def test_show_config_fails_clearly_when_etcd_is_unreachable(lab_v2: Lab):
    dead = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    code, _, stderr = lab_v2.show_config(FELIX_ETCDENDPOINTS=dead)
    elapsed = time.monotonic() - started
    assert code == 1
    assert f"cannot read configuration from etcd at {dead} within 10 s" in stderr
    assert "Traceback" not in stderr
    assert 9 < elapsed < 25


def test_waits_for_ready_then_reaches_in_sync(lab: Lab):
    lab.put("/calico/v1/host/h/workload/o/w/endpoint/e", "{}")
    felix = lab.start()
    felix.wait_for(r"Waiting for /calico/v1/Ready to be 'true' \(now None\)")
    time.sleep(1)
    assert "In sync" not in felix.text()
    lab.put("/calico/v1/Ready", "true")
    felix.wait_for(r"In sync with the datastore for the first time: 2 keys")
    assert "Config: MetadataPort = 8775 (from default)" in felix.text()
    assert felix.stop() == 0


def test_restarts_when_its_config_changes_in_etcd(lab: Lab):
    lab.put("/calico/v1/Ready", "true")
    lab.put("/calico/v1/config/LogSeverityFile", "INFO")
    felix = lab.start()
    felix.wait_for("In sync with the datastore")
    lab.put("/calico/v1/config/LogSeverityFile", "DEBUG")
    started = time.monotonic()
    assert felix.wait_exit() == 1
    assert time.monotonic() - started >= 2.0  # anti-flap pause
    assert "Felix configuration changed in etcd: LogSeverityFile: 'INFO' -> 'DEBUG'" in (
        felix.text()
    )


def test_host_config_delete_is_a_change(lab_v2: Lab):
    lab_v2.put("/calico/v1/Ready", "true")
    lab_v2.put(f"/calico/v1/host/{HOST}/config/MetadataPort", "9999")
    felix = lab_v2.start()
    felix.wait_for("In sync with the datastore")
    lab_v2.delete(f"/calico/v1/host/{HOST}/config/MetadataPort")
    assert felix.wait_exit() == 1
    assert "MetadataPort: 9999 -> 8775" in felix.text()


def test_no_restart_for_keys_that_are_not_its_parameters(lab: Lab):
    lab.put("/calico/v1/Ready", "true")
    felix = lab.start(FELIX_METADATAPORT="1234")
    felix.wait_for("In sync with the datastore")
    lab.put("/calico/v1/config/FailsafeOutboundHostPort", "1")  # misspelt (felix#1377)
    lab.put("/calico/v1/config/EtcdEndpoints", "http://x:1")  # local-only
    lab.put("/calico/v1/host/other-host/config/MetadataPort", "1")  # another host
    lab.put("/calico/v1/config/MetadataPort", "4321")  # overridden by the environment
    lab.put("/calico/v1/host/h/workload/o/w/endpoint/e", "{}")
    time.sleep(3.5)
    assert felix.proc.poll() is None, felix.text()
    assert felix.stop() == 0


def test_missing_required_command_refuses_to_start(lab_v2: Lab, tmp_path: Path):
    lab_v2.put("/calico/v1/Ready", "true")
    felix = lab_v2.start(PATH="/usr/bin:/bin")  # no /usr/sbin: no iptables-restore, ipset
    assert felix.wait_exit() == 2
    assert "required command 'iptables-restore' not found" in felix.text()


@pytest.mark.parametrize("style", ["endpoints", "scheme-and-addr"])
def test_show_config_over_tls_with_client_certificate(
    etcd_factory: Callable[..., EtcdServer],
    netns: Callable[[], NetNS],
    tmp_path: Path,
    style: str,
):
    server = etcd_factory(tls=True)
    server.v2_put("/calico/v1/config/MetadataPort", "4433")
    lab = Lab(server, netns(), tmp_path, "v2")
    try:
        tls = {
            "FELIX_ETCDCAFILE": str(server.tls.ca_file),
            "FELIX_ETCDCERTFILE": str(server.tls.client_cert),
            "FELIX_ETCDKEYFILE": str(server.tls.client_key),
        }
        if style == "scheme-and-addr":
            # The lab's felix_env sets EtcdEndpoints; an empty value means "not set".
            tls |= {
                "FELIX_ETCDENDPOINTS": "",
                "FELIX_ETCDSCHEME": "https",
                "FELIX_ETCDADDR": f"127.0.0.1:{server.port}",
            }
        code, data, stderr = lab.show_config(**tls)
        assert code == 0, stderr
        assert data["MetadataPort"] == {"value": 4433, "source": "etcd-global"}
        assert data["EtcdEndpoints"]["value"] == [server.client_url]

        # Without a client certificate the TLS-only etcd refuses us: a clear failure.
        no_cert = {"FELIX_ETCDCAFILE": str(server.tls.ca_file)}
        code, _, stderr = lab.show_config(**no_cert)
        assert code == 1
        assert "cannot read configuration from etcd" in stderr
    finally:
        lab.close()
