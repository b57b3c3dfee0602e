"""ProxyNdpTable against real kernels, inside test namespaces only, and the manager's use of it.

Every command runs through ``ip netns exec`` in a namespace the ``netns`` fixture creates and
deletes: nothing here touches the root namespace. Addresses come from fd00:65::/64.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator

import pytest
from pyroute2 import IPRoute

from calico.common.datamodel_v1 import WorkloadEndpointKey
from calico.common.resources import WorkloadEndpoint
from calico.felix.calc import messages as m
from calico.felix.dataplane.manager import DataplaneManager, KernelTables
from calico.felix.dataplane.rendering import RenderConfig
from calico.felix.kernel.commands import NetnsRunner
from calico.felix.kernel.ipsets import IpsetTable
from calico.felix.kernel.iptables import IptablesTable
from calico.felix.kernel.neighbours import ProxyNdpTable
from calico.felix.kernel.routes import RouteTable
from calico.felix.kernel.sysctls import RunnerSysctlWriter
from calico.lab.netns import NetNS

TAP, TAP2 = "tapabc123", "tapdef456"
GW, GW2 = "fd00:65::1", "fd00:65::fe"

MakeNS = Callable[[], NetNS]


def host_with(netns: MakeNS, *interfaces: str) -> tuple[NetNS, NetNS]:
    """A "host" namespace with `interfaces` (up), each veth-joined to a "workload" namespace."""
    host, workload = netns(), netns()
    for number, name in enumerate(interfaces):
        host.add_veth_to(workload, name, f"eth{number}")
        host.set_up(name)
        workload.set_up(f"eth{number}")
    return host, workload


def proxies(ns: NetNS) -> set[tuple[str, str]]:
    """(interface, address) of every IPv6 proxy NDP entry in `ns`."""
    out = ns.run(["ip", "-6", "-j", "neigh", "show", "proxy"]).stdout
    return {(entry["dev"], entry["dst"]) for entry in json.loads(out or "[]")}


class CountingRunner(NetnsRunner):
    """A NetnsRunner that records each command, and fails the ones `fail` matches."""

    def __init__(self, ns_name: str) -> None:
        super().__init__(ns_name)
        self.commands: list[list[str]] = []
        self.fail: Callable[[list[str]], bool] = lambda argv: False

    def run(self, argv: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
        self.commands.append(argv)
        if self.fail(argv):
            return subprocess.CompletedProcess(argv, 2, "", "RTNETLINK answers: Invalid argument")
        return super().run(argv, input)


def test_added_moved_with_the_gateway_and_removed(netns: MakeNS) -> None:
    host, _ = host_with(netns, TAP)
    table = ProxyNdpTable(NetnsRunner(host.name), prefixes=("tap",))
    table.set_proxies(TAP, [GW])
    table.apply()
    assert proxies(host) == {(TAP, GW)}
    assert (table.pending, table.errors) == (set(), {})
    table.apply()  # nothing to do, nothing duplicated
    table.apply(full=True)
    assert proxies(host) == {(TAP, GW)}

    table.set_proxies(TAP, ["FD00:65:0::FE"])  # the gateway changes (any spelling)
    table.apply()
    assert proxies(host) == {(TAP, GW2)}
    assert table.desired(TAP) == {GW2}

    table.remove_interface(TAP)  # the endpoint goes
    table.apply()
    assert proxies(host) == set()
    table.set_proxies(TAP, [GW])
    table.set_proxies(TAP, [])  # no gateway: nothing
    table.apply()
    assert proxies(host) == set()


def test_the_refresh_repairs_both_ways_and_only_it_reads(netns: MakeNS) -> None:
    host, _ = host_with(netns, TAP, TAP2)
    runner = CountingRunner(host.name)
    table = ProxyNdpTable(runner, prefixes=("tap",))
    table.set_proxies(TAP, [GW])
    table.set_proxies(TAP2, [GW2])
    table.apply()
    assert proxies(host) == {(TAP, GW), (TAP2, GW2)}

    # Another tool deletes one of our entries and adds one to our interface: a normal apply
    # trusts the record (and runs nothing at all); the refresh lists the kernel and repairs.
    host.run(["ip", "-6", "neigh", "del", "proxy", GW, "dev", TAP])
    host.run(["ip", "-6", "neigh", "add", "proxy", "fd00:65::99", "dev", TAP2])
    runner.commands.clear()
    table.apply()
    assert runner.commands == []
    assert proxies(host) == {(TAP2, GW2), (TAP2, "fd00:65::99")}
    table.apply(full=True)
    assert proxies(host) == {(TAP, GW), (TAP2, GW2)}
    # A refresh that finds nothing wrong runs the listing only.
    runner.commands.clear()
    table.apply(full=True)
    assert runner.commands == [["ip", "-6", "-j", "neigh", "show", "proxy"]]


def test_a_previous_runs_entry_goes_at_the_first_apply(netns: MakeNS) -> None:
    host, _ = host_with(netns, TAP, TAP2)
    host.run(["ip", "-6", "neigh", "add", "proxy", GW2, "dev", TAP])  # a gateway since moved
    host.run(["ip", "-6", "neigh", "add", "proxy", GW, "dev", TAP2])  # an endpoint since gone
    table = ProxyNdpTable(NetnsRunner(host.name), prefixes=("tap",))
    table.set_proxies(TAP, [GW])
    table.apply()
    assert proxies(host) == {(TAP, GW)}


def test_other_interfaces_entries_are_never_touched(netns: MakeNS) -> None:
    host, _ = host_with(netns, TAP, "eth1", "vtap1")
    theirs = {("eth1", GW), ("eth1", "fd00:65::7"), ("vtap1", GW)}
    for dev, address in theirs:
        host.run(["ip", "-6", "neigh", "add", "proxy", address, "dev", dev])
    table = ProxyNdpTable(NetnsRunner(host.name), prefixes=("tap",))
    table.set_proxies(TAP, [GW])
    table.apply()
    assert proxies(host) == theirs | {(TAP, GW)}
    table.apply(full=True)
    table.remove_interface(TAP)
    table.apply()
    table.apply(full=True)
    assert proxies(host) == theirs
    with pytest.raises(ValueError, match="does not start with"):
        table.set_proxies("eth1", [GW])
    for bad in ("10.65.0.1", "fe80::1%eth0", "fd00:65::/64"):
        with pytest.raises(ValueError):
            table.set_proxies(TAP, [bad])


def test_a_missing_interface_waits_and_a_down_one_gets_its_entry_back(netns: MakeNS) -> None:
    host, workload = netns(), netns()
    table = ProxyNdpTable(NetnsRunner(host.name), prefixes=("tap",))
    table.set_proxies(TAP, [GW])
    table.apply()
    assert table.pending == {TAP} and table.errors == {}
    assert proxies(host) == set()

    host.add_veth_to(workload, TAP, "eth0")  # the VM's TAP appears: tried again at the next apply
    host.set_up(TAP)
    table.apply()
    assert table.pending == set()
    assert proxies(host) == {(TAP, GW)}

    # The kernel drops an interface's proxy entries when it goes down; the caller sets the
    # interface's proxies again on the link event, and they come back.
    host.run(["ip", "link", "set", TAP, "down"])
    assert proxies(host) == set()
    host.set_up(TAP)
    table.set_proxies(TAP, [GW])
    table.apply()
    assert proxies(host) == {(TAP, GW)}

    host.run(["ip", "link", "del", TAP])  # gone, its entries with it: removing it is no error
    table.remove_interface(TAP)
    table.apply()
    assert (table.pending, table.errors) == (set(), {})


def test_a_failure_is_logged_and_retried_and_costs_one_interface(
    netns: MakeNS, caplog: pytest.LogCaptureFixture
) -> None:
    host, _ = host_with(netns, TAP, TAP2)
    runner = CountingRunner(host.name)
    runner.fail = lambda argv: "replace" in argv and TAP in argv
    table = ProxyNdpTable(runner, prefixes=("tap",))
    table.set_proxies(TAP, [GW])
    table.set_proxies(TAP2, [GW2])
    table.apply()  # does not raise
    assert set(table.errors) == {TAP} and "Invalid argument" in table.errors[TAP]
    assert f"Proxy NDP on '{TAP}'" in caplog.text
    assert proxies(host) == {(TAP2, GW2)}
    runner.fail = lambda argv: False
    table.apply()  # retried without being set again
    assert table.errors == {}
    assert proxies(host) == {(TAP, GW), (TAP2, GW2)}

    # A listing that fails: the apply writes what it can and lists again next time.
    runner.fail = lambda argv: "show" in argv
    table.set_proxies(TAP, [GW2])
    table.apply(full=True)
    assert proxies(host) == {(TAP, GW2), (TAP2, GW2)}
    runner.fail = lambda argv: False
    host.run(["ip", "-6", "neigh", "add", "proxy", GW, "dev", TAP2])
    table.apply()
    assert proxies(host) == {(TAP, GW2), (TAP2, GW2)}


# -- the manager ---------------------------------------------------------------------------------


@pytest.fixture
def ipr_in(netns: MakeNS) -> Iterator[Callable[[NetNS], IPRoute]]:
    """pyroute2 IPRoute bound to a test namespace (flags=0: never creates one); closed before
    the namespaces go."""
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


def workload(gateway: str | None, state: str = "active") -> m.WorkloadEndpointUpdate:
    key = WorkloadEndpointKey("h", "openstack", "vm1", "port1")
    endpoint = WorkloadEndpoint(state=state, name=TAP, mac="aa:bb:cc:00:00:02",
                                ipv6_nets=("fd00:65::2/128",), ipv6_gateway=gateway)  # fmt: skip
    return m.WorkloadEndpointUpdate(key, endpoint, ())


def test_the_manager_proxies_the_gateway_of_the_endpoint_and_removes_it_with_it(
    netns: MakeNS, ipr_in: Callable[[NetNS], IPRoute]
) -> None:
    """The real drivers in a namespace: the entry follows the endpoint's gateway, goes when the
    endpoint is inactive or removed, and one of ours left by a previous run is swept."""
    host, _ = host_with(netns, TAP, TAP2)
    host.run(["ip", "-6", "neigh", "add", "proxy", GW, "dev", TAP2])  # a previous run's
    runner = NetnsRunner(host.name)
    ipr = ipr_in(host)
    kernel = KernelTables(
        (4, 6),
        lambda v, t: IptablesTable(v, t, runner),
        lambda v: IpsetTable(v, runner),
        lambda v: RouteTable(v, ipr, ("tap",), conntrack_runner=runner),
        lambda: ProxyNdpTable(runner, ("tap",)),
    )
    manager = DataplaneManager(
        RenderConfig(interface_prefixes=("tap",)), kernel, RunnerSysctlWriter(runner)
    )
    manager.on_interface_update(TAP, True)
    manager.on_message(workload(GW))
    manager.apply()
    assert proxies(host) == {(TAP2, GW)}  # nothing before in-sync
    manager.on_message(m.InSync())
    manager.apply()
    assert proxies(host) == {(TAP, GW)}
    assert host.run(["sysctl", "-n", f"net.ipv6.conf.{TAP}.proxy_ndp"]).stdout.strip() == "1"
    assert manager.endpoint_statuses(apply_failed=False)[workload(GW).id] == "up"

    manager.on_message(workload(GW2))
    manager.apply()
    assert proxies(host) == {(TAP, GW2)}
    manager.on_message(workload(GW2, state="inactive"))
    manager.apply()
    assert proxies(host) == set()
    manager.on_message(workload(GW2))
    manager.apply()
    assert proxies(host) == {(TAP, GW2)}

    # Another tool deletes it: the refresh puts it back.
    host.run(["ip", "-6", "neigh", "del", "proxy", GW2, "dev", TAP])
    manager.apply(force_refresh=True)
    assert proxies(host) == {(TAP, GW2)}

    manager.on_message(m.WorkloadEndpointRemove(workload(GW2).id))
    manager.apply()
    assert proxies(host) == set()
