"""A compute host's daemons against a real three-member etcd cluster losing its leader, then its
quorum for 30 s (issue 14, "An etcd cluster").

Everything is real: three Debian etcd members on loopback (calico.lab.etcd_cluster), two compute
hosts on a lab fabric (calico.lab.fabric), each running calico-felix, calico-bgp and BIRD, and
calico-dhcp-agent with dnsmasq on the first; each daemon is given the three members' URLs
(Felix's and calico-bgp's FELIX_ETCDENDPOINTS, the agent's `[calico] etcd_endpoints`) and
reaches them through the hosts' loopback relays. VMs on both hosts exchange allowed and denied
flows (ICMP v4 and v6, TCP) sampled without a pause from before the leader is killed until after
the quorum is back: no allowed flow may fail and no denied flow pass in any sample. The member
that stayed up through the outage is then killed too, so every daemon (all of them on it by
then) must move to another member; a policy change, a new endpoint and a BGP change made after
that reach every dataplane, the DHCP agent's dnsmasq and BIRD's file.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from calico.lab.bgp import BgpProcess
from calico.lab.etcd_cluster import EtcdCluster, EtcdMember
from calico.lab.fabric import Fabric, FabricHost
from calico.lab.felix import FelixProcess
from calico.lab.flows import Flow, measure, settle
from calico.lab.netns import NetNS
from calico.lab.probes import wait_until
from calico.lab.topology import Workload

pytestmark = pytest.mark.root

OUTAGE = 30.0  # seconds without a quorum
START_TIMEOUT = 40.0
CHANGE_TIMEOUT = 20.0
NETWORK_ID = "0c1d2e3f-4a5b-4c6d-8e7f-001122334455"
SUBNET_ID = "5e8b0f9a-0000-4000-8000-000000000004"
GLOBAL_PEER = "198.18.0.250"
PHASES = (
    "steady",
    "leader killed",
    "quorum lost",
    "quorum back",
)  # written after the outage: calico-bgp must put it in BIRD's file


def profile(tags_in: Iterable[str]) -> dict[str, object]:
    """Inbound ICMP (v4, v6) and tcp/8080 from the members of ``tags_in``; all outbound."""
    inbound = []
    for tag in tags_in:
        inbound += [
            {"protocol": "icmp", "ip_version": 4, "src_tag": tag},
            {"protocol": "icmpv6", "ip_version": 6, "src_tag": tag},
            {"protocol": "tcp", "dst_ports": [8080], "src_tag": tag},
        ]
    return {"inbound_rules": inbound, "outbound_rules": [{"action": "allow"}]}


# A (host 1) is in "pa" and admits everyone; B (host 1) admits pa; C (host 2) admits pa.
PROFILES = {"pa": ["pa", "pb", "pc"], "pb": ["pa"], "pc": ["pa"]}
STEADY = {
    Flow("A", "B", "icmp"): True,
    Flow("A", "C", "icmp"): True,  # across hosts, over the routes BGP carried
    Flow("A", "C", "icmp", v6=True): True,
    Flow("C", "A", "icmp"): True,
    Flow("A", "C", "tcp", 8080): True,
    Flow("C", "B", "icmp"): False,  # C is not in pa: host 1's Felix refuses it
    Flow("B", "C", "icmp"): False,  # B is not in pa: host 2's Felix refuses it
    Flow("B", "C", "icmp", v6=True): False,
    Flow("C", "B", "tcp", 8080): False,
}
# After the outage: C's profile admits pb too, and a new VM D (host 1, profile pa) appears.
CHANGED = {
    **STEADY,
    Flow("B", "C", "icmp"): True,
    Flow("B", "C", "icmp", v6=True): True,
    Flow("D", "C", "icmp"): True,
    Flow("C", "D", "icmp"): True,
    Flow("D", "B", "tcp", 8080): True,
}


class Datastore:
    """What the Neutron driver (and the operator, for BGP) would write, over the API the
    daemons read (v2 or v3)."""

    def __init__(self, cluster: EtcdCluster, api: str):
        self.cluster = cluster
        self.api = api

    def put(self, key: str, value: object) -> None:
        text = value if isinstance(value, str) else json.dumps(value)
        if self.api == "v2":
            self.cluster.v2_put(key, text)
        else:
            self.cluster.v3_put(key, text)

    def profile(self, name: str, tags_in: Iterable[str]) -> None:
        self.put(f"/calico/v1/policy/profile/{name}/rules", profile(tags_in))
        self.put(f"/calico/v1/policy/profile/{name}/tags", [name])

    def endpoint(self, vm: Workload, profile_name: str) -> None:
        data = json.loads(vm.endpoint_json([profile_name]))
        data["ipv4_subnet_ids"] = [SUBNET_ID]  # as the Neutron driver writes it (DHCP)
        self.put(vm.endpoint_key(), data)


class DhcpAgent:
    """calico-dhcp-agent in a host namespace, told the cluster's members in neutron.conf."""

    def __init__(
        self, host: FabricHost, cluster: EtcdCluster, api: str, work_dir: Path, state_dir: Path
    ):
        self.state_dir = state_dir
        self.log_path = work_dir / "dhcp-agent.log"
        conf = work_dir / "neutron.conf"
        conf.write_text(
            f"[DEFAULT]\nhost = {host.hostname}\n\n"
            f"[calico]\netcd_endpoints = {cluster.endpoints}\netcd_api_version = {api}\n"
        )
        self._log = self.log_path.open("wb")
        argv = [sys.executable, "-m", "calico.dhcp.agent", "--config-file", str(conf),
                "--state-dir", str(state_dir), "--log-level", "DEBUG"]  # fmt: skip
        self.proc = host.ns.popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        self.ns = host.ns

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def hosts_file(self) -> str:
        path = self.state_dir / "hosts"
        return path.read_text() if path.exists() else ""

    def dnsmasq_pids(self) -> list[int]:
        pids = self.ns.run(["ip", "netns", "pids", self.ns.name]).stdout.split()
        found = []
        for pid in pids:
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "dnsmasq":
                    found.append(int(pid))
            except FileNotFoundError:
                continue
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def _verdict(allowed: bool) -> str:
    return "allowed" if allowed else "denied"


class Sampler(threading.Thread):
    """Measures every flow, round after round, until stopped; remembers what each round saw
    in which phase of the test."""

    def __init__(self, vms: dict[str, Workload], expected: dict[Flow, bool]):
        super().__init__(name="flow-sampler", daemon=True)
        self.vms, self.expected = vms, expected
        self.phase = "steady"
        self.rounds: list[tuple[str, float, dict[Flow, bool]]] = []
        self._stop_event = threading.Event()
        self._t0 = time.monotonic()

    def run(self) -> None:
        while not self._stop_event.is_set():
            phase = self.phase
            got = measure(self.vms, self.expected)
            self.rounds.append((phase, time.monotonic() - self._t0, got))

    def finish(self) -> None:
        self._stop_event.set()
        self.join(30)

    def wrong(self) -> list[str]:
        return [
            f"{phase} at +{at:.1f} s: {flow} should be {_verdict(self.expected[flow])}"
            for phase, at, got in self.rounds
            for flow, ok in got.items()
            if ok != self.expected[flow]
        ]

    def count(self, phase: str) -> int:
        return sum(1 for p, _, _ in self.rounds if p == phase)


def etcd_ports_of(ns: NetNS, pid: int, ports: Iterable[int]) -> set[int]:
    """The etcd member ports ``pid`` has established connections to (inside ``ns``)."""
    wanted = set(ports)
    out = ns.run(["ss", "-Htnp", "state", "established"]).stdout
    found = set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 5 or f"pid={pid}," not in line:
            continue
        port = int(fields[3].rpartition(":")[2])
        if port in wanted:
            found.add(port)
    return found


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    with EtcdCluster(tmp_path / "etcd") as c:
        yield c


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """Outside pytest's 0700 tree: dnsmasq re-reads its hosts file after dropping root."""
    path = Path(tempfile.mkdtemp(prefix="calico-dhcp-cluster-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_lab_cluster_members_are_killed_and_restarted_by_pid() -> None:
    with EtcdCluster() as cluster:
        assert len({m.port for m in cluster.members}) == 3
        assert cluster.endpoints == ",".join(cluster.client_urls)
        leader = cluster.leader()
        ids = {m.status()["member_id"] for m in cluster.members}  # type: ignore[index]
        assert len(ids) == 3
        cluster.v2_put("/lab/k", "1")
        old_pid = leader.pid
        cluster.kill(leader)
        assert not leader.running and old_pid is not None
        assert cluster.leader() is not leader  # a new election among the other two
        assert cluster.v2_get("/lab/k") == "1"
        cluster.start_members([leader])
        assert leader.running and leader.pid != old_pid
        assert leader.v2_get("/lab/k") == "1"  # the same member, its data kept
        status = cluster.etcdctl("endpoint", "status", "-w", "json").stdout
        assert {str(s["Status"]["header"]["member_id"]) for s in json.loads(status)} == ids
        pids = [m.pid for m in cluster.members]
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)
    assert not cluster.work_dir.exists()  # its own temporary directory, data dirs and all


def test_lab_cluster_that_cannot_start_leaves_nothing_running() -> None:
    cluster = EtcdCluster()
    blocker = socket.socket()
    try:
        blocker.bind(("127.0.0.1", cluster.members[2].port))  # the third member cannot listen
        blocker.listen()
        with pytest.raises(RuntimeError, match="lab3"):
            cluster.start(timeout=10)
        assert cluster.running == [] and not cluster.work_dir.exists()
    finally:
        blocker.close()
        cluster.stop()


@dataclass
class Cloud:
    """Two compute hosts on the fabric, their daemons and VMs."""

    fabric: Fabric
    vms: dict[str, Workload]
    felixes: list[FelixProcess]
    bgps: list[BgpProcess]
    agent: DhcpAgent

    @property
    def hosts(self) -> list[FabricHost]:
        return self.fabric.hosts

    def daemons(self) -> dict[str, tuple[NetNS, subprocess.Popen[bytes]]]:
        """Every daemon that talks to etcd: name -> (its namespace, its process)."""
        h1, h2 = self.hosts
        return {
            "felix h1": (h1.ns, self.felixes[0].proc),
            "felix h2": (h2.ns, self.felixes[1].proc),
            "calico-bgp h1": (h1.ns, self.bgps[0].proc),
            "calico-bgp h2": (h2.ns, self.bgps[1].proc),
            "dhcp-agent": (h1.ns, self.agent.proc),
        }

    def bird_files(self) -> list[str]:
        return [h.bird.config.read_text() for h in self.hosts if h.bird is not None]


@pytest.fixture(params=["v2", "v3"])
def api(request: pytest.FixtureRequest) -> str:
    """The etcd API every daemon (and the test's writes) use."""
    return str(request.param)


@pytest.fixture
def cloud(cluster: EtcdCluster, api: str, tmp_path: Path, state_dir: Path) -> Iterator[Cloud]:
    """Host 1: VMs A and B, Felix, calico-bgp, BIRD, the DHCP agent; host 2: VM C, Felix,
    calico-bgp, BIRD. Every daemon is given the three members; the data is written first."""
    store = Datastore(cluster, api)
    driver = {"FELIX_DATAPLANEDRIVER": f"etcd{api}"}
    store.put("/calico/v1/Ready", "true")
    store.put(
        f"/calico/dhcp/v1/subnet/{SUBNET_ID}",
        {"network_id": NETWORK_ID, "cidr": "10.65.0.0/24", "gateway_ip": "10.65.0.1",
         "dns_servers": ["10.65.255.53"], "host_routes": []},
    )  # fmt: skip
    for name, tags in PROFILES.items():
        store.profile(name, tags)
    with Fabric(cluster, work_dir=tmp_path / "fabric") as fabric:
        h1, h2 = fabric.add_host(), fabric.add_host()
        vms = {
            "A": h1.add_workload("10.65.0.2", "fd00:65::2", label="vma"),
            "B": h1.add_workload("10.65.0.3", "fd00:65::3", label="vmb"),
            "C": h2.add_workload("10.65.0.4", "fd00:65::4", label="vmc"),
        }
        for vm, name in (("A", "pa"), ("B", "pb"), ("C", "pc")):
            store.endpoint(vms[vm], name)
        bgps = [h.start_calico_bgp(env=driver) for h in (h1, h2)]
        for bgp in bgps:
            bgp.wait_for(r"Wrote .*bird\.conf")
        for host in (h1, h2):
            host.start_bird()
        felixes = [h.start_felix(driver, FELIX_IPV6SUPPORT="true") for h in (h1, h2)]
        agent = DhcpAgent(h1, cluster, api, tmp_path, state_dir)
        try:
            yield Cloud(fabric, vms, felixes, bgps, agent)
        finally:
            agent.stop()


def wait_converged(cloud: Cloud) -> None:
    h1, h2 = cloud.hosts
    for felix in cloud.felixes:
        felix.wait_for("Dataplane programmed", timeout=START_TIMEOUT)
    for me, other in ((h1, h2), (h2, h1)):
        assert me.bird is not None
        me.bird.wait_established([f"Mesh_{other.ip.replace('.', '_')}"], timeout=START_TIMEOUT)
    problems = settle(cloud.vms, STEADY, START_TIMEOUT)
    assert not problems, "\n".join(problems)
    agent = cloud.agent
    assert wait_until(lambda: cloud.vms["B"].mac in agent.hosts_file(), 20), agent.log()[-3000:]


def lose_leader_then_quorum(cluster: EtcdCluster, sampler: Sampler) -> EtcdMember:
    """Kill the leader; once another is elected, stop it too, leaving one member without a
    quorum for OUTAGE seconds; then start both again. The member that stayed up."""
    time.sleep(3)
    leader = cluster.leader()
    sampler.phase = "leader killed"
    cluster.kill(leader)
    second = cluster.leader(timeout=15)
    time.sleep(5)
    survivor = next(m for m in cluster.running if m is not second)
    sampler.phase = "quorum lost"
    outage_start = time.monotonic()
    cluster.stop_members([second])
    # The outage is real: the survivor knows no leader and takes no write.
    assert wait_until(lambda: (survivor.status() or {}).get("leader") == "0", 10)
    with pytest.raises((requests.RequestException, RuntimeError)):
        survivor.v2_put("/calico/outage-probe", "x")
    time.sleep(max(0.0, OUTAGE - (time.monotonic() - outage_start)))
    sampler.phase = "quorum back"
    cluster.start_members([leader, second])
    time.sleep(4)
    return survivor


def test_losing_the_leader_then_quorum_keeps_every_dataplane(
    cluster: EtcdCluster, api: str, cloud: Cloud
) -> None:
    wait_converged(cloud)
    agent, daemons = cloud.agent, cloud.daemons()
    dnsmasq_before, hosts_before = agent.dnsmasq_pids(), agent.hosts_file()
    bird_files_before = cloud.bird_files()

    sampler = Sampler(cloud.vms, STEADY)
    sampler.start()
    try:
        survivor = lose_leader_then_quorum(cluster, sampler)
    finally:
        sampler.finish()
    wrong = sampler.wrong()
    assert not wrong, f"{len(wrong)} wrong samples:\n" + "\n".join(wrong[:40])
    counts = {phase: sampler.count(phase) for phase in PHASES}
    assert counts["quorum lost"] >= 10 and min(counts.values()) >= 1, counts
    for name, (_, proc) in daemons.items():
        assert proc.poll() is None, f"{name} exited ({proc.returncode}) during the outage"
    # The DHCP agent kept its one dnsmasq and its file; calico-bgp kept BIRD's file.
    assert agent.dnsmasq_pids() == dnsmasq_before and agent.hosts_file() == hosts_before
    assert cloud.bird_files() == bird_files_before

    # v2 reads need no quorum: every daemon retried its way to the one member left and its
    # watch stayed there. (v3 reads are linearizable: that member timed out, and the v3 syncers
    # kept moving round the members, waiting for Ready, until the quorum was back.) Kill that
    # member now: whoever is on it must move on again to see what is written next.
    on = {name: etcd_ports_of(ns, proc.pid, cluster.ports) for name, (ns, proc) in daemons.items()}
    if api == "v2":
        assert all(survivor.port in ports for ports in on.values()), (survivor, on)
    cluster.kill(survivor)
    cluster.leader(timeout=15)
    changed_at = time.monotonic()
    h1 = cloud.hosts[0]
    cloud.vms["D"] = h1.add_workload("10.65.0.5", "fd00:65::5", label="vmd")
    store = Datastore(cluster, api)
    store.profile("pc", ["pa", "pb"])  # a policy change: host 2's Felix
    store.endpoint(cloud.vms["D"], "pa")  # an endpoint change: host 1's Felix, BGP, DHCP
    store.put(
        f"/calico/bgp/v1/global/peer_v4/{GLOBAL_PEER}", {"ip": GLOBAL_PEER, "as_num": "65000"}
    )
    problems = settle(cloud.vms, CHANGED, CHANGE_TIMEOUT)
    assert not problems, "after the outage:\n" + "\n".join(problems)
    d_mac = cloud.vms["D"].mac
    assert wait_until(lambda: d_mac in agent.hosts_file(), CHANGE_TIMEOUT), agent.log()[-3000:]
    peer = f"neighbor {GLOBAL_PEER} as 65000"
    assert wait_until(lambda: all(peer in text for text in cloud.bird_files()), CHANGE_TIMEOUT)
    took = time.monotonic() - changed_at
    alive = {m.port for m in cluster.running}
    for name, (ns, proc) in daemons.items():
        assert proc.poll() is None, f"{name} exited ({proc.returncode})"
        on = etcd_ports_of(ns, proc.pid, cluster.ports)
        # (A connection to a dead member's relay can show for a moment: it is accepted, then
        # closed once the member refuses it.)
        assert on & alive, f"{name} is on ports {on}, the live members are {alive}"
    print(f"\nflow samples per phase: {counts}; the changes everywhere after {took:.1f} s")
