"""Who owns an interface's kernel state when endpoints disagree (issue 12, items 3 and 6).

The manager drives the real table drivers on a fake kernel that keeps a model (kernel_model.py:
it parses the iptables-restore and ipset restore input it is given), so each test asserts on the
resulting kernel state, not on call sequences. The same behaviours are proven with packets in
tests/e2e/test_hardening.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from kernel_model import FakeKernel

from calico.common.datamodel_v1 import HostEndpointKey, WorkloadEndpointKey
from calico.common.resources import HostEndpoint, WorkloadEndpoint
from calico.felix.calc import messages as m
from calico.felix.dataplane import manager as manager_module
from calico.felix.dataplane import names
from calico.felix.dataplane.manager import DataplaneManager, KernelTables
from calico.felix.dataplane.rendering import RenderConfig
from calico.felix.kernel.ipsets import IpsetTable
from calico.felix.kernel.iptables import STUB_RULES, IptablesTable
from calico.felix.kernel.neighbours import ProxyNdpTable
from calico.felix.kernel.routes import RouteTable

MAC = "aa:bb:cc:dd:ee:01"


class Host:
    """A manager on a fake kernel with the interfaces tap1 and tap2, in sync."""

    def __init__(self) -> None:
        self.kernel = FakeKernel()
        kernel = self.kernel
        tables = KernelTables(
            (4,),
            lambda v, t: IptablesTable(v, t, kernel),
            lambda v: IpsetTable(v, kernel),
            lambda v: RouteTable(v, kernel.netlink, ("tap",)),
            lambda: ProxyNdpTable(kernel, ("tap",)),
        )
        config = RenderConfig(interface_prefixes=("tap",))
        self.manager = DataplaneManager(config, tables, kernel.sysctls)
        self.manager.on_message(m.InSync())
        self.index = {name: kernel.add_link(name) for name in ("tap1", "tap2")}

    @property
    def chains(self) -> dict[str, list[str]]:
        return self.kernel.chains(names.FILTER)

    def routes(self) -> dict[str, set[str]]:
        """interface -> the IPs routed to it, and for each a static ARP entry to MAC."""
        found: dict[str, set[str]] = {}
        for name, index in self.index.items():
            ips = {str(n.network_address) for n, (oif, _) in self.kernel.routes.items()
                   if oif == index}  # fmt: skip
            arp = {ip for (i, ip), mac in self.kernel.neighbours.items() if i == index}
            assert arp == ips and set(self.kernel.neighbours.values()) <= {MAC}
            if ips:
                found[name] = ips
        return found


def wep(workload: str, name: str, ip: str, state: str = "active") -> m.WorkloadEndpointUpdate:
    key = WorkloadEndpointKey("h", "openstack", workload, "port1")
    endpoint = WorkloadEndpoint(state=state, name=name, mac=MAC, ipv4_nets=(f"{ip}/32",))
    return m.WorkloadEndpointUpdate(key, endpoint, ())


TO_TAP1, FROM_TAP1 = "felix-to-1", "felix-from-1"


def test_a_re_keyed_endpoint_keeps_its_chains_and_routes() -> None:
    """The Neutron resync after a device_id change: write the new key, delete the old one."""
    host = Host()
    manager, kernel = host.manager, host.kernel
    old, new = wep("vm-old", "tap1", "10.65.0.2"), wep("vm-new", "tap1", "10.65.0.2")
    manager.on_message(old)
    manager.apply()
    assert {TO_TAP1, FROM_TAP1} <= host.chains.keys()
    assert host.routes() == {"tap1": {"10.65.0.2"}}
    manager.on_message(new)
    manager.apply()
    routes_written = [r for r in kernel.netlink.requests if r.startswith(("route", "neigh"))]
    manager.on_message(m.WorkloadEndpointRemove(old.id))
    manager.apply()
    assert {TO_TAP1, FROM_TAP1} <= host.chains.keys()
    assert "vm-new" in " ".join(host.chains[TO_TAP1])  # the comment names the live endpoint
    assert "vm-old" not in " ".join(host.chains[TO_TAP1])
    assert host.routes() == {"tap1": {"10.65.0.2"}}
    # Throughout: the route and ARP entry were written once, never deleted.
    assert (
        [r for r in kernel.netlink.requests if r.startswith(("route", "neigh"))]
        == (routes_written)
        == ["neigh replace", "route replace"]
    )
    assert "-i tap1 -g felix-from-1" in host.chains[names.CHAIN_FROM_ENDPOINT]


def test_deleting_a_stale_duplicate_changes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    host = Host()
    manager, kernel = host.manager, host.kernel
    first, stale = wep("vm-a", "tap1", "10.65.0.2"), wep("vm-b", "tap1", "10.65.0.2")
    manager.on_message(first)
    manager.on_message(stale)
    manager.apply()
    # Logged as a conflict, with both keys; the first in key order owns the interface.
    assert "Conflict" in caplog.text and "vm-a" in caplog.text and "vm-b" in caplog.text
    assert "vm-a" in " ".join(host.chains[TO_TAP1])
    manager.on_interface_update("tap1", True)
    manager.apply()
    statuses = manager.endpoint_statuses(apply_failed=False)
    assert statuses[first.id] == "up" and statuses[stale.id] == "error"
    before, commands = kernel.snapshot(), len(kernel.commands)
    manager.on_message(m.WorkloadEndpointRemove(stale.id))
    manager.apply()
    assert kernel.snapshot() == before
    assert kernel.commands[commands:] == []  # not even rewritten with the same content
    assert manager.endpoint_statuses(apply_failed=False) == {first.id: "up"}


def test_the_owner_is_the_same_whatever_the_arrival_order() -> None:
    results = []
    for order in ((0, 1), (1, 0)):
        host = Host()
        updates = [wep("vm-a", "tap1", "10.65.0.2"), wep("vm-b", "tap1", "10.65.0.3")]
        for i in order:
            host.manager.on_message(updates[i])
        host.manager.apply()
        results.append(host.kernel.snapshot())
    assert results[0] == results[1]
    assert "vm-a" in " ".join(results[0]["chains"][(4, names.FILTER)][TO_TAP1])  # type: ignore[index]


def test_an_ip_claimed_twice_is_routed_once_and_moves_when_its_owner_goes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    host = Host()
    manager = host.manager
    a, b = wep("vm-a", "tap1", "10.65.0.2"), wep("vm-b", "tap2", "10.65.0.2")
    manager.on_message(b)
    manager.apply()
    assert host.routes() == {"tap2": {"10.65.0.2"}}
    manager.on_message(a)
    manager.apply()
    assert host.routes() == {"tap1": {"10.65.0.2"}}
    assert "claim IP 10.65.0.2" in caplog.text
    manager.on_message(m.WorkloadEndpointRemove(a.id))
    manager.apply()
    assert host.routes() == {"tap2": {"10.65.0.2"}}


def test_a_host_interface_name_from_the_kernel_cannot_break_the_rules(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 12 item 3: a quote (or "+", iptables' wildcard) in a host interface's name."""
    host = Host()
    manager = host.manager
    hep = HostEndpoint(expected_ipv4_addrs=("198.18.9.1",))
    manager.on_message(m.HostEndpointUpdate(HostEndpointKey("h", "svc"), hep, (), ()))
    for bad in ('eth"1', "eth+", "e\nx"):
        manager.on_interface_addrs(bad, frozenset({"198.18.9.1/24"}))
    manager.on_interface_addrs("eth.100", frozenset({"198.18.9.1/24"}))
    manager.apply()
    manager.apply()
    rules = " ".join(r for chain in host.chains.values() for r in chain)
    assert "-i eth.100 -g felix-from-eth.100" in host.chains[names.CHAIN_FROM_HOST_IF]
    assert '"1' not in rules and "eth+" not in rules and "e\nx" not in rules
    assert caplog.text.count("cannot write into a rule") == 3  # once per name
    manager.on_message(wep("vm-a", "tap1", "10.65.0.2"))  # later changes still apply
    manager.apply()
    assert TO_TAP1 in host.chains


def test_a_renderer_failure_costs_one_object(monkeypatch: pytest.MonkeyPatch) -> None:
    host = Host()
    real = manager_module.r.workload_endpoint_chains

    def flaky(update: m.WorkloadEndpointUpdate, *args: Any) -> Any:
        if update.endpoint.name == "tap1":
            raise RuntimeError("a bug")
        return real(update, *args)

    monkeypatch.setattr(manager_module.r, "workload_endpoint_chains", flaky)
    host.manager.on_message(wep("vm-a", "tap1", "10.65.0.2"))
    host.manager.on_message(wep("vm-b", "tap2", "10.65.0.3"))
    host.manager.apply()
    # Its chains are missing, so the dispatch's jump to them lands on a drop stub: fail closed.
    assert "-o tap1 -g felix-to-1" in host.chains[names.CHAIN_TO_ENDPOINT]
    assert tuple(host.chains[TO_TAP1]) == STUB_RULES
    assert tuple(host.chains["felix-to-2"]) != STUB_RULES and host.chains["felix-to-2"]
