"""calicoctl's views of a running system against a real etcd: `node status` from Felix's status
keys and from a real BIRD (through calico-bgp), `endpoint show` with labels as policy sees them,
and `diags` run in a lab namespace (its kernel state, never the root namespace's)."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from calico.common.etcd import connect
from calico.common.etcd.base import EtcdSettings, KVStore
from calico.ctl.cli import main
from calico.lab.bgp import BirdProcess
from calico.lab.etcd_server import EtcdServer
from calico.lab.felix import felix_env
from calico.lab.netns import NetNS
from calico.lab.relay import LoopbackRelay

HOST = "compute-1"
CALICOCTL = str(Path(sys.executable).with_name("calicoctl"))
STATUS = "/calico/felix/v1/host/compute-1"
REPORT = json.dumps({"time": "2024-05-01T10:00:00Z", "uptime": 93784.2, "first_update": False})
POLICY = """
kind: profile
metadata: {name: db}
spec:
  inbound_rules: [{protocol: tcp, dst_ports: [5432]}]
  outbound_rules: [{}]
  labels: {role: db, app: shop}
---
kind: tier
metadata: {name: security}
spec: {order: 1}
---
kind: policy
metadata: {tier: security, name: guard}
spec: {selector: "role == 'db'", inbound_rules: [{action: next-tier}]}
---
kind: workloadEndpoint
metadata: {host: compute-1, orchestrator: openstack, workload: vm1, name: port1}
spec:
  {state: active, name: tap1, profile_ids: [db], ipv4_nets: [10.65.0.2/32], labels: {role: web}}
---
kind: workloadEndpoint
metadata: {host: compute-1, orchestrator: openstack, workload: vm2, name: port2}
spec: {state: active, name: tap2, profile_ids: [db, gone], ipv4_nets: [10.65.0.3/32]}
---
kind: workloadEndpoint
metadata: {host: compute-2, orchestrator: openstack, workload: vm3, name: port3}
spec: {state: active, name: eth3, ipv4_nets: [10.65.0.4/32]}
"""


@pytest.fixture
def ctl(
    etcd: EtcdServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Iterator[Callable[..., tuple[int, str, str]]]:
    env = {
        "FELIX_ETCDENDPOINTS": etcd.client_url,
        "FELIX_FELIXHOSTNAME": HOST,
        "FELIX_INTERFACEPREFIX": "tap",
    }

    def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
        capsys.readouterr()
        argv = [*args, "-c", str(tmp_path / "absent.cfg")]
        code = main(argv, env, io.StringIO(stdin) if stdin is not None else None)
        out, err = capsys.readouterr()
        return code, out, err

    yield run


@pytest.fixture
def client(etcd: EtcdServer) -> Iterator[KVStore]:
    store = connect("v2", EtcdSettings((etcd.client_url,)), shuffle=False)
    yield store
    store.close()


def status(ctl: Callable[..., tuple[int, str, str]], *args: str) -> dict[str, Any]:
    code, out, err = ctl("node", "status", "-o", "json", *args)
    assert code == 0, err
    [data] = json.loads(out)
    return data  # type: ignore[no-any-return]


def test_node_status_from_felix_status_keys(ctl: Any, client: KVStore, tmp_path: Path) -> None:
    data = status(ctl, "--bird-socket", str(tmp_path / "no-bird.ctl"))
    assert data["felix"] == {"host": HOST, "alive": False, "endpoints": {}}
    assert data["bgp"]["running"] is False
    assert data["bgp"]["status"].startswith("BGP is not running")

    client.put(f"{STATUS}/status", REPORT, ttl=60)
    client.put(f"{STATUS}/last_reported_status", REPORT)
    for n, reported in ((1, "up"), (2, "up"), (3, "down")):
        path = f"{STATUS}/workload/openstack/vm{n}/endpoint/port{n}"
        client.put(path, json.dumps({"status": reported}))
    felix = status(ctl)["felix"]
    assert felix["alive"] is True
    assert felix["last_report"] == "2024-05-01T10:00:00Z"
    assert felix["uptime"] == 93784.2
    assert felix["endpoints"] == {"down": 1, "up": 2}
    code, out, _ = ctl("node", "status")
    assert code == 0
    assert "alive:        yes" in out and "uptime:       1d 2h 3m 4s" in out
    assert "endpoints:    1 down, 2 up" in out

    client.delete(f"{STATUS}/status")  # the TTL ran out: Felix stopped reporting
    felix = status(ctl)["felix"]
    assert felix["alive"] is False and felix["last_report"] == "2024-05-01T10:00:00Z"
    other = status(ctl, "--host", "compute-2")
    assert other["bgp"]["status"] == "BGP state is only known on compute-2 itself (run it there)"
    assert ctl("node", "status", "--host", "a b")[0] == 2


def test_node_status_shows_bird_sessions(
    ctl: Any, netns: Callable[[], NetNS], tmp_path: Path
) -> None:
    ns = netns()
    bird = BirdProcess(ns, tmp_path / "bird")
    bird.config.parent.mkdir(parents=True, exist_ok=True)
    bird.config.write_text(
        "router id 192.0.2.1;\nprotocol device {}\n"
        "protocol bgp Global_192_0_2_9 {\n  local as 64511;\n  neighbor 192.0.2.9 as 64512;\n"
        "  multihop;\n  ipv4 { import none; export none; };\n}\n"
    )
    bird.start()
    try:
        data = status(ctl, "--bird-socket", str(bird.socket))
        assert data["bgp"]["running"] is True, data["bgp"]
        assert "192.0.2.9" in data["bgp"]["status"]
        code, out, _ = ctl("node", "status", "--bird-socket", str(bird.socket))
        assert code == 0 and "BGP\n" in out and "192.0.2.9" in out
    finally:
        bird.stop()
    assert status(ctl, "--bird-socket", str(bird.socket))["bgp"]["running"] is False


def test_endpoint_show_sees_labels_as_policy_does(ctl: Any) -> None:
    assert ctl("apply", "-f", "-", stdin=POLICY)[0] == 0
    out = ctl("endpoint", "show", "-o", "json")[1]
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["port1"]["labels"] == {"role": "web", "app": "shop"}  # own role wins
    assert rows["port2"]["labels"] == {"role": "db", "app": "shop"}
    out = ctl("endpoint", "show", "--selector", "role == 'db'", "-o", "json")[1]
    assert [row["name"] for row in json.loads(out)] == ["port2"]
    out = ctl("endpoint", "show", "--host", "compute-1", "--detailed", "-o", "json")[1]
    rows = {row["name"]: row for row in json.loads(out)}
    assert set(rows) == {"port1", "port2"}
    assert rows["port2"]["missing_profiles"] == ["gone"]
    assert rows["port2"]["tiers"] == {"security": ["guard"]}
    assert rows["port1"]["tiers"] == {}
    out = ctl("endpoint", "show", "--host", "compute-2", "--detailed")[1]
    assert "ignored by Felix (interface not in InterfacePrefix cali)" in out
    out = ctl("endpoint", "show", "--workload", "vm1")[1]
    assert out.splitlines()[0].split()[:4] == ["HOST", "ORCHESTRATOR", "WORKLOAD", "NAME"]
    assert len(out.splitlines()) == 2
    assert ctl("endpoint", "show", "--selector", "role ==")[0] == 2


def test_diags_in_a_namespace(etcd: EtcdServer, netns: Callable[[], NetNS], tmp_path: Path) -> None:
    ns = netns()
    ns.run(["iptables", "-N", "CALT-CTL-DIAG"])
    output = tmp_path / "diags.tar.gz"
    with LoopbackRelay(ns.name, etcd.port):
        env = felix_env(etcd.client_url, HOST, {"FELIX_INTERFACEPREFIX": "tap"})
        argv = [CALICOCTL, "apply", "-f", "-", "-c", str(tmp_path / "absent.cfg")]
        proc = ns.run(argv, check=False, env=env, input=POLICY)
        assert proc.returncode == 0, proc.stderr
        argv = [CALICOCTL, "diags", "--output", str(output), "-c", str(tmp_path / "absent.cfg")]
        proc = ns.run(argv, check=False, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(output)
    with tarfile.open(output) as tar:
        files = {}
        for member in tar.getmembers():
            data = tar.extractfile(member)
            assert data is not None
            files[member.name.split("/", 1)[1]] = data.read().decode()
    assert "CALT-CTL-DIAG" in files["iptables-save.txt"]  # the namespace's own state
    assert "kind: profile" in files["calicoctl-resources.yaml"]
    assert "port1" in files["calicoctl-endpoints.txt"]
    assert "Felix" in files["calicoctl-node-status.txt"]
    assert "ok     calicoctl-resources.yaml" in files["index.txt"]
