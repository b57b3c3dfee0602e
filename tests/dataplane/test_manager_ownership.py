"""Who owns an interface's kernel state when endpoints disagree (issue 12, items 3 and 6).

The manager is driven with stand-ins that keep a model of what it asked for (chains per table,
routes per interface), so each test asserts on the resulting state, not on call sequences.
The same behaviours are proven with packets in tests/e2e/test_hardening.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from calico.common.datamodel_v1 import HostEndpointKey, WorkloadEndpointKey
from calico.common.resources import HostEndpoint, WorkloadEndpoint
from calico.felix.calc import messages as m
from calico.felix.dataplane import manager as manager_module
from calico.felix.dataplane import names
from calico.felix.dataplane.manager import DataplaneManager, KernelTables
from calico.felix.dataplane.rendering import RenderConfig


class ChainModel:
    """An IptablesTable stand-in: the chains and hooks asked for."""

    def __init__(self) -> None:
        self.chains: dict[str, tuple[str, ...]] = {}
        self.hooks: dict[str, str] = {}

    def set_chain(self, name: str, rules: Iterable[str]) -> None:
        self.chains[name] = tuple(rules)

    def remove_chain(self, name: str) -> None:
        self.chains.pop(name, None)

    def set_hook(self, kernel_chain: str, felix_chain: str) -> None:
        self.hooks[kernel_chain] = felix_chain

    def apply(self, force_refresh: bool = False) -> bool:
        return False

    @property
    def failed_chains(self) -> dict[str, str]:
        return {}


class RouteModel:
    """A RouteTable stand-in: interface -> (IPs, MAC) asked for."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[frozenset[str], str | None]] = {}

    def set_routes(self, name: str, ips: Iterable[str], mac: str | None = None) -> None:
        self.routes[name] = (frozenset(ips), mac)

    def remove_interface(self, name: str) -> None:
        self.routes.pop(name, None)

    def apply(self, full: bool = False) -> None:
        pass


class IpsetModel:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def make() -> tuple[DataplaneManager, ChainModel, RouteModel]:
    filter_table, routes = ChainModel(), RouteModel()
    kernel = KernelTables(
        (4,),
        lambda v, t: filter_table if t == names.FILTER else ChainModel(),  # type: ignore[arg-type,return-value]
        lambda v: IpsetModel(),  # type: ignore[arg-type,return-value]
        lambda v: routes,  # type: ignore[arg-type,return-value]
    )
    manager = DataplaneManager(RenderConfig(interface_prefixes=("tap",)), kernel, None)
    manager.on_message(m.InSync())
    return manager, filter_table, routes


def wep(workload: str, name: str, ip: str, state: str = "active") -> m.WorkloadEndpointUpdate:
    key = WorkloadEndpointKey("h", "openstack", workload, "port1")
    endpoint = WorkloadEndpoint(state=state, name=name, mac="aa:bb:cc:dd:ee:01",
                                ipv4_nets=(f"{ip}/32",))  # fmt: skip
    return m.WorkloadEndpointUpdate(key, endpoint, ())


TO_TAP1, FROM_TAP1 = "felix-to-1", "felix-from-1"


def test_a_re_keyed_endpoint_keeps_its_chains_and_routes() -> None:
    """The Neutron resync after a device_id change: write the new key, delete the old one."""
    manager, table, routes = make()
    old, new = wep("vm-old", "tap1", "10.65.0.2"), wep("vm-new", "tap1", "10.65.0.2")
    manager.on_message(old)
    manager.apply()
    assert {TO_TAP1, FROM_TAP1} <= table.chains.keys()
    assert routes.routes["tap1"] == (frozenset({"10.65.0.2"}), "aa:bb:cc:dd:ee:01")
    manager.on_message(new)
    manager.apply()
    manager.on_message(m.WorkloadEndpointRemove(old.id))
    manager.apply()
    assert {TO_TAP1, FROM_TAP1} <= table.chains.keys()
    assert "vm-new" in " ".join(table.chains[TO_TAP1])  # the comment names the live endpoint
    assert routes.routes["tap1"] == (frozenset({"10.65.0.2"}), "aa:bb:cc:dd:ee:01")
    assert any("-i tap1" in rule for rule in table.chains[names.CHAIN_FROM_ENDPOINT])


def test_deleting_a_stale_duplicate_changes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    manager, table, routes = make()
    first, stale = wep("vm-a", "tap1", "10.65.0.2"), wep("vm-b", "tap1", "10.65.0.2")
    manager.on_message(first)
    manager.on_message(stale)
    manager.apply()
    # Logged as a conflict, with both keys; the first in key order owns the interface.
    assert "Conflict" in caplog.text and "vm-a" in caplog.text and "vm-b" in caplog.text
    statuses = manager.endpoint_statuses(apply_failed=False)
    manager.on_interface_update("tap1", True)
    manager.apply()
    statuses = manager.endpoint_statuses(apply_failed=False)
    assert statuses[first.id] == "up" and statuses[stale.id] == "error"
    before = dict(table.chains), dict(routes.routes)
    manager.on_message(m.WorkloadEndpointRemove(stale.id))
    manager.apply()
    assert (dict(table.chains), dict(routes.routes)) == before


def test_the_owner_is_the_same_whatever_the_arrival_order() -> None:
    results = []
    for order in ((0, 1), (1, 0)):
        manager, table, _ = make()
        updates = [wep("vm-a", "tap1", "10.65.0.2"), wep("vm-b", "tap1", "10.65.0.3")]
        for i in order:
            manager.on_message(updates[i])
        manager.apply()
        results.append(dict(table.chains))
    assert results[0] == results[1]


def test_an_ip_claimed_twice_is_routed_once_and_moves_when_its_owner_goes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager, _, routes = make()
    a, b = wep("vm-a", "tap1", "10.65.0.2"), wep("vm-b", "tap2", "10.65.0.2")
    manager.on_message(b)
    manager.apply()
    manager.on_message(a)
    manager.apply()
    assert routes.routes["tap1"][0] == {"10.65.0.2"}
    assert routes.routes["tap2"][0] == frozenset()
    assert "claim IP 10.65.0.2" in caplog.text
    manager.on_message(m.WorkloadEndpointRemove(a.id))
    manager.apply()
    assert "tap1" not in routes.routes
    assert routes.routes["tap2"][0] == {"10.65.0.2"}


def test_a_host_interface_name_from_the_kernel_cannot_break_the_rules(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 12 item 3: a quote (or "+", iptables' wildcard) in a host interface's name."""
    manager, table, _ = make()
    hep = HostEndpoint(expected_ipv4_addrs=("198.18.9.1",))
    manager.on_message(m.HostEndpointUpdate(HostEndpointKey("h", "svc"), hep, (), ()))
    for bad in ('eth"1', "eth+", "e\nx"):
        manager.on_interface_addrs(bad, frozenset({"198.18.9.1/24"}))
    manager.on_interface_addrs("eth.100", frozenset({"198.18.9.1/24"}))
    manager.apply()
    manager.apply()
    rules = " ".join(r for chain in table.chains.values() for r in chain)
    assert "eth.100" in rules and '"1' not in rules and "eth+" not in rules
    assert caplog.text.count("cannot write into a rule") == 3  # once per name
    manager.on_message(wep("vm-a", "tap1", "10.65.0.2"))  # later changes still apply
    manager.apply()
    assert TO_TAP1 in table.chains


def test_a_renderer_failure_costs_one_object(monkeypatch: pytest.MonkeyPatch) -> None:
    manager, table, _ = make()
    real = manager_module.r.workload_endpoint_chains

    def flaky(update: m.WorkloadEndpointUpdate, *args: Any) -> Any:
        if update.endpoint.name == "tap1":
            raise RuntimeError("a bug")
        return real(update, *args)

    monkeypatch.setattr(manager_module.r, "workload_endpoint_chains", flaky)
    manager.on_message(wep("vm-a", "tap1", "10.65.0.2"))
    manager.on_message(wep("vm-b", "tap2", "10.65.0.3"))
    manager.apply()
    assert TO_TAP1 not in table.chains  # missing: the dispatch's jump gets a drop stub
    assert "felix-to-2" in table.chains
