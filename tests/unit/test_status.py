"""Status reporting decisions (felix.md §6.1, §6.2, §2.8, §5.12) with a fake clock, plus the
metric bookkeeping of both processes. The etcd side is in tests/system/test_status_reporting.py
and tests/system/test_metrics.py."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from unittest.mock import create_autospec

import pytest
from prometheus_client import REGISTRY

from calico.common.datamodel_v1 import (
    HostEndpointKey,
    HostEndpointStatusKey,
    PolicyKey,
    WorkloadEndpointKey,
    WorkloadEndpointStatusKey,
)
from calico.common.etcd.base import EtcdUnavailable, Snapshot
from calico.common.etcd.syncer import SyncStatus
from calico.common.resources import HostEndpoint, WorkloadEndpoint
from calico.felix import metrics
from calico.felix.calc import messages as m
from calico.felix.dataplane.manager import DataplaneManager, KernelTables
from calico.felix.dataplane.rendering import RenderConfig
from calico.felix.driver import metrics as dp_metrics
from calico.felix.driver.pipe import DriverReady, EndpointStatusReport
from calico.felix.kernel.ipsets import IpsetTable
from calico.felix.kernel.iptables import IptablesTable
from calico.felix.kernel.routes import RouteTable
from calico.felix.status import (
    RETRY_SECS,
    Delete,
    EndpointStatusQueue,
    LivenessSchedule,
    StatusReporter,
    Write,
    effective_ttl,
    empty_parents,
    liveness_json,
    parse_own_statuses,
)


def wep(endpoint: str, host: str = "h") -> WorkloadEndpointStatusKey:
    return WorkloadEndpointStatusKey(host, "openstack", "vm", endpoint)


UP, DOWN = json.dumps({"status": "up"}), json.dumps({"status": "down"})


# --- Liveness ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "ttl", "expected"),
    [
        (30, 90, 90),  # defaults: longer than the longest gap (35 s), kept
        (3, 6, 6),
        (30, 30, 75),  # TTL == interval would lapse between reports: interval * 5 // 2
        (30, 10, 75),
        (30, 33, 75),  # just above the interval: reports up to 10 % late + slack would lapse
        (30, 35, 75),
        (30, 36, 36),
        (3, 4, 7),  # within the slack of a report's write
        (3, 0, 7),  # integer division
        (1, 1, 5),  # 2.5 intervals is not enough at 1 s: ceil(longest gap) + 1
        (0, 90, 0),  # reporting disabled
    ],
)
def test_ttl_rule(interval: int, ttl: int, expected: int) -> None:
    assert effective_ttl(interval, ttl) == expected


def test_liveness_json_is_utc_to_the_second_with_z() -> None:
    wall = datetime(2024, 5, 6, 9, 8, 7, 654321, tzinfo=timezone(timedelta(hours=2)))
    data = json.loads(liveness_json(wall, 12.3456, True))
    assert data == {"time": "2024-05-06T07:08:07Z", "uptime": 12.346, "first_update": True}


def test_first_update_stays_true_until_a_write_succeeds() -> None:
    schedule = LivenessSchedule(interval=30, ttl=90, now=100.0, jitter=lambda: 0.5)
    assert schedule.is_due(100.0) and schedule.first_update  # the first report at once
    schedule.on_failure(100.0)
    assert schedule.first_update
    assert not schedule.is_due(100.0 + RETRY_SECS - 0.01)
    assert schedule.is_due(100.0 + RETRY_SECS)
    schedule.on_success(105.0)
    assert not schedule.first_update
    assert schedule.due_at == pytest.approx(105.0 + 30 * 1.05)  # + 0-10 % jitter
    schedule.on_success(200.0)
    assert not schedule.first_update


def test_short_interval_retries_within_the_interval_and_zero_disables() -> None:
    short = LivenessSchedule(interval=1, ttl=3, now=0.0, jitter=lambda: 0.999)
    short.on_failure(10.0)
    assert short.due_at == 11.0
    short.on_success(11.0)
    assert 12.0 <= short.due_at <= 12.1
    disabled = LivenessSchedule(interval=0, ttl=90, now=0.0)
    assert disabled.due_at is None and not disabled.is_due(1e9) and disabled.ttl == 0


# --- Endpoint statuses ---------------------------------------------------------------------------


def test_one_write_per_delay_with_jitter_bounds() -> None:
    queue = EndpointStatusQueue(delay=1.0, jitter=lambda: 0.0)  # the shortest gap: 0.9 s
    for name in ("a", "b", "c"):
        queue.set_status(wep(name), "up")
    first = queue.next_action(0.0)
    assert first == Write(wep("a"), UP)
    queue.done(first, 0.0)
    assert queue.next_action(0.89) is None
    assert queue.wake_at() == pytest.approx(0.9)
    second = queue.next_action(0.9)
    assert second == Write(wep("b"), UP)
    long = EndpointStatusQueue(delay=1.0, jitter=lambda: 0.999)  # the longest gap: 1.1 s
    long.set_status(wep("a"), "up")
    long.set_status(wep("b"), "up")
    action = long.next_action(0.0)
    assert action is not None
    long.done(action, 0.0)
    assert long.next_action(1.09) is None
    assert long.next_action(1.1) is not None


def test_unchanged_status_costs_no_write_and_no_tick() -> None:
    queue = EndpointStatusQueue(delay=1.0, jitter=lambda: 0.5)
    queue.set_status(wep("a"), "up")
    action = queue.next_action(0.0)
    assert action is not None
    queue.done(action, 0.0)
    queue.set_status(wep("a"), "up")  # reported again, same value
    assert queue.next_action(5.0) is None
    assert queue.wake_at() is None
    queue.set_status(wep("a"), "down")
    assert queue.next_action(5.0) == Write(wep("a"), DOWN)


def test_fairness_redirtied_key_keeps_its_place_and_failures_go_last() -> None:
    queue = EndpointStatusQueue(delay=0.0)
    for name in ("a", "b", "c"):
        queue.set_status(wep(name), "up")
    queue.set_status(wep("a"), "down")  # flaps: still first, with the latest value
    action = queue.next_action(0.0)
    assert action == Write(wep("a"), DOWN)
    queue.failed(action, 0.0)
    order = []
    while (action := queue.next_action(0.0)) is not None:
        order.append(action.key.endpoint)
        queue.done(action, 0.0)
    assert order == ["b", "c", "a"]


def test_removed_endpoint_is_deleted_only_if_written() -> None:
    queue = EndpointStatusQueue(delay=0.0)
    queue.set_status(wep("never"), "up")
    queue.set_status(wep("never"), None)  # gone before its status was written
    assert queue.next_action(0.0) is None
    queue.set_status(wep("a"), "up")
    write = queue.next_action(0.0)
    assert write is not None
    queue.done(write, 0.0)
    queue.set_status(wep("a"), None)
    delete = queue.next_action(0.0)
    assert delete == Delete(wep("a"))
    queue.done(delete, 0.0)
    assert wep("a") not in queue.in_etcd and queue.next_action(0.0) is None


def test_a_failed_write_of_a_removed_endpoint_is_deleted_anyway() -> None:
    queue = EndpointStatusQueue(delay=0.0)
    queue.set_status(wep("a"), "up")
    write = queue.next_action(0.0)
    assert write is not None
    queue.failed(write, 0.0)  # it may have landed
    queue.set_status(wep("a"), None)
    assert queue.next_action(0.0) == Delete(wep("a"))


def test_stale_cleanup_deletes_only_what_is_not_current() -> None:
    queue = EndpointStatusQueue(delay=0.0)
    queue.set_status(wep("same"), "up")
    queue.set_status(wep("changed"), "down")
    host = HostEndpointStatusKey("h", "eth0")
    queue.found_in_etcd({wep("same"): UP, wep("changed"): UP, wep("stale"): UP, host: DOWN})
    actions = []
    while (action := queue.next_action(0.0)) is not None:
        actions.append(action)
        queue.done(action, 0.0)
    assert sorted(actions, key=repr) == sorted(
        [Write(wep("changed"), DOWN), Delete(wep("stale")), Delete(host)], key=repr
    )


def test_parse_own_statuses_keeps_this_hosts_endpoint_statuses() -> None:
    items = {
        wep("a").path: UP,
        wep("b", host="other").path: UP,
        HostEndpointStatusKey("h", "eth0").path: DOWN,
        "/calico/felix/v1/host/h/status": "{}",
        "/calico/felix/v1/host/h/last_reported_status": "{}",
    }
    assert parse_own_statuses("h", items) == {
        wep("a"): UP,
        HostEndpointStatusKey("h", "eth0"): DOWN,
    }


def test_empty_parents_stop_at_the_host_directory() -> None:
    base = "/calico/felix/v1/host/h"
    assert empty_parents(wep("e")) == [
        f"{base}/workload/openstack/vm/endpoint",
        f"{base}/workload/openstack/vm",
        f"{base}/workload/openstack",
        f"{base}/workload",
    ]
    assert empty_parents(HostEndpointStatusKey("h", "eth0")) == [f"{base}/endpoint"]


# --- The reporter thread against a fake etcd -----------------------------------------------------


class FlakyStore:
    """An in-memory KVStore whose first `failures` writes fail."""

    def __init__(self, failures: int = 0, existing: dict[str, str] | None = None) -> None:
        self.failures = failures
        self.data: dict[str, str] = dict(existing or {})
        self.ttls: dict[str, int | None] = {}
        self.rotations = 0
        self.removed_dirs: list[str] = []
        self.changed = threading.Condition()

    def put(self, key: str, value: str, ttl: int | None = None) -> None:
        with self.changed:
            if self.failures > 0:
                self.failures -= 1
                raise EtcdUnavailable("etcd is down (test)")
            self.data[key] = value
            self.ttls[key] = ttl
            self.changed.notify_all()

    def delete(self, key: str) -> bool:
        with self.changed:
            found = self.data.pop(key, None) is not None
            self.changed.notify_all()
            return found

    def delete_empty_dir(self, path: str) -> bool:
        if any(k.startswith(path + "/") for k in self.data):
            return False
        self.removed_dirs.append(path)
        return True

    def read_prefix(self, prefix: str) -> Snapshot:
        return Snapshot(1, {k: v for k, v in self.data.items() if k.startswith(prefix + "/")})

    def rotate(self) -> None:
        self.rotations += 1

    def close(self) -> None:
        pass

    def wait(self, predicate: Any, timeout: float = 20.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self.data), timeout)


def reporter(store: FlakyStore, **kw: Any) -> StatusReporter:
    args: dict[str, Any] = {
        "interval": 1,
        "ttl": 5,
        "endpoint_reporting": False,
        "endpoint_delay": 0.0,
        "started_at": time.monotonic(),
    }
    args.update(kw)
    return StatusReporter(store, "h", **args)  # type: ignore[arg-type]


def test_reporter_retries_failed_liveness_writes_and_keeps_first_update() -> None:
    store = FlakyStore(failures=1)
    status_key = "/calico/felix/v1/host/h/status"
    r = reporter(store)
    r.start()
    try:
        assert store.wait(lambda d: status_key in d)
        first = json.loads(store.data[status_key])
        assert first["first_update"] is True  # the failed attempt did not count
        assert store.rotations == 1
        assert store.ttls[status_key] == 5
        assert store.ttls["/calico/felix/v1/host/h/last_reported_status"] is None
        assert store.wait(lambda d: json.loads(d[status_key])["first_update"] is False)
    finally:
        r.stop()


def test_reporter_writes_statuses_then_cleans_stale_ones_after_driver_ready() -> None:
    stale = wep("old")
    store = FlakyStore(existing={stale.path: UP})
    r = reporter(store, interval=0, endpoint_reporting=True)
    r.start()
    try:
        key = WorkloadEndpointKey("h", "openstack", "vm", "new")
        r.on_driver_report(EndpointStatusReport({key: "up"}))
        assert store.wait(lambda d: d.get(wep("new").path) == UP)
        assert stale.path in store.data  # nothing is stale before the driver's first in-sync
        r.on_driver_report(DriverReady(0.1))
        assert store.wait(lambda d: stale.path not in d)
        assert store.data == {wep("new").path: UP}  # liveness disabled: interval 0
        r.on_driver_report(EndpointStatusReport({key: None}))
        assert store.wait(lambda d: not d)
        assert store.removed_dirs[-1] == "/calico/felix/v1/host/h/workload"
    finally:
        r.stop()


# --- The dataplane's statuses (§5.12) ------------------------------------------------------------


def _iptables_table(*_: object) -> Any:
    """A stand-in iptables table driver with exactly IptablesTable's interface (a call of any
    other method fails): every call does nothing; no chain was refused."""
    table = create_autospec(IptablesTable, instance=True)
    table.failed_chains = {}
    return table


def _ipsets(*_: object) -> Any:
    return create_autospec(IpsetTable, instance=True)


def _routes(*_: object) -> Any:
    return create_autospec(RouteTable, instance=True)


def test_manager_statuses_follow_interface_state_and_failures() -> None:
    kernel = KernelTables((4,), _iptables_table, _ipsets, _routes)
    manager = DataplaneManager(RenderConfig(interface_prefixes=("tap",)), kernel, None)
    key = WorkloadEndpointKey("h", "openstack", "vm", "e1")
    ep = WorkloadEndpoint(state="active", name="tap1", ipv4_nets=("10.65.0.2/32",))
    inactive_key = WorkloadEndpointKey("h", "openstack", "vm", "e2")
    inactive = WorkloadEndpoint(state="inactive", name="tap2", ipv4_nets=("10.65.0.3/32",))
    host_key = HostEndpointKey("h", "eth0")
    manager.on_message(m.InSync())
    manager.on_message(m.WorkloadEndpointUpdate(key, ep, ()))
    manager.on_message(m.WorkloadEndpointUpdate(inactive_key, inactive, ()))
    manager.on_message(m.HostEndpointUpdate(host_key, HostEndpoint(name="eth0"), (), ()))
    assert manager.endpoint_statuses(apply_failed=False) == {
        key: "down",  # no interface yet
        inactive_key: "down",
        host_key: "down",
    }
    for name in ("tap1", "tap2", "eth0"):
        manager.on_interface_update(name, True)
    # The apply failed with everything still pending: error where the interface is up.
    assert manager.endpoint_statuses(apply_failed=True) == {
        key: "error",
        inactive_key: "error",
        host_key: "error",
    }
    manager.apply()
    assert manager.endpoint_statuses(apply_failed=False) == {
        key: "up",
        inactive_key: "down",  # inactive
        host_key: "up",
    }
    manager.on_interface_update("tap1", False)
    assert manager.endpoint_statuses(apply_failed=False)[key] == "down"


def test_endpoint_whose_chain_the_kernel_refused_is_error() -> None:
    tables: dict[tuple[int, str], Any] = {}

    def table(v: int, t: str) -> Any:
        tables[(v, t)] = _iptables_table()
        return tables[(v, t)]

    kernel = KernelTables((4,), table, _ipsets, _routes)
    manager = DataplaneManager(RenderConfig(interface_prefixes=("tap",)), kernel, None)
    good, bad = (WorkloadEndpointKey("h", "openstack", "vm", e) for e in ("e1", "e2"))
    manager.on_message(m.InSync())
    for key, name, ip in ((good, "tap1", "10.65.0.2/32"), (bad, "tap2", "10.65.0.3/32")):
        ep = WorkloadEndpoint(state="active", name=name, ipv4_nets=(ip,))
        manager.on_message(m.WorkloadEndpointUpdate(key, ep, ()))
        manager.on_interface_update(name, True)
    manager.apply()
    tables[(4, "filter")].failed_chains = {"felix-from-2": "line 7 failed"}
    assert manager.endpoint_statuses(apply_failed=False) == {good: "up", bad: "error"}


# --- Metrics bookkeeping -------------------------------------------------------------------------


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    value = REGISTRY.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def test_dataplane_stats_count_what_felix_sent() -> None:
    stats = metrics.DataplaneStats()
    key = WorkloadEndpointKey("h", "openstack", "vm", "e1")
    ep = WorkloadEndpoint(state="active", name="tap1")
    policy = PolicyKey("default", "p")
    stats.observe(
        [
            m.IPSetUpdate("s1", ("10.65.0.1", "10.65.0.2")),
            m.IPSetUpdate("s2", ("10.65.0.3",)),
            m.ActivePolicyUpdate(policy, (), ()),
            m.ActiveProfileUpdate("web", (), ()),
            m.WorkloadEndpointUpdate(key, ep, ()),
            m.HostEndpointUpdate(HostEndpointKey("h", "eth0"), HostEndpoint(name="eth0"), (), ()),
        ]
    )
    assert _sample("felix_local_endpoints", {"kind": "workload"}) == 1
    assert _sample("felix_local_endpoints", {"kind": "host"}) == 1
    assert _sample("felix_active_policies") == 1
    assert _sample("felix_active_profiles") == 1
    assert (_sample("felix_ipsets"), _sample("felix_ipset_members")) == (2, 3)
    before = _sample("felix_dataplane_messages_sent_total")
    stats.observe(
        [
            m.IPSetDeltaUpdate("s1", frozenset({"10.65.0.4"}), frozenset({"10.65.0.1"})),
            m.IPSetDeltaUpdate("s2", frozenset({"10.65.0.5", "10.65.0.6"}), frozenset()),
            m.IPSetRemove("s1"),
            m.WorkloadEndpointRemove(key),
            m.ActivePolicyRemove(policy),
        ]
    )
    assert _sample("felix_dataplane_messages_sent_total") == before + 5
    assert (_sample("felix_ipsets"), _sample("felix_ipset_members")) == (1, 3)
    assert _sample("felix_local_endpoints", {"kind": "workload"}) == 0
    assert _sample("felix_active_policies") == 0


def test_sync_status_metrics() -> None:
    before = _sample("felix_resyncs_started_total")
    metrics.on_sync_status(SyncStatus.RESYNC)
    assert _sample("felix_resync_state") == 2 and _sample("felix_in_sync") == 0
    metrics.on_sync_status(SyncStatus.IN_SYNC)
    assert _sample("felix_resync_state") == 3 and _sample("felix_in_sync") == 1
    assert _sample("felix_resyncs_started_total") == before + 1


class _Scripted:
    def __init__(self, code: int) -> None:
        self.code = code

    def run(self, argv: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, self.code, "", "")


def test_metered_runner_counts_runs_failures_and_durations() -> None:
    v6 = {"ip_version": "6"}
    restore = {"command": "restore"}
    runs = _sample("felix_dataplane_iptables_restore_runs_total", v6)
    fails = _sample("felix_dataplane_iptables_restore_failures_total", v6)
    observed = _sample("felix_dataplane_iptables_restore_seconds_count", v6)
    ipset_fails = _sample("felix_dataplane_ipset_failures_total", restore)
    dp_metrics.MeteredRunner(_Scripted(0)).run(["ip6tables-nft-restore", "--noflush"], "x")
    dp_metrics.MeteredRunner(_Scripted(1)).run(["/usr/sbin/ip6tables-restore"], "x")
    dp_metrics.MeteredRunner(_Scripted(1)).run(["ipset", "restore"], "x")
    dp_metrics.MeteredRunner(_Scripted(1)).run(["ip", "link"])  # not measured
    assert _sample("felix_dataplane_iptables_restore_runs_total", v6) == runs + 2
    assert _sample("felix_dataplane_iptables_restore_failures_total", v6) == fails + 1
    assert _sample("felix_dataplane_iptables_restore_seconds_count", v6) == observed + 2
    assert _sample("felix_dataplane_ipset_failures_total", restore) == ipset_fails + 1


def test_metered_runner_counts_a_streamed_ipset_save_too() -> None:
    save = {"command": "save"}
    runs = _sample("felix_dataplane_ipset_runs_total", save)
    fails = _sample("felix_dataplane_ipset_failures_total", save)
    observed = _sample("felix_dataplane_ipset_seconds_count", save)
    for code in (0, 1):
        with dp_metrics.MeteredRunner(_Scripted(code)).stream(["ipset", "save"]) as saved:
            assert saved.returncode == code and list(saved.lines) == []
    assert _sample("felix_dataplane_ipset_runs_total", save) == runs + 2
    assert _sample("felix_dataplane_ipset_failures_total", save) == fails + 1
    assert _sample("felix_dataplane_ipset_seconds_count", save) == observed + 2


def test_metered_runner_counts_a_restore_written_a_piece_at_a_time_too() -> None:
    restore = {"command": "restore"}
    runs = _sample("felix_dataplane_ipset_runs_total", restore)
    fails = _sample("felix_dataplane_ipset_failures_total", restore)
    for code in (0, 1):
        runner = dp_metrics.MeteredRunner(_Scripted(code))
        assert runner.run_pieces(["ipset", "restore"], iter(["a\n", "COMMIT\n"])).returncode == code
    assert _sample("felix_dataplane_ipset_runs_total", restore) == runs + 2
    assert _sample("felix_dataplane_ipset_failures_total", restore) == fails + 1


def test_metered_runner_counts_a_started_restore_when_it_is_collected() -> None:
    v4 = {"ip_version": "4"}
    runs = _sample("felix_dataplane_iptables_restore_runs_total", v4)
    fails = _sample("felix_dataplane_iptables_restore_failures_total", v4)
    for code in (0, 1):
        runner = dp_metrics.MeteredRunner(_Scripted(code))
        started = runner.start_pieces(["iptables-restore"], iter(["*filter\n", "COMMIT\n"]))
        assert _sample("felix_dataplane_iptables_restore_runs_total", v4) == runs + code
        assert started.wait().returncode == code
    assert _sample("felix_dataplane_iptables_restore_runs_total", v4) == runs + 2
    assert _sample("felix_dataplane_iptables_restore_failures_total", v4) == fails + 1


def test_convergence_timer_observes_each_pending_batch_once() -> None:
    timer = dp_metrics.ConvergenceTimer()
    count = _sample("felix_dataplane_convergence_seconds_count")
    timer.received(10.0)
    timer.received(10.5)
    assert timer.programmed(11.0) == [1.0, 0.5]
    assert timer.programmed(12.0) == []
    assert _sample("felix_dataplane_convergence_seconds_count") == count + 2


def test_liveness_json_now_parses_back() -> None:
    text = json.loads(liveness_json(datetime.now(UTC), 1.0, False))["time"]
    parsed = datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - parsed).total_seconds()) < 60
