"""End to end: the real calico-felix programs a compute host so that VMs can talk exactly as
their profiles and policies say. Real etcd (v2 API), real kernel, real packets.

One compute host namespace runs Felix; five VM namespaces hang off it (calico.lab.topology):

=====  ===========  =======================  ==================================================
VM     addresses    profile                  meaning
=====  ===========  =======================  ==================================================
A, B   .2, .3       ``web`` (tag ``web``)    inbound tcp/80 and ICMP from ``web`` members only
C      .4           ``db`` (tag ``db``)      inbound anything from ``web``, tcp/5432 from anyone
D      .5           ``isolated``             no inbound rules: nothing reaches it
E      .6           ``web``                  the one whose endpoint gets deleted
=====  ===========  =======================  ==================================================

Every profile allows all outbound traffic, so whether X reaches Y is decided by Y's inbound
rules. Addresses 10.65.0.x/32 and fd00:65::x/128; the matrix runs in both families.

These tests cannot pass without Felix: Felix is the only thing that adds host routes and
proxy ARP/NDP, so nothing connects until it has programmed the host. Every test first
requires that the lab's positive control (A pings B, v4 and v6) succeeded after Felix
started, and FAILS (never skips) with Felix's log otherwise. A "denied" row additionally
requires that Felix did program the destination's route and that the source's gateway was
answered by proxy ARP/NDP, so a denial is only accepted when it can only be the policy's.

The lab is built once for the module (Felix start-up dominates); the state-changing tests
restore what they change, and run after the read-only matrix.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from calico.lab.dataplane_view import DataplaneView
from calico.lab.etcd_server import EtcdServer
from calico.lab.felix import FelixProcess
from calico.lab.flows import Flow, measure
from calico.lab.probes import ping, probe, tcp_ok, wait_until
from calico.lab.topology import ComputeHost, Workload

HOST = "e2e-host-1"
PROGRAM_TIMEOUT = 25.0  # Felix start + first programming
CHANGE_TIMEOUT = 5.0  # "a change takes effect within a few seconds"
REFRESH_INTERVAL = 3  # IptablesRefreshInterval for this lab (Felix adds 0-20 % jitter)

PROFILES: dict[str, dict[str, object]] = {
    "web": {
        "rules": {
            "inbound_rules": [
                {"protocol": "tcp", "dst_ports": [80], "src_tag": "web"},
                {"protocol": "icmp", "ip_version": 4, "src_tag": "web"},
                {"protocol": "icmpv6", "ip_version": 6, "src_tag": "web"},
            ],
            "outbound_rules": [{"action": "allow"}],
        },
        "tags": ["web"],
    },
    "db": {
        "rules": {
            "inbound_rules": [
                {"action": "allow", "src_tag": "web"},
                {"protocol": "tcp", "dst_ports": [5432]},
            ],
            "outbound_rules": [{}],
        },
        "tags": ["db"],
    },
    "isolated": {
        "rules": {"inbound_rules": [], "outbound_rules": [{"action": "allow"}]},
        "tags": ["isolated"],
    },
}

VMS = {  # name: (last octet, profile, labels)
    "A": (2, "web", {"role": "frontend"}),
    "B": (3, "web", {"role": "backend"}),
    "C": (4, "db", {"role": "database"}),
    "D": (5, "isolated", {"role": "other"}),
    "E": (6, "web", {"role": "frontend"}),
}


class Row(NamedTuple):
    src: str
    dst: str
    proto: str
    port: int | None
    expected: bool


ALLOW, DENY = True, False
MATRIX = [
    # web <-> web: tcp/80 and ICMP only
    Row("A", "B", "icmp", None, ALLOW),
    Row("B", "A", "icmp", None, ALLOW),
    Row("A", "B", "tcp", 80, ALLOW),
    Row("B", "A", "tcp", 80, ALLOW),
    Row("B", "A", "tcp", 81, DENY),
    Row("A", "B", "tcp", 22, DENY),
    Row("A", "B", "udp", 5000, DENY),
    # db: anything from web members, tcp/5432 from anyone
    Row("A", "C", "icmp", None, ALLOW),
    Row("B", "C", "icmp", None, ALLOW),
    Row("A", "C", "tcp", 80, ALLOW),
    Row("A", "C", "tcp", 81, ALLOW),
    Row("B", "C", "tcp", 3306, ALLOW),
    Row("A", "C", "udp", 5000, ALLOW),
    Row("B", "C", "udp", 53, ALLOW),
    Row("D", "C", "tcp", 5432, ALLOW),
    Row("D", "C", "tcp", 80, DENY),
    Row("D", "C", "udp", 5432, DENY),
    Row("D", "C", "icmp", None, DENY),
    # C is not a web member: web VMs refuse it
    Row("C", "A", "icmp", None, DENY),
    Row("C", "A", "tcp", 80, DENY),
    Row("C", "B", "udp", 5000, DENY),
    # D reaches web VMs on nothing; nothing reaches D
    Row("D", "A", "icmp", None, DENY),
    Row("D", "A", "tcp", 80, DENY),
    Row("D", "B", "udp", 5000, DENY),
    Row("A", "D", "icmp", None, DENY),
    Row("A", "D", "tcp", 80, DENY),
    Row("B", "D", "udp", 5000, DENY),
    Row("C", "D", "tcp", 5432, DENY),
    Row("C", "D", "icmp", None, DENY),
]


def _row_id(row: Row, v6: bool) -> str:
    what = row.proto if row.port is None else f"{row.proto}{row.port}"
    return f"v{6 if v6 else 4}-{row.src}-{row.dst}-{what}-{'allow' if row.expected else 'deny'}"


CASES = [pytest.param(row, v6, id=_row_id(row, v6)) for v6 in (False, True) for row in MATRIX]


class FelixLab:
    """The compute host, its VMs, Felix, and what the start-up check found."""

    def __init__(self, etcd: EtcdServer, work_dir: Path):
        self.etcd = etcd
        self.host = ComputeHost(etcd, hostname=HOST, name_prefix="e2e", work_dir=work_dir)
        self.view = DataplaneView(self.host.ns)
        self.vms: dict[str, Workload] = {}
        self.felix: FelixProcess | None = None
        self.problem: str | None = None  # why the positive control failed, if it did
        self.problem_v6: str | None = None  # the same for IPv6 only
        self._results: dict[tuple[Row, bool], bool] | None = None

    # -- datastore -----------------------------------------------------------------------------

    def put(self, key: str, value: object) -> None:
        self.etcd.v2_put(key, value if isinstance(value, str) else json.dumps(value))

    def put_profile(self, name: str, rules: object = None, tags: object = None) -> None:
        spec = PROFILES[name]
        self.put(f"/calico/v1/policy/profile/{name}/rules", rules or spec["rules"])
        self.put(f"/calico/v1/policy/profile/{name}/tags", tags or spec["tags"])

    def put_endpoint(self, name: str) -> None:
        _, profile, labels = VMS[name]
        vm = self.vms[name]
        self.put(vm.endpoint_key(HOST), vm.endpoint_json([profile], labels))

    # -- set-up ------------------------------------------------------------------------------

    def build(self) -> None:
        for name, (octet, _, _) in VMS.items():
            self.vms[name] = self.host.add_workload(
                f"10.65.0.{octet}", f"fd00:65::{octet}", label=f"vm{name.lower()}"
            )
        self.put("/calico/v1/Ready", "true")
        for profile in PROFILES:
            self.put_profile(profile)
        for name in VMS:
            self.put_endpoint(name)
        self.felix = self.host.start_felix(
            FELIX_IPV6SUPPORT="true",
            FELIX_IPTABLESREFRESHINTERVAL=str(REFRESH_INTERVAL),
        )
        a, b = self.vms["A"], self.vms["B"]
        started = time.monotonic()
        if not wait_until(lambda: ping(a, b) or self.felix_died(), PROGRAM_TIMEOUT, 0.5):
            self.problem = f"A never pinged B (IPv4) within {PROGRAM_TIMEOUT:.0f} s of Felix start"
        elif self.felix_died():
            self.problem = "calico-felix exited"
        self.programmed_after = time.monotonic() - started
        if self.problem is None and not wait_until(lambda: ping(a, b, v6=True), 10, 0.5):
            self.problem_v6 = "A pinged B over IPv4 but never over IPv6 (within 10 s more)"

    def felix_died(self) -> bool:
        return self.felix is None or self.felix.proc.poll() is not None

    # -- checks ------------------------------------------------------------------------------

    def log_excerpt(self, lines: int = 60) -> str:
        if self.felix is None:
            return "(Felix was never started)"
        text = self.felix.text().splitlines()
        interesting = [
            line
            for line in text
            if any(w in line for w in ("ERROR", "WARNING", "Traceback", "Error", "programmed"))
        ]
        return (
            f"--- Felix exit status: {self.felix.proc.poll()}\n"
            f"--- ERROR/WARNING lines (last 30 of {len(interesting)}):\n"
            + "\n".join(interesting[-30:])
            + f"\n--- last {lines} lines of {self.felix.output}:\n"
            + "\n".join(text[-lines:])
        )

    def require_programmed(self, v6: bool = False) -> None:
        """FAIL (never skip) unless Felix made the positive control work (IPv4, and IPv6
        too if ``v6``)."""
        if self.problem is not None:
            pytest.fail(f"Felix did not program the host: {self.problem}\n{self.log_excerpt()}")
        if v6 and self.problem_v6 is not None:
            pytest.fail(
                f"Felix did not program IPv6: {self.problem_v6}\n{self.host_state(v6=True)}"
                f"\n{self.log_excerpt(20)}"
            )
        if self.felix_died():
            pytest.fail(f"calico-felix has exited\n{self.log_excerpt()}")

    def fail(self, message: str, v6: bool = False) -> None:
        pytest.fail(f"{message}\n{self.host_state(v6)}\n{self.log_excerpt(40)}")

    def host_state(self, v6: bool = False) -> str:
        if v6:
            routes = self.host.run(["ip", "-6", "route", "show"], check=False).stdout
            proxies = self.host.run(["ip", "-6", "neigh", "show", "proxy"], check=False).stdout
            vm_neigh = self.vms["A"].run(["ip", "-6", "neigh", "show"], check=False).stdout
            return (
                f"--- host v6 routes:\n{routes}--- host proxy NDP entries:\n{proxies or '(none)'}"
                f"\n--- A's v6 neighbours:\n{vm_neigh}"
            )
        routes = self.host.run(["ip", "route", "show"], check=False).stdout
        return f"--- host routes:\n{routes}"

    def matrix_results(self) -> dict[tuple[Row, bool], bool]:
        """Every matrix probe, measured once, concurrently (calico.lab.flows.measure)."""
        if self._results is None:
            cases = {
                Flow(row.src, row.dst, row.proto, row.port, v6): (row, v6)
                for v6 in (False, True)
                for row in MATRIX
            }
            measured = measure(self.vms, cases)
            self._results = {cases[flow]: ok for flow, ok in measured.items()}
        return self._results

    def close(self) -> None:
        self.host.close()


@pytest.fixture(scope="module")
def lab(
    backend: str, etcd_server: EtcdServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FelixLab]:
    # The same clean slate as the `etcd` fixture, but for the whole module: this lab's Felix
    # must not see /calico wiped under it between tests.
    if not etcd_server.running:
        etcd_server.start()
    etcd_server.v2_delete("/calico", recursive=True)
    etcd_server.v3_delete("/calico", prefix=True)
    lab = FelixLab(etcd_server, tmp_path_factory.mktemp("e2e"))
    try:
        lab.build()
        yield lab
    finally:
        lab.close()


# -- the matrix ------------------------------------------------------------------------------


def test_felix_programs_the_host(lab: FelixLab) -> None:
    lab.require_programmed()
    assert lab.felix is not None
    assert "Dataplane programmed" in lab.felix.text()
    assert lab.view.running_in(lab.felix.text()) is None, lab.view.backend
    neigh = lab.host.run(["ip", "-4", "neigh", "show", "nud", "permanent"]).stdout
    for vm in lab.vms.values():
        assert lab.host.route_to(vm.ip) == vm.tap, vm
        assert f"{vm.ip} dev {vm.tap} lladdr {vm.mac} PERMANENT" in neigh, vm
        tap = vm.tap
        assert lab.host.read_sysctl(f"net.ipv4.conf.{tap}.proxy_arp") == "1"
        assert lab.host.read_sysctl(f"net.ipv4.neigh.{tap}.proxy_delay") == "0"
        assert lab.host.read_sysctl(f"net.ipv4.conf.{tap}.rp_filter") == "1"
    assert lab.view.hooked()


def test_felix_programs_the_host_v6(lab: FelixLab) -> None:
    """felix.md §5.11: per v6 endpoint, proxy_ndp=1, a proxy entry for ``ipv6_gateway``
    (without which the VM cannot resolve its gateway fe80::1) and a /128 route."""
    lab.require_programmed()
    proxies = lab.host.run(["ip", "-6", "neigh", "show", "proxy"]).stdout
    problems = []
    for name, vm in lab.vms.items():
        if lab.host.route_to(vm.ip6 or "") != vm.tap:
            problems.append(f"{name}: no route {vm.ip6} dev {vm.tap}")
        if lab.host.read_sysctl(f"net.ipv6.conf.{vm.tap}.proxy_ndp") != "1":
            problems.append(f"{name}: proxy_ndp is not 1 on {vm.tap}")
        if f"fe80::1 dev {vm.tap} proxy" not in proxies:
            problems.append(f"{name}: no 'ip -6 neigh add proxy fe80::1 dev {vm.tap}'")
    if not lab.view.hooked(v6=True):
        problems.append(f"forwarded IPv6 does not reach felix-FORWARD ({lab.view.backend})")
    if problems:
        lab.fail("IPv6 host programming incomplete:\n" + "\n".join(problems), v6=True)
    lab.require_programmed(v6=True)


@pytest.mark.parametrize(("row", "v6"), CASES)
def test_matrix(lab: FelixLab, row: Row, v6: bool) -> None:
    lab.require_programmed(v6)
    src, dst = lab.vms[row.src], lab.vms[row.dst]
    got = lab.matrix_results()[(row, v6)]
    if not row.expected:
        # A denial counts only if it can only be the policy's: Felix routed to dst and
        # answered src's gateway ARP/NDP (so src's packets did leave towards the host).
        assert lab.host.route_to(dst.addr(v6)) == dst.tap, f"no route to {dst}"
        assert src.gateway_resolved(v6), f"{src}: gateway never answered (proxy ARP/NDP)"
    if got != row.expected:
        # Measure again on its own before failing: rules out interference between probes.
        again = probe(src, dst, row.proto, v6=v6, port=row.port)
        lab.fail(
            f"{row.src}->{row.dst} {row.proto}/{row.port} v{6 if v6 else 4}: expected "
            f"{'allowed' if row.expected else 'denied'}, got "
            f"{'allowed' if got else 'denied'} (alone, again: {'allowed' if again else 'denied'})",
            v6,
        )


# -- changes -----------------------------------------------------------------------------------

TIER = "/calico/v1/policy/tier/e2e-tier"
POLICY = {
    "selector": "role == 'backend'",  # applies to B
    "order": 10,
    "inbound_rules": [
        {
            "action": "deny",
            "protocol": "tcp",
            "dst_ports": [80],
            "src_selector": "role == 'frontend'",
        },
        {"action": "next-tier"},
    ],
    # A tier that matches an endpoint drops what no policy passes, in both directions.
    "outbound_rules": [{"action": "next-tier"}],
}


def test_tier_policy_denies_then_removal_restores(lab: FelixLab) -> None:
    lab.require_programmed()
    a, b = lab.vms["A"], lab.vms["B"]
    assert tcp_ok(a, b, 80)
    try:
        lab.put(f"{TIER}/metadata", {"order": 10})
        lab.put(f"{TIER}/policy/deny-frontend-to-backend-80", POLICY)
        if not wait_until(lambda: not tcp_ok(a, b, 80), CHANGE_TIMEOUT):
            lab.fail("the tier policy denying A->B tcp/80 never took effect")
        # Only that: the rest of B's traffic goes on to its profile (next-tier).
        assert ping(a, b), "A->B ICMP should still be allowed (next-tier to the profile)"
        assert tcp_ok(b, a, 80), "B's outbound should be unaffected (next-tier)"
        if lab.problem_v6 is None:  # (a broken IPv6 fails the v6 tests, not this one)
            # v4 and v6 tables are written one after the other: wait, do not race.
            denied_v6 = wait_until(lambda: not tcp_ok(a, b, 80, v6=True), CHANGE_TIMEOUT)
            assert denied_v6, "the policy should deny over IPv6 too"
    finally:
        lab.etcd.v2_delete(TIER, recursive=True)
    if not wait_until(lambda: tcp_ok(a, b, 80), CHANGE_TIMEOUT):
        lab.fail("removing the tier policy did not restore A->B tcp/80")
    if lab.problem_v6 is None:
        assert wait_until(lambda: tcp_ok(a, b, 80, v6=True), CHANGE_TIMEOUT)


def test_profile_rule_change_takes_effect(lab: FelixLab) -> None:
    lab.require_programmed()
    a, d = lab.vms["A"], lab.vms["D"]
    assert not ping(a, d)
    opened = {
        "inbound_rules": [
            {"protocol": "icmp", "ip_version": 4, "src_tag": "web"},
            {"protocol": "tcp", "dst_ports": [80], "src_tag": "web"},
        ],
        "outbound_rules": [{"action": "allow"}],
    }
    try:
        started = time.monotonic()
        lab.put_profile("isolated", rules=opened)
        if not wait_until(lambda: ping(a, d), CHANGE_TIMEOUT):
            lab.fail(f"the new rules of profile 'isolated' did not apply in {CHANGE_TIMEOUT} s")
        took = time.monotonic() - started
        assert tcp_ok(a, d, 80)
        assert not tcp_ok(a, d, 81)
        assert not ping(lab.vms["C"], d), "C is not a web member"
    finally:
        lab.put_profile("isolated")
    if not wait_until(lambda: not ping(a, d) and not tcp_ok(a, d, 80), CHANGE_TIMEOUT):
        lab.fail("restoring profile 'isolated' did not close D again")
    print(f"profile change applied after {took:.1f} s")


def _felix_forward_rules(lab: FelixLab) -> list[str]:
    return lab.view.chain_rules("felix-FORWARD")


def test_flushed_chain_is_repaired_by_refresh(lab: FelixLab) -> None:
    lab.require_programmed()
    a, d = lab.vms["A"], lab.vms["D"]
    assert _felix_forward_rules(lab), "felix-FORWARD is empty before the test"
    assert not ping(d, a)

    # Another tool flushes Felix's FORWARD chain: with it empty the kernel's FORWARD policy
    # (ACCEPT in a fresh namespace) lets D through: policy is bypassed...
    lab.view.flush_forward()
    flushed = time.monotonic()
    bypassed = ping(d, a)
    # ...until Felix's periodic refresh rewrites the chain.
    limit = REFRESH_INTERVAL * 1.2 + 3
    if not wait_until(lambda: bool(_felix_forward_rules(lab)), limit):
        lab.fail(f"felix-FORWARD still empty {limit:.1f} s after the flush")
    print(f"felix-FORWARD repaired after {time.monotonic() - flushed:.1f} s")
    assert not ping(d, a)
    assert ping(a, lab.vms["B"])
    assert bypassed, "expected the flush to open D->A until the repair (test sanity)"

    # The jump from the kernel's FORWARD chain (nftables: the base chain itself), removed by
    # someone else, comes back too.
    lab.view.unhook_forward()
    if not wait_until(lab.view.hooked, limit):
        lab.fail(f"the FORWARD -> felix-FORWARD hook was not restored within {limit:.1f} s")
    assert not ping(d, a)


def test_deleted_endpoint_becomes_unreachable_and_loses_its_route(lab: FelixLab) -> None:
    lab.require_programmed()
    a, e = lab.vms["A"], lab.vms["E"]
    v6_works = lab.problem_v6 is None  # (a broken IPv6 fails the v6 tests, not this one)
    assert ping(a, e) and tcp_ok(a, e, 80)
    assert ping(a, e, v6=True) or not v6_works
    assert lab.host.route_to(e.ip) == e.tap
    lab.etcd.v2_delete(e.endpoint_key(HOST))
    if not wait_until(lambda: lab.host.route_to(e.ip) is None, CHANGE_TIMEOUT):
        lab.fail(f"the route to deleted endpoint E ({e.ip}) is still there")
    assert wait_until(lambda: lab.host.route_to(e.ip6 or "") is None, 2), "v6 route left"
    assert not ping(a, e)
    assert not tcp_ok(a, e, 80)
    if v6_works:
        assert not ping(a, e, v6=True)
    assert ping(a, lab.vms["B"]), "the other endpoints are unaffected"
