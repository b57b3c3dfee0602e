"""RouteTable, sysctls and InterfaceWatcher against real kernels, inside test namespaces only.

Every pyroute2 object here is bound to a test namespace (``IPRoute(netns=..., flags=0)``, which
never creates one), and sysctls are written and read through ``ip netns exec``: nothing in these
tests touches the root namespace. Addresses come from 10.65.0.0/16 and fd00:65::/64.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from pyroute2 import IPRoute

from calico.felix.kernel.commands import NetnsRunner
from calico.felix.kernel.conntrack import flush_conntrack
from calico.felix.kernel.routes import INCREMENTAL_BATCH_MIN, RTPROT_FELIX, RouteTable
from calico.felix.kernel.sysctls import (
    LooseRPFError,
    ProcSysctlWriter,
    RunnerSysctlWriter,
    configure_global,
    configure_interface,
)
from calico.felix.kernel.watcher import InterfaceWatcher
from calico.lab.netns import NetNS

TAP = "tapabc123"
MAC = "aa:bb:cc:00:00:02"

MakeNS = Callable[[], NetNS]
MakeIPR = Callable[[NetNS], IPRoute]


@pytest.fixture
def ipr_in(netns: MakeNS) -> Iterator[MakeIPR]:
    """pyroute2 IPRoute bound to a test namespace; closed before the namespaces go."""
    made: list[IPRoute] = []

    def make(ns: NetNS) -> IPRoute:
        ipr = IPRoute(netns=ns.name, flags=0)
        made.append(ipr)
        return ipr

    try:
        yield make
    finally:
        for ipr in made:
            ipr.close()


def host_and_workload(netns: MakeNS, tap: str = TAP, up: bool = True) -> tuple[NetNS, NetNS]:
    """A "host" namespace with `tap`, veth-joined to a "workload" namespace's eth0."""
    host, workload = netns(), netns()
    host.add_veth_to(workload, tap, "eth0")
    if up:
        workload.set_up("eth0")
        host.set_up(tap)
    return host, workload


def felix_routes(ns: NetNS, version: int = 4) -> list[str]:
    out = ns.run(["ip", f"-{version}", "route", "show", "proto", str(RTPROT_FELIX)]).stdout
    return sorted(line.strip() for line in out.splitlines() if line.strip())


def all_routes(ns: NetNS, version: int = 4) -> list[str]:
    out = ns.run(["ip", f"-{version}", "route", "show"]).stdout
    return sorted(line.strip() for line in out.splitlines() if line.strip())


def sysctl(ns: NetNS, key: str) -> str:
    return ns.run(["sysctl", "-n", key]).stdout.strip()


# -- RouteTable --------------------------------------------------------------------------------


def test_routes_added_idempotently_and_removed(netns: MakeNS, ipr_in: MakeIPR) -> None:
    host, _ = host_and_workload(netns)
    table = RouteTable(4, ipr_in(host), prefixes=("tap",))

    table.set_routes(TAP, ["10.65.0.2", "10.65.0.3/32"])
    table.apply()
    expected = [f"10.65.0.2 dev {TAP} scope link", f"10.65.0.3 dev {TAP} scope link"]
    assert felix_routes(host) == expected
    assert table.pending == set()
    assert table.errors == {}

    table.apply()  # nothing to do, nothing duplicated
    assert felix_routes(host) == expected

    table.set_routes(TAP, ["10.65.0.2"])
    table.apply()
    assert felix_routes(host) == [f"10.65.0.2 dev {TAP} scope link"]

    table.remove_interface(TAP)
    table.apply()
    assert felix_routes(host) == []


@pytest.mark.parametrize("listing", ["ip -j", "pyroute2"])
def test_routes_we_did_not_make_are_untouched(netns: MakeNS, ipr_in: MakeIPR, listing: str) -> None:
    """The full resync reads the kernel with `ip -j` when it has a runner (the driver), with
    pyroute2's dumps otherwise: both see the same routes as ours."""
    host, workload = host_and_workload(netns)
    host.add_veth_to(workload, "eth1", "eth1")
    host.set_up("eth1")
    workload.set_up("eth1")
    host.run(["ip", "route", "add", "10.65.1.0/24", "dev", "eth1"])
    # Our protocol number, but not on one of our interfaces.
    host.run(["ip", "route", "add", "10.65.1.7/32", "dev", "eth1", "proto", str(RTPROT_FELIX)])
    # On our interface, but another protocol (an operator's static route).
    host.run(["ip", "route", "add", "10.65.2.5/32", "dev", TAP, "proto", "static"])
    # Ours and no longer wanted (left by an earlier run): swept.
    host.run(["ip", "route", "add", "10.65.3.3/32", "dev", TAP, "proto", str(RTPROT_FELIX)])
    before = [r for r in all_routes(host) if "10.65.3.3" not in r]

    runner = NetnsRunner(host.name) if listing == "ip -j" else None
    table = RouteTable(4, ipr_in(host), prefixes=("tap",), conntrack_runner=runner)
    table.apply()
    assert all_routes(host) == before
    assert "10.65.3.3" not in "".join(all_routes(host))

    with pytest.raises(ValueError, match="does not start with"):
        table.set_routes("eth1", ["10.65.1.8"])
    with pytest.raises(ValueError, match="host address"):
        table.set_routes(TAP, ["10.65.4.0/24"])


class CountingIPR:
    """Passes calls through to a real IPRoute, counting the full dumps."""

    def __init__(self, ipr: IPRoute) -> None:
        self.ipr = ipr
        self.dumps = 0

    def get_links(self, *argv: object, **kwarg: object) -> object:
        self.dumps += 1
        return self.ipr.get_links(*argv, **kwarg)

    def get_routes(self, *argv: object, **kwarg: object) -> object:
        self.dumps += 1
        return self.ipr.get_routes(*argv, **kwarg)

    def get_neighbours(self, *argv: object, **kwarg: object) -> object:
        self.dumps += 1
        return self.ipr.get_neighbours(*argv, **kwarg)

    def route(self, command: str, **kwarg: object) -> object:
        return self.ipr.route(command, **kwarg)

    def neigh(self, command: str, **kwarg: object) -> object:
        return self.ipr.neigh(command, **kwarg)

    def link(self, command: str, **kwarg: object) -> object:
        return self.ipr.link(command, **kwarg)


def test_incremental_apply_does_not_dump_and_full_apply_repairs(
    netns: MakeNS, ipr_in: MakeIPR
) -> None:
    host, workload = host_and_workload(netns)
    host.add_veth_to(workload, "tapdef456", "eth1")
    host.set_up("tapdef456")
    workload.set_up("eth1")
    ipr = CountingIPR(ipr_in(host))
    table = RouteTable(4, ipr, prefixes=("tap",))
    table.set_routes(TAP, ["10.65.0.2"], mac=MAC)
    table.apply()  # the first apply is a full resync
    assert ipr.dumps == 3
    table.set_routes("tapdef456", ["10.65.0.9"])
    table.set_routes(TAP, ["10.65.0.2", "10.65.0.3"], mac=MAC)
    table.apply()
    assert ipr.dumps == 3  # only the two changed interfaces were looked up
    assert felix_routes(host) == [
        f"10.65.0.2 dev {TAP} scope link",
        f"10.65.0.3 dev {TAP} scope link",
        "10.65.0.9 dev tapdef456 scope link",
    ]
    # Another tool deletes one of our routes: a normal apply trusts its record, a full one
    # (the periodic refresh) reads the kernel and puts it back.
    host.run(["ip", "route", "del", "10.65.0.3/32", "dev", TAP])
    table.apply()
    assert "10.65.0.3" not in "".join(felix_routes(host))
    table.apply(full=True)
    assert f"10.65.0.3 dev {TAP} scope link" in felix_routes(host)
    # An interface re-created with the same name (new index) gets its routes again.
    host.run(["ip", "link", "del", "tapdef456"])
    host.add_veth_to(workload, "tapdef456", "eth2")
    host.set_up("tapdef456")
    workload.set_up("eth2")
    table.set_routes("tapdef456", ["10.65.0.9"])  # what the manager does on the link event
    table.apply()
    assert "10.65.0.9 dev tapdef456 scope link" in felix_routes(host)


class CountingRunner(NetnsRunner):
    """A NetnsRunner that counts the full resync's link listings, and can make `ip` fail."""

    link_listings = 0
    ip_fails = False

    def run(self, argv: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
        if argv[:4] == ["ip", "-j", "link", "show"]:
            self.link_listings += 1
        if self.ip_fails and argv[0] == "ip":
            return subprocess.CompletedProcess(argv, 1, "", "ip: failed (test)")
        return super().run(argv, input)


def test_refresh_checks_cheaply_and_resyncs_only_on_a_difference(
    netns: MakeNS, ipr_in: MakeIPR
) -> None:
    host, _ = host_and_workload(netns)
    ipr = CountingIPR(ipr_in(host))
    runner = CountingRunner(host.name)
    table = RouteTable(4, ipr, prefixes=("tap",), conntrack_runner=runner)
    table.set_routes(TAP, ["10.65.0.2", "10.65.0.3"], mac=MAC)
    table.apply()  # the first apply is a full resync, listed with `ip -j`: no pyroute2 dump
    assert (ipr.dumps, runner.link_listings) == (0, 1)
    # Nothing changed: the refresh lists only our routes and neighbours with `ip -j`.
    table.apply(full=True)
    assert (ipr.dumps, runner.link_listings) == (0, 1)
    # A deleted route, a deleted static ARP entry, a stray route of ours: each is found and
    # repaired by a full resync.
    for tamper in [
        ["ip", "route", "del", "10.65.0.3/32", "dev", TAP],
        ["ip", "neigh", "del", "10.65.0.2", "dev", TAP],
        ["ip", "route", "add", "10.65.0.9/32", "dev", TAP, "proto", str(RTPROT_FELIX)],
    ]:
        listings = runner.link_listings
        host.run(tamper)
        table.apply(full=True)
        assert runner.link_listings == listings + 1
        assert felix_routes(host) == [
            f"10.65.0.2 dev {TAP} scope link",
            f"10.65.0.3 dev {TAP} scope link",
        ]
        neigh = host.run(["ip", "-4", "neigh", "show", "nud", "permanent"]).stdout
        assert f"10.65.0.2 dev {TAP} lladdr {MAC} PERMANENT" in neigh
    table6 = RouteTable(6, ipr, prefixes=("tap",), conntrack_runner=runner)
    table6.set_routes(TAP, ["fd00:65::2"])
    table6.apply()
    listings = runner.link_listings
    table6.apply(full=True)
    assert runner.link_listings == listings
    host.run(["ip", "-6", "route", "del", "fd00:65::2/128", "dev", TAP])
    table6.apply(full=True)
    assert runner.link_listings == listings + 1
    assert "fd00:65::2" in "".join(felix_routes(host, 6))
    assert ipr.dumps == 0
    # `ip` failing: the full resync falls back to pyroute2's dumps.
    runner.ip_fails = True
    host.run(["ip", "route", "del", "10.65.0.3/32", "dev", TAP])
    table.apply(full=True)
    assert ipr.dumps == 3
    assert f"10.65.0.3 dev {TAP} scope link" in felix_routes(host)


class BatchRunner(NetnsRunner):
    """A NetnsRunner that records `ip -batch` input and can make the batch fail."""

    batches: list[str]
    fail_batch = False

    def run(self, argv: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
        if "-batch" in argv:
            self.batches.append(input or "")
            if self.fail_batch:
                return subprocess.CompletedProcess(argv, 1, "", "Command failed -:1 (test)")
        return super().run(argv, input)


@pytest.mark.parametrize("batch_fails", [False, True], ids=["batch", "batch-fails"])
def test_full_resync_programs_in_one_batch(
    netns: MakeNS, ipr_in: MakeIPR, batch_fails: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """With a runner, the full resync writes its changes as one `ip -batch`; if that fails, it
    lists the kernel again and programs through netlink: the same result either way."""
    host, workload = host_and_workload(netns)
    host.add_veth_to(workload, "tapdef456", "eth1")
    host.set_up("tapdef456")
    workload.set_up("eth1")
    stray = ["ip", "route", "add", "10.65.0.99/32", "dev", TAP, "proto", str(RTPROT_FELIX)]
    host.run(stray)
    host.run(["ip", "neigh", "replace", "10.65.0.98", "lladdr", MAC, "dev", TAP, "nud",
              "permanent"])  # fmt: skip
    runner = BatchRunner(host.name)
    runner.batches = []
    runner.fail_batch = batch_fails
    table = RouteTable(4, ipr_in(host), prefixes=("tap",), conntrack_runner=runner)
    table.set_routes(TAP, ["10.65.0.2", "10.65.0.3"], mac=MAC)
    table.set_routes("tapdef456", ["10.65.0.9"])
    table.apply()
    assert len(runner.batches) == 1
    assert ("programming them one by one" in caplog.text) == batch_fails
    assert f"route del 10.65.0.99/32 dev {TAP}" in runner.batches[0]
    assert f"neigh del 10.65.0.98 dev {TAP}" in runner.batches[0]
    assert felix_routes(host) == [
        f"10.65.0.2 dev {TAP} scope link",
        f"10.65.0.3 dev {TAP} scope link",
        "10.65.0.9 dev tapdef456 scope link",
    ]
    neigh = host.run(["ip", "-4", "neigh", "show", "nud", "permanent"]).stdout
    assert f"10.65.0.2 dev {TAP} lladdr {MAC} PERMANENT" in neigh
    assert "10.65.0.98" not in neigh
    assert table.pending == set() and table.errors == {}
    # The record is right too: a refresh finds nothing to repair.
    table.apply(full=True)
    assert len(runner.batches) == 1


@pytest.mark.parametrize("batch_fails", [False, True], ids=["batch", "batch-fails"])
def test_many_interfaces_at_once_go_in_one_batch(
    netns: MakeNS, ipr_in: MakeIPR, batch_fails: bool
) -> None:
    """After the first sync, an apply that changes INCREMENTAL_BATCH_MIN interfaces or more
    (a burst of new VMs) writes them as one `ip -batch`; fewer go through netlink. If the
    batch fails, the table lists the kernel and resyncs: the same routes either way."""
    host, workload = host_and_workload(netns)
    names = [f"tapb{i}" for i in range(INCREMENTAL_BATCH_MIN)]
    for i, name in enumerate(names):
        host.add_veth_to(workload, name, f"ethb{i}")
        host.set_up(name)
        workload.set_up(f"ethb{i}")
    runner = BatchRunner(host.name)
    runner.batches = []
    table = RouteTable(4, ipr_in(host), prefixes=("tap",), conntrack_runner=runner)
    table.apply()  # the first sync: nothing wanted, nothing to write
    assert runner.batches == []
    runner.fail_batch = batch_fails
    for i, name in enumerate(names):
        table.set_routes(name, [f"10.65.1.{i}"], mac=f"ee:ee:ee:00:00:{i:02x}")
    table.apply()
    assert runner.batches and f"route replace 10.65.1.0/32 dev {names[0]}" in runner.batches[0]
    want = [f"10.65.1.{i} dev {name} scope link" for i, name in enumerate(names)]
    assert felix_routes(host) == want
    neigh = host.run(["ip", "-4", "neigh", "show", "nud", "permanent"]).stdout
    assert f"10.65.1.3 dev {names[3]} lladdr ee:ee:ee:00:00:03 PERMANENT" in neigh
    assert table.pending == set() and table.errors == {}
    batches = len(runner.batches)
    table.set_routes(names[0], ["10.65.1.100"], mac="ee:ee:ee:00:00:00")  # one: netlink
    table.apply()
    assert len(runner.batches) == batches
    assert f"10.65.1.100 dev {names[0]} scope link" in felix_routes(host)
    assert f"10.65.1.0 dev {names[0]} scope link" not in felix_routes(host)
    table.apply(full=True)  # the record matches the kernel: nothing to repair
    assert len(runner.batches) == batches


def test_an_interface_without_routes_of_this_version_is_not_looked_up(
    netns: MakeNS, ipr_in: MakeIPR
) -> None:
    """A VM with IPv4 addresses only: the IPv6 table has nothing to add or remove on its TAP,
    so it does not look the link up (a burst of 500 new VMs did, for both IP versions)."""
    host, _ = host_and_workload(netns)
    looked_up: list[str] = []

    def lookup(name: str) -> tuple[int, bool] | None:
        looked_up.append(name)
        link = ipr_in(host).link("get", ifname=name)[0]
        return link["index"], True

    table = RouteTable(6, ipr_in(host), prefixes=("tap",), link_lookup=lookup)
    table.apply()
    table.set_routes(TAP, [])
    table.apply()
    assert looked_up == []
    table.set_routes(TAP, ["fd00:65::5"])  # an address of this version: looked up, routed
    table.apply()
    assert looked_up == [TAP]
    assert felix_routes(host, 6) == [f"fd00:65::5 dev {TAP} metric 1024 pref medium"]
    table.set_routes(TAP, [])  # and removed again, which needs the link too
    table.apply()
    assert looked_up == [TAP, TAP]
    assert felix_routes(host, 6) == []
    table.remove_interface(TAP)
    table.apply()
    assert looked_up == [TAP, TAP]


def test_an_odd_kernel_name_keeps_the_resync_on_netlink(netns: MakeNS, ipr_in: MakeIPR) -> None:
    host, workload = host_and_workload(netns)
    host.add_veth_to(workload, "tap'x", "eth1")  # ours by prefix, not fit for a batch line
    runner = BatchRunner(host.name)
    runner.batches = []
    table = RouteTable(4, ipr_in(host), prefixes=("tap",), conntrack_runner=runner)
    table.set_routes(TAP, ["10.65.0.2"], mac=MAC)
    table.apply()
    assert runner.batches == []
    assert felix_routes(host) == [f"10.65.0.2 dev {TAP} scope link"]


def test_local_link_lookup_agrees_with_netlink(netns: MakeNS, ipr_in: MakeIPR) -> None:
    """The driver looks interfaces up with if_nametoindex and sysfs (in its own namespace):
    the same (index, admin up) as pyroute2's RTM_GETLINK, None for a missing one."""
    host, workload = netns(), netns()
    host.add_veth_to(workload, "tapup", "eth0")
    host.set_up("tapup")
    host.add_veth_to(workload, "tapdown", "eth1")
    script = (
        "import json; from calico.felix.kernel.routes import local_link_lookup as f; "
        "print(json.dumps([f(n) for n in ('tapup', 'tapdown', 'tapmissing')]))"
    )
    out = host.run([sys.executable, "-c", script]).stdout
    ipr = ipr_in(host)
    expected = []
    for name in ("tapup", "tapdown"):
        link = ipr.link("get", ifname=name)[0]
        expected.append([link["index"], bool(link["flags"] & 1)])
    assert json.loads(out) == [*expected, None]
    assert expected[0][1] and not expected[1][1]


@pytest.mark.parametrize("listing", ["ip -j", "pyroute2"])
def test_full_resync_sees_admin_state(netns: MakeNS, ipr_in: MakeIPR, listing: str) -> None:
    host, workload = netns(), netns()
    host.add_veth_to(workload, "tapdown", "eth0")  # admin-down
    host.add_veth_to(workload, "tapup", "eth1")
    host.set_up("tapup")
    workload.set_up("eth1")
    runner = NetnsRunner(host.name) if listing == "ip -j" else None
    table = RouteTable(4, ipr_in(host), prefixes=("tap",), conntrack_runner=runner)
    table.set_routes("tapdown", ["10.65.0.8"])
    table.set_routes("tapup", ["10.65.0.9"])
    table.set_routes("tapmissing", ["10.65.0.10"])
    table.apply()
    assert table.pending == {"tapdown", "tapmissing"}
    assert felix_routes(host) == ["10.65.0.9 dev tapup scope link"]


def test_interface_that_appears_later_gets_routes(netns: MakeNS, ipr_in: MakeIPR) -> None:
    host, workload = netns(), netns()
    table = RouteTable(4, ipr_in(host), prefixes=("tap",))
    table.set_routes("tapdef456", ["10.65.0.9"])
    table.apply()
    assert table.pending == {"tapdef456"}
    assert felix_routes(host) == []

    # Exists but admin-down: the kernel refuses routes, so it stays pending.
    host.add_veth_to(workload, "tapdef456", "eth0")
    table.apply()
    assert table.pending == {"tapdef456"}
    assert felix_routes(host) == []

    host.set_up("tapdef456")
    table.apply()  # what the caller does on the interface event
    assert table.pending == set()
    assert felix_routes(host) == ["10.65.0.9 dev tapdef456 scope link linkdown"]


def test_static_arp_entries_follow_the_mac(netns: MakeNS, ipr_in: MakeIPR) -> None:
    host, _ = host_and_workload(netns)
    table = RouteTable(4, ipr_in(host), prefixes=("tap",))

    def neighbours() -> str:
        return host.run(["ip", "-4", "neigh", "show", "dev", TAP]).stdout

    table.set_routes(TAP, ["10.65.0.2", "10.65.0.3"], mac=MAC)
    table.apply()
    assert f"10.65.0.2 lladdr {MAC} PERMANENT" in neighbours()
    assert f"10.65.0.3 lladdr {MAC} PERMANENT" in neighbours()

    table.set_routes(TAP, ["10.65.0.2"], mac="AA:BB:CC:00:00:09")
    table.apply()
    assert "10.65.0.2 lladdr aa:bb:cc:00:00:09 PERMANENT" in neighbours()
    assert "10.65.0.3" not in neighbours()

    table.remove_interface(TAP)
    table.apply()
    assert "PERMANENT" not in neighbours()
    assert felix_routes(host) == []


def test_ipv6_host_route(netns: MakeNS, ipr_in: MakeIPR) -> None:
    host, _ = host_and_workload(netns)
    table = RouteTable(6, ipr_in(host), prefixes=("tap",))
    # The kernel adds fe80::/64 (proto kernel) on the tap shortly after it comes up: not ours.
    deadline = time.monotonic() + 5
    while not any(r.startswith("fe80::/64") for r in all_routes(host, 6)):
        assert time.monotonic() < deadline, "no fe80::/64 route appeared"
        time.sleep(0.05)
    kernel_routes = all_routes(host, 6)

    table.set_routes(TAP, ["fd00:65::2", "fd00:65::3/128"], mac=MAC)  # no neighbours for v6
    table.apply()
    routes = felix_routes(host, 6)
    assert [r.split()[:3] for r in routes] == [
        ["fd00:65::2", "dev", TAP],
        ["fd00:65::3", "dev", TAP],
    ]
    assert "PERMANENT" not in host.run(["ip", "-6", "neigh", "show", "dev", TAP]).stdout

    table.set_routes(TAP, [])
    table.apply()
    assert felix_routes(host, 6) == []
    assert all_routes(host, 6) == kernel_routes


def conntrack_entries(ns: NetNS) -> str:
    return ns.run(["conntrack", "-L"]).stdout


def insert_flow(ns: NetNS, src: str, dst: str) -> None:
    ns.run(["conntrack", "-I", "-s", src, "-d", dst, "-p", "udp", "--sport", "1000",
            "--dport", "2000", "-t", "30"])  # fmt: skip


def test_flush_conntrack(netns: MakeNS, ipr_in: MakeIPR) -> None:
    host, _ = host_and_workload(netns)
    runner = NetnsRunner(host.name)
    insert_flow(host, "10.65.0.2", "10.65.0.3")
    insert_flow(host, "10.65.0.4", "10.65.0.2")  # the lost IP as destination
    insert_flow(host, "10.65.0.5", "10.65.0.6")  # unrelated, must survive
    assert flush_conntrack(runner, "10.65.0.2")
    assert "10.65.0.2" not in conntrack_entries(host)
    assert "10.65.0.5" in conntrack_entries(host)
    assert flush_conntrack(runner, "10.65.0.2")  # nothing left: still fine

    # A RouteTable flushes the flows of IPs an interface loses, on apply().
    table = RouteTable(4, ipr_in(host), prefixes=("tap",), conntrack_runner=runner)
    table.set_routes(TAP, ["10.65.0.5", "10.65.0.7"])
    table.apply()
    insert_flow(host, "10.65.0.7", "10.65.0.8")
    table.set_routes(TAP, ["10.65.0.7"])
    table.apply()
    assert "10.65.0.5" not in conntrack_entries(host)
    assert "10.65.0.7" in conntrack_entries(host)


# -- sysctls -----------------------------------------------------------------------------------


def test_interface_and_global_sysctls_inside_namespace(netns: MakeNS) -> None:
    host, _ = host_and_workload(netns, tap="tap.x1")  # a dot: paths must not need escaping
    writer = RunnerSysctlWriter(NetnsRunner(host.name))

    configure_interface("tap.x1", 4, writer)
    configure_interface("tap.x1", 6, writer)
    assert sysctl(host, "net/ipv4/conf/tap.x1/rp_filter") == "1"
    assert sysctl(host, "net/ipv4/conf/tap.x1/route_localnet") == "1"
    assert sysctl(host, "net/ipv4/conf/tap.x1/proxy_arp") == "1"
    assert sysctl(host, "net/ipv4/neigh/tap.x1/proxy_delay") == "0"
    assert sysctl(host, "net/ipv6/conf/tap.x1/proxy_ndp") == "1"
    with pytest.raises(OSError, match="tapmissing"):
        configure_interface("tapmissing", 4, writer)

    host.run(["sysctl", "-w", "net.ipv4.conf.default.rp_filter=0"])
    configure_global(4, writer)
    assert sysctl(host, "net.ipv4.conf.default.rp_filter") == "1"

    host.run(["sysctl", "-w", "net.ipv4.conf.all.rp_filter=2"])
    with pytest.raises(LooseRPFError):
        configure_global(4, writer)
    configure_global(4, writer, ignore_loose_rpf=True, runner=NetnsRunner(host.name))
    configure_global(6, writer)  # nothing global for IPv6


def test_proc_sysctl_writer_paths(tmp_path) -> None:
    conf = tmp_path / "net/ipv4/conf/tapabc"
    conf.mkdir(parents=True)
    (conf / "proxy_arp").write_text("00\n")  # /proc/sys has every file; the writer makes none
    writer = ProcSysctlWriter(root=tmp_path)
    with pytest.raises(FileNotFoundError):
        writer.write("net/ipv4/conf/tapgone/proxy_arp", "1")
    writer.write("net/ipv4/conf/tapabc/proxy_arp", "1")
    assert (conf / "proxy_arp").read_text() == "1\n"
    assert writer.read("net/ipv4/conf/tapabc/proxy_arp") == "1"
    with pytest.raises(ValueError, match="bad sysctl path"):
        writer.write("net/../../etc/passwd", "x")
    with pytest.raises(ValueError, match="bad interface name"):
        configure_interface("../x", 4, writer)


# -- InterfaceWatcher --------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_interface_update(self, name: str, up: bool) -> None:
        self.events.append(("update", name, up))

    def on_interface_removed(self, name: str) -> None:
        self.events.append(("removed", name))

    def on_interface_addrs(self, name: str, addrs: frozenset[str]) -> None:
        self.events.append(("addrs", name, addrs))


def wait_for(watcher: InterfaceWatcher, recorder: Recorder, event: tuple) -> None:
    deadline = time.monotonic() + 5
    while event not in recorder.events:
        assert time.monotonic() < deadline, f"no {event} in {recorder.events}"
        watcher.read_events(timeout=0.2)


def test_watcher_reports_add_up_down_delete(netns: MakeNS) -> None:
    host, workload = netns(), netns()
    recorder = Recorder()
    with InterfaceWatcher(recorder, netns=host.name) as watcher:
        listing = watcher.snapshot()
        assert set(listing) == {"lo"}
        assert listing["lo"].up  # lo reports oper-state UNKNOWN with IFF_UP|IFF_RUNNING
        assert recorder.events[0] == ("update", "lo", True)
        assert watcher.read_events() == 0  # nothing pending: returns at once

        host.add_veth_to(workload, TAP, "eth0")
        wait_for(watcher, recorder, ("update", TAP, False))

        workload.set_up("eth0")
        host.set_up(TAP)
        wait_for(watcher, recorder, ("update", TAP, True))

        host.add_addr(TAP, "10.65.0.1/32")
        wait_for(watcher, recorder, ("addrs", TAP, frozenset({"10.65.0.1/32"})))

        host.run(["ip", "link", "set", TAP, "down"])
        wait_for(watcher, recorder, ("update", TAP, False))

        host.run(["ip", "link", "del", TAP])
        wait_for(watcher, recorder, ("removed", TAP))
        assert TAP not in watcher.interfaces

        # A fresh listing agrees with what the events said, so it reports nothing new.
        count = len(recorder.events)
        assert set(watcher.snapshot()) == {"lo"}
        assert len(recorder.events) == count


def test_snapshot_listed_with_ip_agrees_with_pyroute2s_dumps(netns: MakeNS) -> None:
    """The snapshot reads `ip -j addr show`; pyroute2's dumps (its fallback) must say the same
    for every shape: up and down veths, lo (oper state UNKNOWN) up and down, IPv4 and IPv6
    addresses, a point-to-point peer address, a name with odd characters."""
    host, workload = netns(), netns()
    host.add_veth_to(workload, TAP, "eth0")
    workload.set_up("eth0")
    host.set_up(TAP)
    host.add_addr(TAP, "10.65.0.1/32")
    host.run(["ip", "-6", "addr", "add", "fd00:65::1/128", "dev", TAP, "nodad"])
    host.add_veth_to(workload, "tapdown", "eth1")
    host.run(["ip", "addr", "add", "198.18.0.1", "peer", "198.18.0.2", "dev", "tapdown"])
    host.add_veth_to(workload, "we'ird\"1", "eth2")
    with InterfaceWatcher(Recorder(), netns=host.name) as watcher:
        for lo_up in (True, False):
            host.run(["ip", "link", "set", "lo", "up" if lo_up else "down"])
            listed, dumped = watcher._listed(), watcher._dumped()
            assert listed is not None
            assert listed == dumped
            by_name = {state.name: state for state in listed.values()}
            assert by_name["lo"].up == lo_up
            assert by_name[TAP].up and not by_name["tapdown"].up
            assert {"10.65.0.1/32", "fd00:65::1/128"} <= by_name[TAP].addrs
            assert by_name["tapdown"].addrs == {"198.18.0.2/32"}
            assert "we'ird\"1" in by_name
        # `ip` failing (here: a namespace it cannot enter): the snapshot dumps with pyroute2.
        watcher._netns = "calt-does-not-exist"
        assert watcher._listed() is None
        assert {TAP, "tapdown", "lo"} <= set(watcher.snapshot())


# -- packets -----------------------------------------------------------------------------------


def ping(ns: NetNS, ip: str) -> bool:
    proc = ns.run(["ping", "-c1", "-W1", ip], check=False)
    return proc.returncode == 0


def test_ping_workload_only_after_apply(netns: MakeNS, ipr_in: MakeIPR) -> None:
    host, workload = host_and_workload(netns)
    workload.add_addr("eth0", "10.65.0.2/32")
    workload.run(["ip", "route", "add", "default", "dev", "eth0"])  # everything via proxy ARP
    host.add_addr("lo", "10.65.255.1/32")  # the host's own address, the ping's source
    configure_interface(TAP, 4, RunnerSysctlWriter(NetnsRunner(host.name)))

    assert not ping(host, "10.65.0.2")

    table = RouteTable(4, ipr_in(host), prefixes=("tap",))
    table.set_routes(TAP, ["10.65.0.2"])
    table.apply()
    assert ping(host, "10.65.0.2")

    table.remove_interface(TAP)
    table.apply()
    assert not ping(host, "10.65.0.2")


def test_missing_namespace_is_an_error_not_created() -> None:
    """flags=0 (as the fixtures and InterfaceWatcher use) never creates a namespace."""
    with pytest.raises(FileNotFoundError):
        IPRoute(netns="calt-does-not-exist", flags=0).close()
    with pytest.raises(FileNotFoundError):
        InterfaceWatcher(Recorder(), netns="calt-does-not-exist")
    assert (
        "calt-does-not-exist"
        not in subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=True
        ).stdout
    )
