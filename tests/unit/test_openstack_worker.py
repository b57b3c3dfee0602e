"""The Neutron worker's parts without Neutron or etcd: the election, the resync, the port-status
reporter and the schedule, over an in-memory KVStore with etcd's versions, a fake Neutron (plain
dicts) and a fake clock. The same parts run against real Neutron and etcd in tests/openstack."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest

from calico.common.datamodel_v1 import (
    DhcpSubnetKey,
    FelixStatusKey,
    GlobalConfigKey,
    NeutronElectionKey,
    ProfileRulesKey,
    ProfileTagsKey,
    ReadyKey,
    WorkloadEndpointKey,
    WorkloadEndpointStatusKey,
)
from calico.common.etcd.base import EtcdUnavailable, Snapshot, WatchEvent
from calico.openstack import background, translation
from calico.openstack.background import RESYNC_INTERVAL_SECS, BackgroundLoop
from calico.openstack.constants import AGENT_BINARY_FELIX, AGENT_TYPE_FELIX
from calico.openstack.election import ELECTION_REFRESH_SECS, NON_MASTER_CHECK_SECS, Elector
from calico.openstack.endpoints import FloatingIP, endpoint_data, is_endpoint_port
from calico.openstack.port_status import StatusReporter, port_status
from calico.openstack.resync import reconcile, resync
from calico.openstack.store import CalicoStore


class MemoryStore:
    """A KVStore in memory: versions from one revision counter, as etcd's; `ops` records every
    call that reads or writes; `fail` makes every call raise it."""

    endpoint = "memory://"
    cluster_id = None

    def __init__(self) -> None:
        self.data: dict[str, tuple[str, int]] = {}
        self.revision = 0
        self.ops: list[tuple[str, str]] = []
        self.fail: Exception | None = None

    def _op(self, op: str, key: str) -> None:
        if self.fail is not None:
            raise self.fail
        self.ops.append((op, key))

    def _write(self, key: str, value: str) -> int:
        self.revision += 1
        self.data[key] = (value, self.revision)
        return self.revision

    def _under(self, prefix: str) -> dict[str, tuple[str, int]]:
        return {k: v for k, v in self.data.items() if k.startswith(prefix.rstrip("/") + "/")}

    def get(self, key: str) -> str | None:
        self._op("get", key)
        found = self.data.get(key)
        return found[0] if found else None

    def read_prefix(self, prefix: str) -> Snapshot:
        self._op("read", prefix)
        return Snapshot(self.revision, {k: v for k, (v, _) in self._under(prefix).items()})

    def put(self, key: str, value: str, ttl: int | None = None) -> None:
        self._op("put", key)
        self._write(key, value)

    def delete(self, key: str) -> bool:
        self._op("delete", key)
        return self.data.pop(key, None) is not None

    def delete_prefix(self, prefix: str) -> None:
        self._op("delete", prefix)
        for key in self._under(prefix):
            del self.data[key]

    def delete_empty_dir(self, path: str) -> bool:
        return False  # no directories, as on v3

    def get_versioned(self, key: str) -> tuple[str, int] | None:
        self._op("get", key)
        return self.data.get(key)

    def read_prefix_versioned(self, prefix: str) -> dict[str, tuple[str, int]]:
        self._op("read", prefix)
        return self._under(prefix)

    def create(self, key: str, value: str, ttl: int | None = None) -> bool:
        self._op("create", key)
        if key in self.data:
            return False
        self._write(key, value)
        return True

    def put_if(self, key: str, value: str, version: int, ttl: int | None = None) -> int | None:
        self._op("put", key)
        if key not in self.data or self.data[key][1] != version:
            return None
        return self._write(key, value)

    def delete_if(self, key: str, version: int) -> bool:
        self._op("delete", key)
        if key not in self.data or self.data[key][1] != version:
            return False
        del self.data[key]
        return True

    def watch(self, prefix: str, start_revision: int, timeout: float) -> list[WatchEvent]:
        return []

    def rotate(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    translation.forget_warnings()


# --- Election ------------------------------------------------------------------------------


def test_election_one_master_and_refresh_by_version() -> None:
    client = MemoryStore()
    a, b = Elector(client, "a"), Elector(client, "b")
    assert a.step() and a.master
    assert not b.step() and not b.master
    version = client.data[NeutronElectionKey().path][1]
    assert a.step()  # refreshed: a new version of the same value
    assert client.data[NeutronElectionKey().path] == (a.id, version + 1)


def test_election_master_steps_down_when_its_key_was_taken(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = MemoryStore()
    a = Elector(client, "a")
    assert a.step()
    client.put(NeutronElectionKey().path, "b:1")  # expired and taken by b meanwhile
    with caplog.at_level(logging.WARNING, logger="calico.openstack.election"):
        assert not a.step()
    assert not a.master
    assert "lost the election key" in caplog.text
    assert client.get(NeutronElectionKey().path) == "b:1"  # b's key is left alone
    a.stand_down()
    assert client.get(NeutronElectionKey().path) == "b:1"


def test_election_etcd_failure_means_not_master_until_it_works_again() -> None:
    client = MemoryStore()
    a = Elector(client, "a")
    assert a.step()
    client.fail = EtcdUnavailable("down")
    assert not a.step()
    assert not a.master
    a.stand_down()  # nothing to delete: not master
    client.fail = None
    # Our old key is still there (it would expire): a live holder of our name is not stale.
    assert not Elector(client, "a", pid_alive=lambda pid: True).step()
    client.delete(NeutronElectionKey().path)
    assert a.step()


def test_election_stale_holder_only_of_our_name_with_a_dead_pid() -> None:
    client = MemoryStore()
    key = NeutronElectionKey().path
    for holder, stale in (("a:123", True), ("a:124", False), ("b:123", False), ("a:x", False)):
        client.data.clear()
        client.put(key, holder)
        elector = Elector(client, "a", pid_alive=lambda pid: pid != 123)
        assert elector.step() is stale, holder
        assert client.get(key) == (elector.id if stale else holder)


def test_election_stand_down_failure_is_logged_and_forgets_the_lead(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = MemoryStore()
    a = Elector(client, "a")
    assert a.step()
    client.fail = EtcdUnavailable("down")
    with caplog.at_level(logging.WARNING, logger="calico.openstack.election"):
        a.stand_down()
    assert not a.master
    assert "could not delete the election key" in caplog.text


# --- Resync --------------------------------------------------------------------------------

HOST = "compute-1"
SUBNET = {
    "id": "sub4",
    "network_id": "net1",
    "cidr": "10.65.0.0/24",
    "gateway_ip": "10.65.0.1",
    "host_routes": [],
    "dns_nameservers": [],
    "enable_dhcp": True,
}
RULE = {
    "id": "r1",
    "direction": "ingress",
    "ethertype": "IPv4",
    "protocol": "tcp",
    "port_range_min": 22,
    "port_range_max": 22,
}


def make_port(port_id: str, **over: Any) -> dict[str, Any]:
    port = {
        "id": port_id,
        "device_id": f"vm-{port_id}",
        "device_owner": "compute:nova",
        "binding:host_id": HOST,
        "binding:vif_type": "tap",
        "mac_address": "fa:16:3e:00:00:01",
        "fixed_ips": [{"subnet_id": "sub4", "ip_address": "10.65.0.7"}],
        "security_groups": ["sg1"],
    }
    port.update(over)
    return port


def endpoint_path(port_id: str, host: str = HOST, orchestrator: str = "openstack") -> str:
    return WorkloadEndpointKey(host, orchestrator, f"vm-{port_id}", port_id).path


class FakeNeutron:
    """NeutronData over plain dicts; `calls` records what was read, `broken` raises for one
    method."""

    def __init__(
        self,
        client: MemoryStore | None = None,
        subnets: dict[str, dict[str, Any]] | None = None,
        sgs: dict[str, list[dict[str, Any]]] | None = None,
        ports: list[dict[str, Any]] | None = None,
        fips: dict[str, list[FloatingIP]] | None = None,
    ):
        self.client = client  # to record reads in the store's op log too
        self._subnets = {"sub4": SUBNET} if subnets is None else subnets
        self._sgs = {"sg1": [RULE]} if sgs is None else sgs
        self._ports = [make_port("p1")] if ports is None else ports
        self._fips = fips or {}
        self.broken: str | None = None

    def _read(self, what: str) -> None:
        if self.broken == what:
            raise RuntimeError(f"{what}: db down")
        if self.client is not None:
            self.client.ops.append(("neutron", what))

    def subnets(self) -> dict[str, dict[str, Any]]:
        self._read("subnets")
        return dict(self._subnets)

    def profiles(self) -> dict[str, tuple[list[Any], dict[str, list[str]]]]:
        self._read("profiles")
        return {sg_id: (list(rules), {}) for sg_id, rules in self._sgs.items()}

    def endpoint_ports(self) -> list[dict[str, Any]]:
        self._read("ports")
        return [p for p in self._ports if is_endpoint_port(p)]

    def floating_ips(self) -> dict[str, list[FloatingIP]]:
        self._read("fips")
        return dict(self._fips)

    def endpoint(
        self, port: dict[str, Any], subnets: dict[str, Any], fips: dict[str, list[FloatingIP]]
    ) -> dict[str, Any]:
        if self.broken == port["id"]:
            raise RuntimeError("boom")
        groups = port.get("security_groups") or ()
        return endpoint_data(port, subnets, groups, fips.get(port["id"], ()))


def test_resync_writes_everything_then_finds_nothing_to_do() -> None:
    client = MemoryStore()
    neutron = FakeNeutron(client, fips={"p1": [FloatingIP("10.65.0.7", "172.24.4.9")]})
    report = resync(CalicoStore(client), neutron)
    assert report == {
        "subnets": {"created": 1, "updated": 0, "deleted": 0, "conflicts": 0, "skipped": 0},
        "profiles": {"created": 2, "updated": 0, "deleted": 0, "conflicts": 0, "skipped": 0},
        "endpoints": {"created": 1, "updated": 0, "deleted": 0, "conflicts": 0, "skipped": 0},
    }
    endpoint = json.loads(client.get(endpoint_path("p1")) or "{}")
    assert endpoint["profile_ids"] == ["openstack-sg-sg1"]
    assert endpoint["ipv4_nat"] == [{"int_ip": "10.65.0.7", "ext_ip": "172.24.4.9"}]
    assert json.loads(client.get(DhcpSubnetKey("sub4").path) or "{}")["cidr"] == "10.65.0.0/24"
    assert json.loads(client.get(ProfileTagsKey("openstack-sg-sg1").path) or "[]") == ["sg1"]
    assert client.get(ReadyKey().path) == "true"
    assert client.get(GlobalConfigKey("InterfacePrefix").path) == "tap"
    again = resync(CalicoStore(client), neutron)
    assert all(n == 0 for counts in again.values() for n in counts.values()), again


def test_resync_order_profiles_then_endpoints_then_extra_profiles() -> None:
    """Felix never sees an endpoint pointing at a missing profile, and a profile is deleted
    only once no endpoint refers to it; etcd is read before Neutron in each section."""
    client = MemoryStore()
    client.put(ProfileRulesKey("openstack-sg-old").path, "{}")
    client.put(endpoint_path("gone"), "{}")
    client.ops.clear()
    resync(CalicoStore(client), FakeNeutron(client))
    ops = client.ops
    first_profile = ops.index(("create", ProfileRulesKey("openstack-sg-sg1").path))
    endpoint = ops.index(("create", endpoint_path("p1")))
    stale_endpoint = ops.index(("delete", endpoint_path("gone")))
    extra_profile = ops.index(("delete", ProfileRulesKey("openstack-sg-old").path))
    assert first_profile < endpoint < extra_profile
    assert stale_endpoint < extra_profile
    assert ops.index(("read", "/calico/dhcp/v1/subnet")) < ops.index(("neutron", "subnets"))
    assert ops.index(("read", "/calico/v1/policy/profile")) < ops.index(("neutron", "profiles"))
    assert ops.index(("read", "/calico/v1/host")) < ops.index(("neutron", "ports"))
    assert client.get(ProfileRulesKey("openstack-sg-old").path) is None


def test_resync_touches_only_its_own_keys() -> None:
    client = MemoryStore()
    foreign = {
        endpoint_path("pod", orchestrator="k8s"): '{"x": 1}',
        ProfileRulesKey("k8s-ns.default").path: "{}",
        f"/calico/v1/host/{HOST}/workload/k8s/pod\nx/endpoint/eth0": "{}",
        f"/calico/v1/host/{HOST}/config/Foo": "bar",
    }
    ours_stale = [
        endpoint_path("gone"),
        f"/calico/v1/host/{HOST}/workload/openstack/vm\nbad/endpoint/p9",  # hostile, older
        f"/calico/v1/host/{HOST}/workload/openstack/vm/x/endpoint/p9",  # a "/" in a device_id
        ProfileRulesKey("openstack-sg-gone").path,
        "/calico/v1/policy/profile/openstack-sg-x\ny/rules",
        DhcpSubnetKey("gone").path,
    ]
    for path, value in foreign.items():
        client.put(path, value)
    for path in ours_stale:
        client.put(path, "{}")
    report = resync(CalicoStore(client), FakeNeutron())
    assert report["endpoints"]["deleted"] == 3
    assert report["profiles"]["deleted"] == 2
    assert report["subnets"]["deleted"] == 1
    for path in ours_stale:
        assert client.get(path) is None, path
    for path, value in foreign.items():
        assert client.get(path) == value, path


def test_resync_left_out_objects_are_skipped_and_their_keys_deleted() -> None:
    client = MemoryStore()
    neutron = FakeNeutron(
        subnets={
            "sub4": SUBNET,
            "bad\nsub": {**SUBNET, "id": "bad\nsub"},  # cannot be a key: skipped
            "off": {**SUBNET, "id": "off", "enable_dhcp": False},  # not written, not skipped
        },
        sgs={"sg1": [RULE], "bad'sg": [RULE]},
        ports=[
            make_port("p1"),
            make_port("p2", device_id="vm\nbad"),  # its key cannot be formed
            make_port("p3", mac_address="nope"),  # its value cannot be formed
            make_port("p4", **{"binding:vif_type": "binding_failed"}),  # not bound: no endpoint
            make_port("p5", device_owner="network:dhcp"),  # not an endpoint port
        ],
    )
    client.put(endpoint_path("p3"), "{}")  # written before its MAC went bad: goes (fail closed)
    report = resync(CalicoStore(client), neutron)
    assert report["subnets"]["skipped"] == 1
    assert report["profiles"]["skipped"] == 1
    assert report["endpoints"] == {
        "created": 1,
        "updated": 0,
        "deleted": 1,
        "conflicts": 0,
        "skipped": 2,
    }
    assert client.get(endpoint_path("p3")) is None
    assert client.get(DhcpSubnetKey("off").path) is None
    assert sorted(client.read_prefix("/calico/v1/host").items) == [endpoint_path("p1")]


def test_resync_a_failing_section_deletes_nothing_and_stops_nothing() -> None:
    client = MemoryStore()
    neutron = FakeNeutron()
    resync(CalicoStore(client), neutron)
    before = dict(client.data)
    client.delete(ReadyKey().path)
    client.delete(endpoint_path("p1"))
    neutron.broken = "profiles"
    report = resync(CalicoStore(client), neutron)
    assert report["profiles"] == {"failed": 1}
    assert report["endpoints"]["created"] == 1
    assert client.get(ProfileRulesKey("openstack-sg-sg1").path) is not None  # not deleted
    assert client.get(ReadyKey().path) == "true"
    assert set(client.data) == set(before)
    # Neutron's subnets unreadable: the endpoints section, which needs them, fails too; the
    # profiles are still reconciled and nothing is deleted.
    neutron.broken = "subnets"
    client.delete(ProfileTagsKey("openstack-sg-sg1").path)
    report = resync(CalicoStore(client), neutron)
    assert report["subnets"] == {"failed": 1}
    assert report["endpoints"] == {"failed": 1}
    assert report["profiles"]["created"] == 1
    assert set(client.data) == set(before)


def test_resync_one_port_failing_unexpectedly_is_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = MemoryStore()
    second = make_port("p2", fixed_ips=[{"subnet_id": "sub4", "ip_address": "10.65.0.8"}])
    neutron = FakeNeutron(ports=[make_port("p1"), second])
    neutron.broken = "p1"
    with caplog.at_level(logging.WARNING, logger="calico.openstack.translation"):
        for _ in range(2):
            report = resync(CalicoStore(client), neutron)
    assert report["endpoints"]["skipped"] == 1
    assert client.get(endpoint_path("p2")) is not None
    assert client.get(endpoint_path("p1")) is None
    failures = [r for r in caplog.records if "RuntimeError: 'boom'" in r.getMessage()]
    assert len(failures) == 1  # logged once, with its traceback
    assert failures[0].exc_info is not None


def test_resync_etcd_down_fails_every_section_without_raising() -> None:
    client = MemoryStore()
    client.fail = EtcdUnavailable("down")
    report = resync(CalicoStore(client), FakeNeutron())
    assert report == {
        "subnets": {"failed": 1},
        "profiles": {"failed": 1},
        "endpoints": {"failed": 1},
        "felix_config": {"failed": 1},
    }


def test_reconcile_newer_writes_win() -> None:
    """Compare-and-swap: a key written after the resync's read is a conflict, not overwritten
    or deleted."""
    client = MemoryStore()
    client.put("/k/changed", "old")
    client.put("/k/extra", "x")
    current = client.read_prefix_versioned("/k")
    client.put("/k/changed", "newer")  # a hook, between the read and the write
    client.put("/k/extra", "rewritten")
    client.put("/k/created", "by a hook")
    wanted = {"/k/changed": "resync's", "/k/created": "resync's"}
    counts = reconcile(client, current, wanted)
    assert counts == {"created": 0, "updated": 0, "deleted": 0, "conflicts": 3}
    assert client.get("/k/changed") == "newer"
    assert client.get("/k/extra") == "rewritten"
    assert client.get("/k/created") == "by a hook"


# --- Port status ---------------------------------------------------------------------------


class FakePlugin:
    def __init__(self, ports: list[dict[str, Any]]):
        self.ports = {p["id"]: p for p in ports}
        self.agents: list[dict[str, Any]] = []
        self.updates: list[tuple[str, str, str | None]] = []
        self.fail_port: str | None = None
        self.fail_agent: str | None = None

    def create_or_update_agent(self, context: Any, agent_state: dict[str, Any]) -> Any:
        if agent_state["host"] == self.fail_agent:
            raise RuntimeError("agent table locked")
        self.agents.append(agent_state)

    def get_ports(self, context: Any) -> list[dict[str, Any]]:
        return [dict(p) for p in self.ports.values()]

    def update_port_status(
        self, context: Any, port_id: str, status: str, host: str | None = None
    ) -> Any:
        if port_id == self.fail_port:
            raise RuntimeError("port gone")
        self.updates.append((port_id, status, host))
        self.ports[port_id]["status"] = status


def status_path(port_id: str, host: str = HOST) -> str:
    key = WorkloadEndpointKey(host, "openstack", f"vm-{port_id}", port_id)
    return WorkloadEndpointStatusKey.for_endpoint(key).path


def reporter_for(ports: list[dict[str, Any]]) -> tuple[StatusReporter, MemoryStore, FakePlugin]:
    client, plugin = MemoryStore(), FakePlugin(ports)
    return StatusReporter(client, lambda: plugin, "ctx"), client, plugin


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ('{"status": "up"}', "ACTIVE"),
        ('{"status": "down"}', "DOWN"),
        ('{"status": "error"}', "ERROR"),
        ('{"status": "sideways"}', "ERROR"),
        ('{"status": 1}', "ERROR"),
        ("{}", "ERROR"),
        ("[]", "ERROR"),
        ("not json", "ERROR"),
        ("[" * 100_000, "ERROR"),
    ],
)
def test_port_status_of_a_report(raw: str, status: str) -> None:
    assert port_status(raw) == status


def test_agent_rows_are_heartbeats_with_a_start_flag_on_first_sight() -> None:
    reporter, client, plugin = reporter_for([])
    client.put(FelixStatusKey(HOST).path, "{}")
    client.put(FelixStatusKey("compute-2").path, "{}")
    plugin.fail_agent = "compute-2"  # one failing row does not stop the other's
    reporter.poll()
    reporter.poll()
    assert [(a["host"], a["start_flag"]) for a in plugin.agents] == [(HOST, True), (HOST, False)]
    assert {(a["agent_type"], a["binary"]) for a in plugin.agents} == {
        (AGENT_TYPE_FELIX, AGENT_BINARY_FELIX)
    }
    client.delete(FelixStatusKey(HOST).path)
    reporter.poll()
    client.put(FelixStatusKey(HOST).path, "{}")
    reporter.poll()  # back after a gap: a fresh start
    assert plugin.agents[-1] == {**plugin.agents[0], "start_flag": True}


def test_port_status_follows_reports_and_writes_only_changes() -> None:
    ports = [make_port("p1", status="DOWN"), make_port("p2", status="DOWN")]
    reporter, client, plugin = reporter_for(ports)
    client.put(FelixStatusKey(HOST).path, "{}")
    reporter.poll()
    assert plugin.updates == []  # Felix has not reported the endpoints yet: left as they are
    client.put(status_path("p1"), '{"status": "up"}')
    reporter.poll()
    reporter.poll()
    assert plugin.updates == [("p1", "ACTIVE", HOST)]
    # A report from a host the port does not live on is stale.
    client.put(status_path("p2", host="compute-2"), '{"status": "up"}')
    reporter.poll()
    assert plugin.updates == [("p1", "ACTIVE", HOST)]
    # The report vanishes: ERROR; Felix gone from the host: every port of it ERROR.
    client.delete(status_path("p1"))
    reporter.poll()
    assert plugin.updates[-1] == ("p1", "ERROR", HOST)
    client.put(status_path("p1"), '{"status": "up"}')
    client.put(status_path("p2"), '{"status": "down"}')
    reporter.poll()
    assert plugin.updates[-1] == ("p1", "ACTIVE", HOST)
    assert ("p2", "DOWN", HOST) not in plugin.updates  # already DOWN in Neutron
    client.delete(FelixStatusKey(HOST).path)
    client.delete(status_path("p1"))
    client.delete(status_path("p2"))
    reporter.poll()
    assert plugin.updates[-2:] == [("p1", "ERROR", HOST), ("p2", "ERROR", HOST)]


def test_port_status_skips_other_ports_and_survives_a_failing_one() -> None:
    ports = [
        make_port("p1"),
        make_port("p2"),
        make_port("p3", device_owner="network:dhcp"),
        make_port("p4", **{"binding:vif_type": "unbound"}),
    ]
    reporter, client, plugin = reporter_for(ports)
    client.put(FelixStatusKey(HOST).path, "{}")
    for port_id in ("p1", "p2", "p3", "p4"):
        client.put(status_path(port_id), '{"status": "up"}')
    plugin.fail_port = "p1"
    reporter.poll()
    assert plugin.updates == [("p2", "ACTIVE", HOST)]
    plugin.fail_port = None
    reporter.poll()  # the failed write is retried at the next poll
    assert plugin.updates == [("p2", "ACTIVE", HOST), ("p1", "ACTIVE", HOST)]


# --- The schedule --------------------------------------------------------------------------


class FakeElector:
    def __init__(self) -> None:
        self.master = False
        self.wins = False  # what the next step gives
        self.steps = 0
        self.stood_down = False

    def step(self) -> bool:
        self.steps += 1
        self.master = self.wins
        return self.master

    def stand_down(self) -> None:
        self.stood_down = True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def counting(calls: list[str], what: str, fail: bool = False) -> Callable[[], str]:
    def run() -> str:
        calls.append(what)
        if fail:
            raise RuntimeError(what)
        return what

    return run


class Poller:
    def __init__(self, calls: list[str], fail: bool = False):
        self._poll = counting(calls, "poll", fail)

    def poll(self) -> None:
        self._poll()


def test_schedule_only_the_master_resyncs_and_polls() -> None:
    calls: list[str] = []
    elector, clock = FakeElector(), Clock()
    loop = BackgroundLoop(elector, counting(calls, "resync"), Poller(calls), clock)
    loop.tick()
    assert (elector.steps, calls) == (1, [])
    clock.now += NON_MASTER_CHECK_SECS - 0.5
    loop.tick()
    assert elector.steps == 1  # not due yet
    clock.now += 1.6  # NON_MASTER_CHECK_SECS plus at most a second of jitter have passed
    elector.wins = True
    loop.tick()
    assert (elector.steps, calls) == (2, ["resync", "poll"])  # at once on taking over
    for _ in range(3):
        clock.now += 1
        loop.tick()
    assert calls == ["resync", "poll", "poll", "poll", "poll"]
    assert elector.steps == 2  # refreshed every ELECTION_REFRESH_SECS only
    clock.now += ELECTION_REFRESH_SECS
    loop.tick()
    assert elector.steps == 3
    clock.now += RESYNC_INTERVAL_SECS
    loop.tick()
    assert calls[-2:] == ["resync", "poll"]


def test_schedule_resyncs_at_once_after_regaining_the_lead() -> None:
    calls: list[str] = []
    elector, clock = FakeElector(), Clock()
    elector.wins = True
    loop = BackgroundLoop(elector, counting(calls, "resync"), None, clock)
    loop.tick()
    elector.wins = False
    clock.now += ELECTION_REFRESH_SECS
    loop.tick()
    elector.wins = True
    clock.now += NON_MASTER_CHECK_SECS + 1
    loop.tick()
    assert calls == ["resync", "resync"]  # well before RESYNC_INTERVAL_SECS


def test_schedule_a_failing_resync_or_poll_stops_neither(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []
    elector, clock = FakeElector(), Clock()
    elector.wins = True
    loop = BackgroundLoop(
        elector, counting(calls, "resync", fail=True), Poller(calls, fail=True), clock
    )
    with caplog.at_level(logging.ERROR, logger=background.__name__):
        loop.tick()
        clock.now += RESYNC_INTERVAL_SECS
        loop.tick()
    assert calls == ["resync", "poll", "resync", "poll"]
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("resync pass failed") == 2
    assert messages.count("status poll failed") == 2


def test_schedule_run_stands_down_when_stopped() -> None:
    elector = FakeElector()
    elector.wins = True
    loop = BackgroundLoop(elector, lambda: None, None)
    loop.stop_event.set()
    loop.run()
    assert elector.stood_down
    assert elector.steps == 0
