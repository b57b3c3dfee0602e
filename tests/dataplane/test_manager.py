"""DataplaneManager bookkeeping with recording stand-ins for the kernel drivers (the drivers
themselves are tested against the real kernel in the other files here, and the whole path by
tests/e2e)."""

from __future__ import annotations

from typing import Any

from calico.common.datamodel_v1 import HostEndpointKey, IPPoolKey, WorkloadEndpointKey
from calico.common.resources import HostEndpoint, IPPool, Labels, NatMapping, WorkloadEndpoint
from calico.felix.calc import messages as m
from calico.felix.dataplane import names
from calico.felix.dataplane.manager import DataplaneManager, KernelTables
from calico.felix.dataplane.rendering import RenderConfig


class Recorder:
    """Stands in for IptablesTable, IpsetTable and RouteTable: records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> None:
            self.calls.append((name, args))

        return record

    def chains_set(self) -> list[str]:
        return [args[0] for name, args in self.calls if name == "set_chain"]


def make() -> tuple[DataplaneManager, KernelTables]:
    kernel = KernelTables((4,), lambda v, t: Recorder(), lambda v: Recorder(), lambda v: Recorder())  # type: ignore[arg-type,return-value]
    manager = DataplaneManager(RenderConfig(interface_prefixes=("tap",)), kernel, None)
    return manager, kernel


def endpoint(name: str, labels: dict[str, str], nat: bool = False) -> m.WorkloadEndpointUpdate:
    key = WorkloadEndpointKey("h", "openstack", "w", name)
    ep = WorkloadEndpoint(
        state="active",
        name=name,
        ipv4_nets=("10.65.0.2/32",),
        labels=Labels(labels),
        ipv4_nat=(NatMapping("10.65.0.2", "198.18.1.1"),) if nat else (),
    )
    return m.WorkloadEndpointUpdate(key, ep, ())


def test_nothing_before_in_sync_then_everything() -> None:
    manager, kernel = make()
    manager.on_message(endpoint("tap1", {}))
    manager.apply()
    assert all(not t.calls for t in kernel.iptables.values())  # type: ignore[attr-defined]
    manager.on_message(m.InSync())
    manager.apply()
    filter_table = kernel.iptables[(4, names.FILTER)]
    assert names.CHAIN_FORWARD in filter_table.chains_set()  # type: ignore[attr-defined]
    assert names.CHAIN_FROM_ENDPOINT in filter_table.chains_set()  # type: ignore[attr-defined]


def test_global_chains_are_rerendered_only_when_their_inputs_change() -> None:
    manager, kernel = make()
    manager.on_message(m.InSync())
    manager.on_message(endpoint("tap1", {"a": "1"}))
    manager.apply()
    filter_table, nat_table = kernel.iptables[(4, names.FILTER)], kernel.iptables[(4, names.NAT)]
    filter_table.calls.clear()  # type: ignore[attr-defined]
    nat_table.calls.clear()  # type: ignore[attr-defined]

    manager.on_message(endpoint("tap1", {"a": "2"}))  # a label change: its own chains only
    manager.apply()
    written = filter_table.chains_set()  # type: ignore[attr-defined]
    assert written and all(name.startswith(("felix-to-", "felix-from-")) for name in written)
    assert nat_table.chains_set() == []  # type: ignore[attr-defined]

    manager.on_message(endpoint("tap2", {}))  # a new interface: the dispatch trees change
    manager.apply()
    assert names.CHAIN_FROM_ENDPOINT in filter_table.chains_set()  # type: ignore[attr-defined]

    manager.on_message(endpoint("tap2", {}, nat=True))  # a floating IP: the NAT chains change
    manager.apply()
    assert names.CHAIN_FIP_DNAT in nat_table.chains_set()  # type: ignore[attr-defined]

    ipsets = kernel.ipsets[4]
    ipsets.calls.clear()  # type: ignore[attr-defined]
    pool = IPPoolKey(4, "10.65.0.0-16")
    manager.on_message(m.IPPoolUpdate(pool, IPPool("10.65.0.0/16", masquerade=True)))
    manager.apply()
    replaced = [args for name, args in ipsets.calls if name == "replace_named"]  # type: ignore[attr-defined]
    assert [a[0] for a in replaced] == [names.IPSET_ALL_POOLS, names.IPSET_MASQ_POOLS]
    assert names.CHAIN_POSTROUTING in nat_table.chains_set()  # type: ignore[attr-defined]


def test_host_endpoint_by_expected_ip_matches_the_interface_holding_it() -> None:
    """The watcher reports addresses as "ip/prefixlen"; expected IPs are plain. A workload
    interface never becomes a host endpoint by address (§2.3)."""
    manager, kernel = make()
    manager.on_message(m.InSync())
    hep = HostEndpoint(expected_ipv4_addrs=("198.18.9.1",), expected_ipv6_addrs=("fd00:65::9",))
    manager.on_message(m.HostEndpointUpdate(HostEndpointKey("h", "svc"), hep, (), ()))
    manager.on_interface_addrs("tapx", frozenset({"198.18.9.1/32"}))  # a workload's: skipped
    manager.on_interface_addrs("eth1", frozenset({"198.18.9.1/24", "10.0.0.1/8"}))
    manager.on_interface_addrs("eth2", frozenset({"fd00:65:0:0::9/64"}))  # any spelling
    manager.on_interface_addrs("eth3", frozenset({"198.18.9.2/24"}))
    manager.apply()
    chains = kernel.iptables[(4, names.FILTER)].chains_set()  # type: ignore[attr-defined]
    assert {"felix-from-eth1", "felix-from-eth2"} <= set(chains)
    assert not {"felix-from-eth3", "felix-from-tapx"} & set(chains)

    manager.on_interface_addrs("eth1", frozenset({"10.0.0.1/8"}))  # the address moves away
    manager.on_interface_addrs("eth3", frozenset({"198.18.9.1/32"}))
    manager.apply()
    removed = [a[0] for n, a in kernel.iptables[(4, names.FILTER)].calls if n == "remove_chain"]  # type: ignore[attr-defined]
    assert "felix-from-eth1" in removed
    assert "felix-from-eth3" in kernel.iptables[(4, names.FILTER)].chains_set()  # type: ignore[attr-defined]


def test_routes_are_set_again_only_when_their_inputs_change() -> None:
    manager, kernel = make()
    routes = kernel.routes[4]
    manager.on_message(m.InSync())
    manager.on_message(endpoint("tap1", {"a": "1"}))
    manager.apply()

    def route_calls() -> list[str]:
        return [name for name, _ in routes.calls if name in ("set_routes", "remove_interface")]  # type: ignore[attr-defined]

    assert route_calls() == ["set_routes"]
    routes.calls.clear()  # type: ignore[attr-defined]
    manager.on_message(endpoint("tap1", {"a": "2"}))  # labels (or policies): chains only
    manager.on_message(endpoint("tap1", {"a": "2"}))  # re-sent unchanged: nothing at all
    manager.apply()
    assert route_calls() == []
    manager.on_interface_update("tap1", True)  # an interface event: routes set again
    manager.apply()
    assert route_calls() == ["set_routes"]
