"""DataplaneManager driving the real table drivers (IptablesTable, IpsetTable, RouteTable,
ProxyNdpTable) on a fake kernel that keeps a model (kernel_model.py): the fake parses the
iptables-restore and ipset restore input it is given and refuses what the real tools refuse,
so every test asserts on the resulting kernel state (chains and their rules, hooks, sets and
members, routes, proxy NDP entries) and fails if the manager asks for something the kernel
would not accept. The drivers are tested against the real kernel in the other files here, and
the whole path with packets by tests/e2e.
"""

from __future__ import annotations

import errno
import ipaddress
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from kernel_model import FakeKernel, declared_chains, hook_targets

from calico.common.datamodel_v1 import HostEndpointKey, IPPoolKey, PolicyKey, WorkloadEndpointKey
from calico.common.resources import HostEndpoint, IPPool, Labels, NatMapping, WorkloadEndpoint
from calico.felix.calc import messages as m
from calico.felix.dataplane import manager as manager_module
from calico.felix.dataplane import names
from calico.felix.dataplane.manager import DataplaneManager, KernelTables
from calico.felix.dataplane.rendering import RenderConfig
from calico.felix.kernel.ipsets import IpsetTable
from calico.felix.kernel.iptables import FAILED_RULES, STUB_RULES, IptablesTable
from calico.felix.kernel.neighbours import ProxyNdpTable
from calico.felix.kernel.routes import RTPROT_FELIX, RouteTable

MAC = "aa:bb:cc:dd:ee:01"
GW, GW2 = "fd00:65::1", "fd00:65::fe"
V4_SET = names.ipset_name("s:abc", 4)
V6_SET = names.ipset_name("s:abc", 6)


def make(
    versions: Iterable[int] = (4,), kernel: FakeKernel | None = None
) -> tuple[DataplaneManager, FakeKernel]:
    kernel = kernel or FakeKernel()
    tables = KernelTables(
        versions,
        lambda v, t: IptablesTable(v, t, kernel, sleep=lambda seconds: None),
        lambda v: IpsetTable(v, kernel),
        lambda v: RouteTable(v, kernel.netlink, ("tap",)),
        lambda: ProxyNdpTable(kernel, ("tap",)),
    )
    config = RenderConfig(interface_prefixes=("tap",))
    return DataplaneManager(config, tables, kernel.sysctls), kernel


def endpoint(
    name: str,
    labels: dict[str, str] | None = None,
    ip: str = "10.65.0.2",
    nat: bool = False,
    gateway: str | None = None,
    tiers: tuple[m.TierInfo, ...] = (),
    mac: str = MAC,
) -> m.WorkloadEndpointUpdate:
    key = WorkloadEndpointKey("h", "openstack", "w", name)
    ep = WorkloadEndpoint(
        state="active",
        name=name,
        mac=mac,
        ipv4_nets=(f"{ip}/32",),
        ipv6_nets=("fd00:65::2/128",) if gateway else (),
        ipv6_gateway=gateway,
        labels=Labels(labels or {}),
        ipv4_nat=(NatMapping(ip, "198.18.1.1"),) if nat else (),
    )
    return m.WorkloadEndpointUpdate(key, ep, tiers)


def felix_chains(kernel: FakeKernel, table: str = names.FILTER, version: int = 4) -> set[str]:
    return {c for c in kernel.chains(table, version) if names.is_felix_name(c)}


def routes(kernel: FakeKernel) -> set[tuple[str, str]]:
    """(interface, destination) of Felix's routes in the model."""
    by_index = {link.index: name for name, link in kernel.links.items()}
    return {
        (
            by_index[oif],
            str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net),
        )
        for net, (oif, proto) in kernel.routes.items()
        if proto == RTPROT_FELIX
    }


def stubs(kernel: FakeKernel, version: int = 4) -> set[str]:
    """Felix chains written as a missing-chain or failed-chain drop stub."""
    return {
        chain
        for table in manager_module.TABLES
        for chain, rules in kernel.chains(table, version).items()
        if tuple(rules) in (STUB_RULES, FAILED_RULES)
    }


def count_calls(monkeypatch: pytest.MonkeyPatch, *functions: str) -> Counter[str]:
    """Count the calls of rendering functions the manager makes."""
    calls: Counter[str] = Counter()
    for name in functions:
        real = getattr(manager_module.r, name)

        def counted(
            *args: Any, _name: str = name, _real: Callable[..., Any] = real, **kw: Any
        ) -> Any:
            calls[_name] += 1
            return _real(*args, **kw)

        monkeypatch.setattr(manager_module.r, name, counted)
    return calls


def test_nothing_before_in_sync_then_everything() -> None:
    manager, kernel = make()
    kernel.add_link("tap1")
    manager.on_interface_update("tap1", True)
    manager.on_message(endpoint("tap1"))
    manager.apply()
    assert kernel.commands == [] and kernel.netlink.requests == [] and kernel.sysctls.values == {}
    assert kernel.snapshot() == FakeKernel().snapshot()

    manager.on_message(m.InSync())
    manager.apply()
    assert hook_targets(kernel, names.FILTER) == {
        "INPUT": [names.CHAIN_INPUT],
        "FORWARD": [names.CHAIN_FORWARD],
        "OUTPUT": [names.CHAIN_OUTPUT],
    }
    assert hook_targets(kernel, names.NAT) == {
        "PREROUTING": [names.CHAIN_PREROUTING],
        "INPUT": [],
        "OUTPUT": [names.CHAIN_OUTPUT],
        "POSTROUTING": [names.CHAIN_POSTROUTING],
    }
    assert hook_targets(kernel, names.RAW) == {
        "PREROUTING": [names.CHAIN_PREROUTING],
        "OUTPUT": [names.CHAIN_OUTPUT],
    }
    chains = kernel.chains(names.FILTER)
    assert {names.CHAIN_FORWARD, "felix-to-1", "felix-from-1"} <= chains.keys()
    assert "-i tap1 -g felix-from-1" in chains[names.CHAIN_FROM_ENDPOINT]
    assert "-o tap1 -g felix-to-1" in chains[names.CHAIN_TO_ENDPOINT]
    assert f"-m mac ! --mac-source {MAC}" in " ".join(chains["felix-from-1"])
    assert stubs(kernel) == set()
    assert routes(kernel) == {("tap1", "10.65.0.2")}
    assert set(kernel.neighbours.values()) == {MAC}
    assert kernel.sysctls.values["net/ipv4/conf/tap1/rp_filter"] == "1"
    assert manager.endpoint_statuses(apply_failed=False) == {endpoint("tap1").id: "up"}
    assert kernel.restores("ip6tables") == []  # IPv4 only: no IPv6 table touched


def test_a_new_interface_answers_arp_before_it_is_routed(monkeypatch: pytest.MonkeyPatch) -> None:
    # A packet routed to a new VM before its TAP answers ARP for the gateway makes the VM ask,
    # fail and wait a second before asking again: its sysctls come first.
    manager, kernel = make()
    manager.on_message(m.InSync())
    manager.apply()
    events: list[str] = []
    real_write, real_route = kernel.sysctls.write, kernel.netlink.route

    def write(path: str, value: str) -> None:
        events.append(f"sysctl {path}={value}")
        real_write(path, value)

    def route(command: str, **kwarg: Any) -> None:
        events.append(f"route {command} {kwarg['dst']}")
        real_route(command, **kwarg)

    monkeypatch.setattr(kernel.sysctls, "write", write)
    monkeypatch.setattr(kernel.netlink, "route", route)
    kernel.add_link("tap1")
    manager.on_interface_update("tap1", True)
    manager.on_message(endpoint("tap1"))
    manager.apply()
    route_at = events.index("route replace 10.65.0.2/32")
    assert "sysctl net/ipv4/conf/tap1/proxy_arp=1" in events[:route_at]
    assert routes(kernel) == {("tap1", "10.65.0.2")}


def test_global_chains_are_rerendered_only_when_their_inputs_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manager, kernel = make()
    for name in ("tap1", "tap2"):
        kernel.add_link(name)
    calls = count_calls(monkeypatch, "dispatch_chains", "nat_chains", "workload_endpoint_chains")
    manager.on_message(m.InSync())
    manager.on_message(endpoint("tap1", {"a": "1"}))
    manager.apply()
    assert calls["dispatch_chains"] > 0 and calls["nat_chains"] == 1

    calls.clear()
    written = len(kernel.restores())
    manager.on_message(endpoint("tap1", {"a": "2"}))  # a label change: its own chains only
    manager.apply()
    assert calls == Counter({"workload_endpoint_chains": 1})
    for text in kernel.restores()[written:]:
        assert declared_chains(text) <= {"felix-to-1", "felix-from-1"}

    calls.clear()
    manager.on_message(endpoint("tap2", ip="10.65.0.3"))  # a new interface: the dispatch changes
    manager.apply()
    assert calls["dispatch_chains"] > 0 and calls["nat_chains"] == 0
    assert "-i tap2 -g felix-from-2" in kernel.chains(names.FILTER)[names.CHAIN_FROM_ENDPOINT]

    calls.clear()
    manager.on_message(endpoint("tap2", ip="10.65.0.3", nat=True))  # a floating IP: the NAT
    manager.apply()
    assert calls["nat_chains"] == 1 and calls["dispatch_chains"] == 0
    nat = kernel.chains(names.NAT)
    assert any("198.18.1.1" in r and "DNAT" in r for r in nat[names.CHAIN_FIP_DNAT])
    assert any("198.18.1.1" in r and "SNAT" in r for r in nat[names.CHAIN_FIP_SNAT])
    assert ("tap2", "198.18.1.1") in routes(kernel)

    calls.clear()
    pool = IPPoolKey(4, "10.65.0.0-16")
    manager.on_message(m.IPPoolUpdate(pool, IPPool("10.65.0.0/16", masquerade=True)))
    manager.apply()
    assert calls == Counter({"nat_chains": 1})
    assert kernel.members(names.IPSET_ALL_POOLS) == {"10.65.0.0/16"}
    assert kernel.members(names.IPSET_MASQ_POOLS) == {"10.65.0.0/16"}
    postrouting = " ".join(kernel.chains(names.NAT)[names.CHAIN_POSTROUTING])
    assert "MASQUERADE" in postrouting and names.IPSET_MASQ_POOLS in postrouting
    assert kernel.references(names.IPSET_MASQ_POOLS) == 1


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
    chains = felix_chains(kernel)
    assert {"felix-from-eth1", "felix-to-eth1", "felix-from-eth2", "felix-to-eth2"} <= chains
    assert not {"felix-from-eth3", "felix-from-tapx"} & chains
    host_dispatch = kernel.chains(names.FILTER)[names.CHAIN_FROM_HOST_IF]
    assert "-i eth1 -g felix-from-eth1" in host_dispatch
    assert not any("eth3" in rule for rule in host_dispatch)

    manager.on_interface_addrs("eth1", frozenset({"10.0.0.1/8"}))  # the address moves away
    manager.on_interface_addrs("eth3", frozenset({"198.18.9.1/32"}))
    manager.apply()
    chains = felix_chains(kernel)
    assert "felix-from-eth1" not in chains and "felix-to-eth1" not in chains
    assert "felix-from-eth3" in chains
    assert stubs(kernel) == set()


def test_routes_are_set_again_only_when_their_inputs_change() -> None:
    manager, kernel = make()
    kernel.add_link("tap1")
    manager.on_message(m.InSync())
    manager.on_message(endpoint("tap1", {"a": "1"}))
    manager.apply()
    assert routes(kernel) == {("tap1", "10.65.0.2")}

    kernel.netlink.requests.clear()
    manager.on_message(endpoint("tap1", {"a": "2"}))  # labels (or policies): chains only
    manager.on_message(endpoint("tap1", {"a": "2"}))  # re-sent unchanged: nothing at all
    manager.apply()
    assert kernel.netlink.requests == []
    manager.on_interface_update("tap1", True)  # an interface event: routes set again
    manager.apply()
    assert kernel.netlink.requests == ["link get"]  # looked at; nothing to change
    # The interface goes down (the kernel drops its routes) and comes back: they return.
    kernel.set_link_up("tap1", False)
    manager.on_interface_update("tap1", False)
    manager.apply()
    assert routes(kernel) == set()
    kernel.set_link_up("tap1", True)
    manager.on_interface_update("tap1", True)
    manager.apply()
    assert routes(kernel) == {("tap1", "10.65.0.2")}


def test_an_endpoint_removed_takes_its_chains_routes_and_proxy_ndp_entry_with_it() -> None:
    manager, kernel = make((4, 6))
    kernel.add_link("tap1")
    manager.on_message(m.InSync())
    manager.on_interface_update("tap1", True)
    manager.on_message(endpoint("tap1", gateway=GW))
    manager.apply()
    assert kernel.proxies == {("tap1", GW)}
    assert routes(kernel) == {("tap1", "10.65.0.2"), ("tap1", "fd00:65::2")}
    assert {"felix-to-1", "felix-from-1"} <= felix_chains(kernel, version=6)
    assert kernel.sysctls.values["net/ipv6/conf/tap1/proxy_ndp"] == "1"

    manager.on_message(endpoint("tap1", gateway=GW2))  # the gateway changes: the entry moves
    manager.apply()
    assert kernel.proxies == {("tap1", GW2)}
    kernel.set_link_up("tap1", False)  # the kernel drops the entry; the up event brings it back
    manager.on_interface_update("tap1", False)
    manager.apply()
    kernel.set_link_up("tap1", True)
    manager.on_interface_update("tap1", True)
    manager.apply()
    assert kernel.proxies == {("tap1", GW2)}

    manager.on_message(m.WorkloadEndpointRemove(endpoint("tap1").id))
    manager.apply()
    assert kernel.proxies == set()
    assert routes(kernel) == set() and kernel.neighbours == {}
    for version in (4, 6):
        assert not {"felix-to-1", "felix-from-1"} & felix_chains(kernel, version=version)
        dispatch = kernel.chains(names.FILTER, version)[names.CHAIN_FROM_ENDPOINT]
        assert not any("tap1" in rule for rule in dispatch)
    assert manager.endpoint_statuses(apply_failed=False) == {}


def test_sets_exist_before_the_rules_that_use_them_and_go_after() -> None:
    """The fake refuses a rule naming a missing set and the destroy of a set a rule uses, so
    this fails if the manager's order (sets, rules, then destroys) is wrong."""
    manager, kernel = make((4, 6))
    policy = PolicyKey("t1", "p1")
    rule = m.ResolvedRule(src_ip_set_ids=("s:abc",))
    manager.on_message(m.InSync())
    manager.on_message(m.IPSetUpdate("s:abc", ("10.65.0.2", "fd00:65::2")))
    manager.on_message(m.ActivePolicyUpdate(policy, (rule,), ()))
    manager.apply()
    assert kernel.members(V4_SET) == {"10.65.0.2"} and kernel.members(V6_SET) == {"fd00:65::2"}
    assert f"--match-set {V4_SET} src" in kernel.chains(names.FILTER, 4)["felix-p-t1/p1-i"][0]
    assert f"--match-set {V6_SET} src" in kernel.chains(names.FILTER, 6)["felix-p-t1/p1-i"][0]
    assert (kernel.references(V4_SET), kernel.references(V6_SET)) == (1, 1)
    assert stubs(kernel, 4) == stubs(kernel, 6) == set()

    manager.on_message(
        m.IPSetDeltaUpdate("s:abc", frozenset({"10.65.0.3"}), frozenset({"10.65.0.2"}))
    )
    manager.apply()
    assert kernel.members(V4_SET) == {"10.65.0.3"} and kernel.members(V6_SET) == {"fd00:65::2"}

    manager.on_message(m.ActivePolicyRemove(policy))
    manager.on_message(m.IPSetRemove("s:abc"))
    manager.apply()
    assert "felix-p-t1/p1-i" not in felix_chains(kernel)
    assert V4_SET not in kernel.sets and V6_SET not in kernel.sets


def test_a_change_configures_only_the_interfaces_it_concerns() -> None:
    manager, kernel = make((4,))
    manager.on_message(m.InSync())
    for name, ip in (("tap1", "10.65.0.2"), ("tap2", "10.65.0.3")):
        kernel.add_link(name)
        manager.on_interface_update(name, True)
        manager.on_message(endpoint(name, ip=ip))
        manager.apply()
    # Another tool turns tap1's proxy ARP off: a change elsewhere leaves tap1 alone (it is not
    # looked at), the next refresh puts it back.
    del kernel.sysctls.values["net/ipv4/conf/tap1/proxy_arp"]
    written: list[str] = []
    real_write = kernel.sysctls.write

    def write(path: str, value: str) -> None:
        written.append(path)
        real_write(path, value)

    kernel.sysctls.write = write  # type: ignore[method-assign]
    kernel.add_link("tap3")
    manager.on_interface_update("tap3", True)
    manager.on_message(endpoint("tap3", ip="10.65.0.4"))
    manager.apply()
    assert written and all("/tap3/" in path for path in written)
    assert "net/ipv4/conf/tap1/proxy_arp" not in kernel.sysctls.values
    manager.apply(force_refresh=True)
    assert kernel.sysctls.values["net/ipv4/conf/tap1/proxy_arp"] == "1"


def test_a_version_whose_settings_failed_is_retried_though_the_other_worked() -> None:
    manager, kernel = make((4, 6))
    kernel.add_link("tap1")
    manager.on_message(m.InSync())
    manager.on_interface_update("tap1", True)
    manager.on_message(endpoint("tap1", gateway=GW))
    real_write = kernel.sysctls.write
    refuse_v4 = True

    def write(path: str, value: str) -> None:
        if refuse_v4 and path.startswith("net/ipv4/conf/tap1/"):
            raise OSError(errno.EIO, "Input/output error", path)
        real_write(path, value)

    kernel.sysctls.write = write  # type: ignore[method-assign]
    manager.apply()
    assert "net/ipv6/conf/tap1/proxy_ndp" in kernel.sysctls.values
    assert "net/ipv4/conf/tap1/proxy_arp" not in kernel.sysctls.values
    assert manager.endpoint_statuses(apply_failed=False) == {endpoint("tap1").id: "error"}
    refuse_v4 = False
    manager.apply()  # nothing else changed: the failed version alone is tried again
    assert kernel.sysctls.values["net/ipv4/conf/tap1/proxy_arp"] == "1"
    assert manager.endpoint_statuses(apply_failed=False) == {endpoint("tap1").id: "up"}


def test_endpoint_status_is_error_while_its_configuration_fails() -> None:
    manager, kernel = make((4, 6))
    key = endpoint("tap1").id
    manager.on_message(m.InSync())
    manager.on_message(endpoint("tap1", gateway=GW))
    # The watcher said the interface is up, but it is gone by the time sysctls are written.
    manager.on_interface_update("tap1", True)
    manager.apply()
    assert manager.endpoint_statuses(apply_failed=False) == {key: "error"}
    kernel.add_link("tap1")
    manager.apply()
    assert manager.endpoint_statuses(apply_failed=False) == {key: "up"}
    assert kernel.proxies == {("tap1", GW)}

    # The proxy NDP entry cannot be written: "error" until it can (retried at each apply).
    kernel.refuse = lambda argv: "RTNETLINK answers: Invalid argument" if "neigh" in argv else None
    manager.on_message(endpoint("tap1", gateway=GW2))
    manager.apply()
    assert manager.endpoint_statuses(apply_failed=False) == {key: "error"}
    kernel.refuse = lambda argv: None
    manager.apply()
    assert manager.endpoint_statuses(apply_failed=False) == {key: "up"}
    assert kernel.proxies == {("tap1", GW2)}

    # The kernel refuses one of its chains (a match module it lacks): that chain alone is a
    # drop stub, the endpoint is "error", and the refresh after the module appears repairs it.
    kernel.missing_modules.add("mac")
    manager.on_message(endpoint("tap1", gateway=GW2, mac="aa:bb:cc:dd:ee:02"))
    manager.apply()
    assert stubs(kernel) == {"felix-from-1"} and "felix-to-1" in felix_chains(kernel)
    assert manager.endpoint_statuses(apply_failed=False) == {key: "error"}
    kernel.missing_modules.clear()
    manager.apply(force_refresh=True)
    assert stubs(kernel) == set()
    assert manager.endpoint_statuses(apply_failed=False) == {key: "up"}


def test_the_refresh_repairs_what_another_tool_changed() -> None:
    manager, kernel = make((4, 6))
    kernel.add_link("tap1")
    manager.on_message(m.InSync())
    manager.on_interface_update("tap1", True)
    manager.on_message(m.IPSetUpdate("s:abc", ("10.65.0.2",)))
    manager.on_message(
        m.ActivePolicyUpdate(
            PolicyKey("t1", "p1"), (m.ResolvedRule(src_ip_set_ids=("s:abc",)),), ()
        )
    )
    manager.on_message(endpoint("tap1", gateway=GW, tiers=(m.TierInfo("t1", ("p1",)),)))
    manager.apply()
    wanted = kernel.snapshot()

    tamper = (
        "*filter\n:felix-to-1 - [0:0]\n-D FORWARD -j felix-FORWARD\n-A FORWARD -j felix-FORWARD\n"
        "-I INPUT 1 -j ACCEPT\nCOMMIT\n"
    )
    assert kernel.run(["iptables-restore", "--noflush"], input=tamper).returncode == 0
    assert kernel.run(["ipset", "restore"], input=f"del {V4_SET} 10.65.0.2\n").returncode == 0
    kernel.run(["ip", "-6", "neigh", "del", "proxy", GW, "dev", "tap1"])
    kernel.netlink.route("del", dst="10.65.0.2/32")
    assert kernel.snapshot() != wanted
    manager.apply()  # a normal apply trusts the drivers' records
    assert kernel.snapshot() != wanted
    manager.apply(force_refresh=True)
    repaired = kernel.snapshot()
    # The host's own rule stays (Felix's hook is back on top of it); everything else is ours.
    assert kernel.chains(names.FILTER)["INPUT"] == ["-j felix-INPUT", "-j ACCEPT"]
    assert kernel.chains(names.FILTER)["FORWARD"] == ["-j felix-FORWARD"]
    repaired["chains"][(4, names.FILTER)]["INPUT"] = ["-j felix-INPUT"]  # type: ignore[index]
    assert repaired == wanted


def test_cleanup_sweeps_what_a_previous_run_left_only_after_the_grace_period() -> None:
    manager, kernel = make()
    old_set = names.ipset_name("s:old", 4)
    previous_run = "*filter\n:felix-old - [0:0]\n-A felix-old -m set --match-set " + old_set
    previous_run += " src -j DROP\n-A INPUT -j felix-old\nCOMMIT\n"
    assert kernel.run(["ipset", "restore"], input=f"create {old_set} hash:ip\n").returncode == 0
    assert kernel.run(["iptables-restore", "--noflush"], input=previous_run).returncode == 0
    manager.on_message(m.InSync())
    manager.on_message(endpoint("tap1"))
    manager.apply()
    assert "felix-old" in felix_chains(kernel) and old_set in kernel.sets  # still carrying traffic
    assert hook_targets(kernel, names.FILTER)["INPUT"] == [names.CHAIN_INPUT, "felix-old"]
    manager.cleanup()
    assert "felix-old" not in felix_chains(kernel) and old_set not in kernel.sets
    assert hook_targets(kernel, names.FILTER)["INPUT"] == [names.CHAIN_INPUT]
    assert "felix-to-1" in felix_chains(kernel)


def test_ip_addresses_in_the_model_are_the_endpoints() -> None:
    """The routes and ARP entries the model holds are exactly the endpoint's addresses."""
    manager, kernel = make()
    index = kernel.add_link("tap1")
    manager.on_message(m.InSync())
    manager.on_message(endpoint("tap1", ip="10.65.0.7"))
    manager.apply()
    assert kernel.routes == {ipaddress.ip_network("10.65.0.7/32"): (index, RTPROT_FELIX)}
    assert kernel.neighbours == {(index, "10.65.0.7"): MAC}


def test_a_set_destroyed_by_another_tool_costs_no_other_sets_update() -> None:
    """ipset restore sends one set's consecutive adds together and drops them when the next
    line names a set that no longer exists: the set before the refused line must be rewritten
    whole, not taken as updated."""
    manager, kernel = make()
    x, y = names.ipset_name("s:x", 4), names.ipset_name("s:y", 4)
    manager.on_message(m.InSync())
    manager.on_message(m.IPSetUpdate("s:x", ("10.65.0.1",)))
    manager.on_message(m.IPSetUpdate("s:y", ("10.65.0.1",)))
    manager.apply()
    assert kernel.run(["ipset", "restore"], input=f"destroy {y}\n").returncode == 0
    manager.on_message(m.IPSetDeltaUpdate("s:x", frozenset({"10.65.0.2"}), frozenset()))
    manager.on_message(m.IPSetDeltaUpdate("s:y", frozenset({"10.65.0.2"}), frozenset()))
    manager.apply()
    assert kernel.members(y) == {"10.65.0.1", "10.65.0.2"}  # rewritten whole
    assert kernel.members(x) == {"10.65.0.1", "10.65.0.2"}


def burst(manager: DataplaneManager, kernel: FakeKernel, indices: Iterable[int]) -> None:
    for i in indices:
        name = f"tap{i:04d}"
        kernel.add_link(name)
        manager.on_interface_update(name, True)
        manager.on_message(endpoint(name, ip=f"10.65.{i // 200}.{i % 200 + 1}", mac=MAC))


def test_a_burst_applied_in_steps_leaves_what_one_apply_of_it_does() -> None:
    """New endpoints that arrive while the driver applies the ones before them go in with later
    applies: the dispatch leaves then change in place (-I lines, no rewrite) and the kernel ends
    exactly as when the whole burst is one apply."""
    whole, whole_kernel = make(versions=(4, 6))
    whole.on_message(m.InSync())
    burst(whole, whole_kernel, range(120))
    whole.apply()
    stepped, kernel = make(versions=(4, 6))
    stepped.on_message(m.InSync())
    for part in (range(0, 120, 3), range(1, 120, 3), range(2, 120, 3)):
        burst(stepped, kernel, part)
        stepped.apply()
    for part in ("chains", "sets"):
        assert kernel.snapshot()[part] == whole_kernel.snapshot()[part]
    assert routes(kernel) == routes(whole_kernel) and len(routes(kernel)) == 120
    last = kernel.restores("iptables")[-1]
    leaf = names.dispatch_leaf_chain(names.CHAIN_TO_EP_LEAF_PREFIX, "0")
    assert f"-I {leaf} " in last and f":{leaf} " not in last
    assert kernel.restores("ip6tables")[-1].count("-I ") == last.count("-I ")


@pytest.mark.parametrize("count", [1, manager_module.BACKGROUND_INTERFACES_MIN])
def test_a_failure_programming_the_interfaces_fails_the_apply_for_a_retry(
    monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    """Many new interfaces are programmed by another thread while the rules are applied, a few
    after them: what fails there reaches apply()'s caller (which retries), either way, and the
    rules are in all the same. (The routes of many go in one `ip -batch`, which a fake kernel
    without a runner cannot take: here they go through netlink.)"""
    manager, kernel = make()
    manager.on_message(m.InSync())
    manager.apply()
    real_route = kernel.netlink.route
    threads: set[str] = set()

    def route(command: str, **kwarg: Any) -> None:
        threads.add(threading.current_thread().name)
        raise OSError(errno.ENOBUFS, "no buffer space")

    monkeypatch.setattr(kernel.netlink, "route", route)
    burst(manager, kernel, range(count))
    with pytest.raises(OSError):
        manager.apply()
    assert {f"felix-to-{i:04d}" for i in range(count)} <= kernel.chains(names.FILTER).keys()
    assert routes(kernel) == set()
    assert (threads == {"MainThread"}) == (count == 1)
    monkeypatch.setattr(kernel.netlink, "route", real_route)
    manager.apply()
    assert len(routes(kernel)) == count


class LaterKernel(FakeKernel):
    """A FakeKernel that can leave a restore running (a StartingRunner): what one writes
    happens only when the caller collects it, as a real restore's commit may come later."""

    def __init__(self) -> None:
        super().__init__()
        self.running: list[Later] = []

    def run_pieces(
        self, argv: list[str], pieces: Iterable[str]
    ) -> subprocess.CompletedProcess[str]:
        return self.run(argv, "".join(pieces))

    def start_pieces(self, argv: list[str], pieces: Iterable[str]) -> Later:
        started = Later(self, argv, "".join(pieces))
        self.running.append(started)
        return started


class Later:
    def __init__(self, kernel: LaterKernel, argv: list[str], text: str) -> None:
        self.kernel, self.argv, self.text = kernel, argv, text

    def wait(self) -> subprocess.CompletedProcess[str]:
        self.kernel.running.remove(self)
        return self.kernel.run(self.argv, self.text)


def make_later(versions: Iterable[int] = (4, 6)) -> tuple[DataplaneManager, LaterKernel]:
    kernel = LaterKernel()
    return make(versions, kernel)[0], kernel


def test_a_burst_applied_with_restores_left_running_leaves_what_one_apply_of_it_does() -> None:
    """While more is waiting, an apply leaves its last restore (the IPv6 filter table's)
    committing, and the next apply collects it before anything else: the kernel ends as when
    the whole burst is one apply."""
    whole, whole_kernel = make(versions=(4, 6))
    whole.on_message(m.InSync())
    burst(whole, whole_kernel, range(120))
    whole.apply()
    stepped, kernel = make_later()
    stepped.on_message(m.InSync())
    stepped.apply()  # (the first write of the filter tables is never left running)
    for part in (range(0, 120, 3), range(1, 120, 3)):
        burst(stepped, kernel, part)
        stepped.apply(detach=True)
        assert [started.argv[0] for started in kernel.running] == ["ip6tables-restore"]
        assert f"felix-to-{part[-1]:04d}" not in kernel.chains(names.FILTER, 6)
    burst(stepped, kernel, range(2, 120, 3))
    stepped.apply()
    assert kernel.running == []
    for part in ("chains", "sets"):
        assert kernel.snapshot()[part] == whole_kernel.snapshot()[part]
    assert routes(kernel) == routes(whole_kernel) and len(routes(kernel)) == 120


def test_sets_are_destroyed_only_once_a_restore_left_running_is_in() -> None:
    """The fake refuses the destroy of a set a rule uses: an apply that leaves the IPv6 rules
    committing leaves the sets they stop using to the next apply."""
    manager, kernel = make_later()
    policy = PolicyKey("t1", "p1")
    manager.on_message(m.InSync())
    manager.on_message(m.IPSetUpdate("s:abc", ("10.65.0.2", "fd00:65::2")))
    manager.on_message(
        m.ActivePolicyUpdate(policy, (m.ResolvedRule(src_ip_set_ids=("s:abc",)),), ())
    )
    manager.apply()
    manager.on_message(m.ActivePolicyRemove(policy))
    manager.on_message(m.IPSetRemove("s:abc"))
    manager.apply(detach=True)
    assert "felix-p-t1/p1-i" not in felix_chains(kernel, version=4)
    assert "felix-p-t1/p1-i" in felix_chains(kernel, version=6), "still committing"
    assert V4_SET in kernel.sets and V6_SET in kernel.sets
    manager.apply()
    assert "felix-p-t1/p1-i" not in felix_chains(kernel, version=6)
    assert V4_SET not in kernel.sets and V6_SET not in kernel.sets
    assert kernel.running == []


def test_a_refresh_never_leaves_a_restore_running() -> None:
    manager, kernel = make_later()
    manager.on_message(m.InSync())
    manager.apply()
    burst(manager, kernel, range(3))
    manager.apply(force_refresh=True, detach=True)
    assert kernel.running == []
    assert {f"felix-to-{i:04d}" for i in range(3)} <= kernel.chains(names.FILTER, 6).keys()
