"""The nftables rendering (calico.felix.dataplane.nft_rendering): rules for both families in one
chain, shared endpoint programs, base chains and their priorities, NAT, dispatch maps, and the
safety of everything it writes. Pure: no kernel (tests/dataplane/test_nft_table.py loads the
rendered table into a namespace)."""

from __future__ import annotations

import dataclasses

import pytest

from calico.common.datamodel_v1 import (
    HostEndpointKey,
    PolicyKey,
    WorkloadEndpointKey,
)
from calico.common.resources import HostEndpoint, IPPool, WorkloadEndpoint
from calico.felix.calc.messages import (
    ActivePolicyUpdate,
    ActiveProfileUpdate,
    HostEndpointUpdate,
    ResolvedRule,
    TierInfo,
    WorkloadEndpointUpdate,
)
from calico.felix.dataplane import names
from calico.felix.dataplane import nft_rendering as nr
from calico.felix.dataplane.nft_rendering import names as n
from calico.felix.dataplane.nft_rendering.rules import profile_chains, render_rule, rules_chain
from calico.felix.dataplane.rendering import RenderConfig
from calico.felix.kernel.nft_text import unsafe_rule

CONFIG = RenderConfig(interface_prefixes=("tap",))
ACCEPT, NEXT = CONFIG.mark_accept, CONFIG.mark_next_tier


def rule(**fields: object) -> ResolvedRule:
    return ResolvedRule(**fields)  # type: ignore[arg-type]


# --- rules ---------------------------------------------------------------------------------------


def test_a_family_neutral_rule_is_written_once() -> None:
    assert render_rule(rule(action="allow", protocol="tcp", dst_ports=(80,)), CONFIG) == [
        "meta l4proto 6 th dport 80 accept"
    ]


def test_ip_sets_give_one_rule_per_family_with_its_own_set() -> None:
    rules = render_rule(rule(action="allow", src_ip_set_ids=("t:abc",)), CONFIG)
    v4, v6 = n.set_name("t:abc", 4), n.set_name("t:abc", 6)
    assert rules == [f"ip saddr @{v4} accept", f"ip6 saddr @{v6} accept"]
    negated = render_rule(rule(action="deny", not_dst_ip_set_ids=("s:x",)), CONFIG)
    assert negated == [
        f"ip daddr != @{n.set_name('s:x', 4)} drop",
        f"ip6 daddr != @{n.set_name('s:x', 6)} drop",
    ]


def test_ip_version_and_nets_keep_a_rule_to_its_family() -> None:
    assert render_rule(rule(action="allow", ip_version=4), CONFIG) == ["meta nfproto ipv4 accept"]
    assert render_rule(rule(action="allow", src_net="fd00::/64"), CONFIG) == [
        "ip6 saddr fd00::/64 accept"
    ]
    # A net of each family can never match one packet: no rule at all (as iptables leaves it
    # out of both tables), never a widened one.
    assert (
        render_rule(rule(action="allow", src_net="10.0.0.0/8", dst_net="fd00::/64"), CONFIG) == []
    )
    both = render_rule(rule(action="deny", src_net="10.0.0.0/8", not_src_net="10.1.0.0/16"), CONFIG)
    assert both == ["ip saddr 10.0.0.0/8 ip saddr != 10.1.0.0/16 drop"]


def test_icmp_types_codes_and_their_negations() -> None:
    v4 = render_rule(rule(action="allow", protocol="icmp", icmp_type=8, icmp_code=0), CONFIG)
    assert v4 == ["meta l4proto 1 meta nfproto ipv4 icmp type 8 icmp code 0 accept"]
    v6 = render_rule(rule(action="allow", protocol="icmpv6", not_icmp_type=128), CONFIG)
    assert v6 == ["meta l4proto 58 meta nfproto ipv6 icmpv6 type != 128 accept"]
    # not (type 8 and code 1): one concatenated lookup, not "type != 8 and code != 1".
    pair = render_rule(
        rule(action="allow", protocol="icmp", not_icmp_type=8, not_icmp_code=1), CONFIG
    )
    assert pair == ["meta l4proto 1 meta nfproto ipv4 icmp type . icmp code != { 8 . 1 } accept"]
    # ICMPv6 in an IPv4-only rule can never match.
    assert render_rule(rule(action="allow", protocol="icmpv6", ip_version=4), CONFIG) == []


def test_ports_without_anonymous_sets() -> None:
    rules = render_rule(
        rule(action="allow", protocol="udp", src_ports=(53,), dst_ports=(80, "1000:2000")),
        CONFIG,
    )
    assert rules == [
        "meta l4proto 17 th sport 53 th dport 80 accept",
        "meta l4proto 17 th sport 53 th dport 1000-2000 accept",
    ]
    negated = render_rule(rule(action="deny", protocol="tcp", not_dst_ports=(22, "8:9")), CONFIG)
    assert negated == ["meta l4proto 6 th dport != 22 th dport != 8-9 drop"]
    assert all("{" not in r for r in rules + negated)


def test_actions() -> None:
    next_tier = render_rule(rule(action="next-tier", protocol="tcp", log_prefix="x"), CONFIG)
    assert next_tier == [
        f"meta l4proto 6 meta mark set meta mark | {NEXT:#010x}",
        f'meta mark & {NEXT:#010x} == {NEXT:#010x} log prefix "x: " level notice',
        f"meta mark & {NEXT:#010x} == {NEXT:#010x} return",
    ]
    # In a profile, next-tier ends the profile on its own match only: never on the NEXT-TIER
    # mark, which a tier that ended in next-tier may have left set.
    in_profile = render_rule(
        rule(action="next-tier", protocol="tcp", log_prefix="x"), CONFIG, in_profile=True
    )
    assert in_profile == ['meta l4proto 6 log prefix "x: " level notice return']
    chains = profile_chains(
        ActiveProfileUpdate("prof", (rule(action="next-tier", protocol="udp"), rule()), ()),
        CONFIG,
    )
    assert chains["felix-p-prof-i"].rules == ("meta l4proto 17 return", "accept")
    deny = render_rule(rule(action="deny", log_prefix="seen"), CONFIG)
    assert deny == ['log prefix "seen: " level notice', "drop"]
    assert render_rule(rule(action="log"), CONFIG) == ['log prefix "calico-packet: " level notice']
    assert render_rule(rule(action="allow", log_prefix="ok"), CONFIG) == [
        'log prefix "ok: " level notice accept'
    ]
    # The raw hooks' copy of an untracked policy answers with the ACCEPT bit.
    assert render_rule(rule(action="allow"), CONFIG, untracked=True) == [
        f"meta mark set meta mark | {ACCEPT:#010x}",
        f"meta mark & {ACCEPT:#010x} == {ACCEPT:#010x} return",
    ]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("DROP", ["meta l4proto 6 drop"]),
        ("LOG-and-DROP", ['meta l4proto 6 log prefix "calico-drop: " level warn drop']),
        (
            "ACCEPT",
            ['meta l4proto 6 accept comment "!SECURITY DISABLED! DROP overridden to ACCEPT"'],
        ),
    ],
)
def test_drop_action_override(override: str, expected: list[str]) -> None:
    config = dataclasses.replace(CONFIG, drop_action_override=override)
    assert render_rule(rule(action="deny", protocol="tcp"), config) == expected


def test_an_unrenderable_rule_fails_closed() -> None:
    chain = rules_chain([rule(action="allow", protocol="tcp", icmp_type=8)], CONFIG)
    assert chain.rules == ('drop comment "ERROR failed to parse rules"',)
    ports = rules_chain([rule(action="allow", protocol="icmp", dst_ports=(80,))], CONFIG)
    assert ports.rules == ('drop comment "ERROR failed to parse rules"',)


def test_untracked_policies_get_raw_copies() -> None:
    key = PolicyKey("t1", "p1")
    update = ActivePolicyUpdate(key, (rule(action="allow"),), (), untracked=True)
    chains = nr.policy_chains(update, CONFIG)
    inbound = names.policy_chain("t1", "p1", True)
    assert set(chains) == {
        inbound,
        names.policy_chain("t1", "p1", False),
        n.raw_policy_chain(inbound),
        n.raw_policy_chain(names.policy_chain("t1", "p1", False)),
    }
    assert chains[inbound].rules == ("accept",)
    assert "notrack" not in str(chains)  # the raw host-endpoint chain untracks, not the policy


# --- endpoints -----------------------------------------------------------------------------------


def workload(
    port: str, name: str, profiles: tuple[str, ...], mac: str | None = None
) -> WorkloadEndpointUpdate:
    key = WorkloadEndpointKey("h1", "openstack", f"vm-{port}", port)
    endpoint = WorkloadEndpoint(
        state="active", name=name, mac=mac, profile_ids=profiles, ipv4_nets=("10.65.0.2/32",)
    )
    tiers = (TierInfo("t1", ("p1", "p2")),)
    return WorkloadEndpointUpdate(key, endpoint, tiers)


def test_endpoints_with_the_same_policy_share_its_programs() -> None:
    a = nr.workload_endpoint_chains(workload("a", "tapa", ("web",), "02:00:00:00:00:01"), CONFIG)
    b = nr.workload_endpoint_chains(workload("b", "tapb", ("web",)), CONFIG)
    c = nr.workload_endpoint_chains(workload("c", "tapc", ("db",)), CONFIG)
    programs = {x for x in a.chains if x.startswith("felix-pr-")}
    assert programs == {x for x in b.chains if x.startswith("felix-pr-")}
    assert not programs & set(c.chains)
    inbound = next(p for p in programs if p.endswith("-i"))
    assert a.chains[inbound] == b.chains[inbound]
    # The endpoint's own chains: the MAC check, then the program.
    assert a.chains["felix-from-a"].rules[0] == (
        'ether saddr != 02:00:00:00:00:01 drop comment "Incorrect source MAC"'
    )
    assert a.chains["felix-from-a"].rules[1].startswith("goto felix-pr-")
    assert len(b.chains["felix-from-b"].rules) == 1
    # Tiers: clear NEXT-TIER, each policy while it is clear, the tier's drop; then profiles.
    assert a.chains[inbound].rules == (
        f'meta mark set meta mark & {~NEXT & 0xFFFFFFFF:#010x} comment "Start of tier t1"',
        f"meta mark & {NEXT:#010x} == 0x00000000 jump {names.policy_chain('t1', 'p1', True)}",
        f"meta mark & {NEXT:#010x} == 0x00000000 jump {names.policy_chain('t1', 'p2', True)}",
        f'meta mark & {NEXT:#010x} == 0x00000000 drop comment "Drop if no policy in tier passed"',
        f"jump {names.profile_chain('web', True)}",
        'drop comment "Packet did not match any profile"',
    )


def test_inactive_endpoints_have_no_chains() -> None:
    update = workload("a", "tapa", ("web",))
    inactive = dataclasses.replace(
        update, endpoint=dataclasses.replace(update.endpoint, state="inactive")
    )
    assert nr.workload_endpoint_chains(inactive, CONFIG).chains == {}


def test_dispatch_maps_and_host_endpoints() -> None:
    maps = nr.dispatch_maps(["tapb", "tapa"], CONFIG).sets
    spec, elements = maps[n.MAP_FROM_WORKLOAD]
    assert spec.map == "verdict" and elements == {
        '"tapa" : goto felix-from-a',
        '"tapb" : goto felix-from-b',
    }
    key = HostEndpointKey("h1", "uplink")
    update = HostEndpointUpdate(key, HostEndpoint(name="eth0", profile_ids=("hep",)), (), ())
    chains = nr.host_endpoint_chains(update, "eth0", CONFIG).chains
    assert chains["felix-from-eth0"].rules[0] == f"jump {n.FAILSAFE_IN}"
    assert chains["felix-to-eth0"].rules[0] == f"jump {n.FAILSAFE_OUT}"
    assert set(chains) == {
        "felix-from-eth0",
        "felix-to-eth0",
        "felix-raw-from-eth0",
        "felix-raw-to-eth0",
    }
    host_maps = nr.host_dispatch_maps(["eth0"]).sets
    assert host_maps[n.MAP_RAW_TO_HOST][1] == {'"eth0" : goto felix-raw-to-eth0'}
    with pytest.raises(ValueError):
        nr.host_dispatch_maps(['eth"0'])


# --- static chains and NAT -----------------------------------------------------------------------


def test_base_chains_hook_just_before_iptables() -> None:
    chains = nr.static_chains(CONFIG, (4, 6)).chains
    bases = {name: c.base for name, c in chains.items() if c.base is not None}
    assert {(b.hook, b.priority) for b in bases.values()} == {
        ("input", -5),
        ("forward", -5),
        ("forward", -4),
        ("output", -5),
        ("prerouting", -305),
        ("output", -305),
    }
    forward = chains[n.FORWARD].rules
    assert forward.index('iifname "tap*" jump felix-FROM-ENDPOINT') < forward.index(
        f"jump {n.FROM_HOST_IF}"
    )
    assert 'oifname "tap*" jump felix-TO-ENDPOINT' in chains[n.FORWARD_TO].rules
    assert all(not r.startswith("meta nfproto ipv6 accept") for r in forward)
    # IPv6 off: the host's IPv6 is not Felix's (as no ip6tables rules are written).
    v4_only = nr.static_chains(CONFIG, (4,)).chains
    assert v4_only[n.FORWARD].rules[0] == "meta nfproto ipv6 accept"
    assert "fib" not in str(v4_only[n.RAW_PREROUTING].rules)
    assert "fib saddr . iif oif missing" in str(chains[n.RAW_PREROUTING].rules)


@pytest.mark.parametrize(
    ("action", "last"),
    [("DROP", 'drop comment "Drop all packets from endpoints to the host"'), ("ACCEPT", "accept")],
)
def test_default_endpoint_to_host_action(action: str, last: str) -> None:
    config = dataclasses.replace(CONFIG, default_endpoint_to_host_action=action)
    to_host = nr.static_chains(config, (4, 6)).chains[n.WORKLOAD_TO_HOST].rules
    assert to_host[-1] == last
    assert (f"jump {n.FROM_ENDPOINT}" in to_host) == (action != "DROP")
    assert "ip daddr 127.0.0.1 meta l4proto 6 th dport 8775 accept" in to_host


def test_nat() -> None:
    pairs = [("10.65.0.4", "198.19.0.10"), ("fd00::4", "fd01::10")]
    chains = nr.nat_chains(CONFIG, (4, 6), pairs, masquerade_enabled=True).chains
    assert chains[n.FIP_DNAT].rules == (
        "ip daddr 198.19.0.10/32 dnat ip to 10.65.0.4",
        "ip6 daddr fd01::10/128 dnat ip6 to fd00::4",
    )
    assert chains[n.FIP_SNAT].rules[0] == (
        "ip saddr 10.65.0.4/32 ip daddr 10.65.0.4/32 snat ip to 198.19.0.10"
    )
    assert chains[n.NAT_PREROUTING].rules[-1] == (
        "ip daddr 169.254.169.254 meta l4proto 6 th dport 80 dnat ip to 127.0.0.1:8775"
    )
    assert chains[n.NAT_POSTROUTING].rules[-1] == (
        f"ip saddr @{n.POOLS_MASQ} ip daddr != @{n.POOLS_ALL} masquerade"
    )
    no_metadata = dataclasses.replace(CONFIG, metadata_addr=None)
    assert "dnat" not in str(nr.nat_chains(no_metadata, (4,)).chains[n.NAT_PREROUTING])
    pools = nr.pool_sets([IPPool("10.65.0.0/16", masquerade=True), IPPool("10.9.9.9/32")]).sets
    assert pools[n.POOLS_ALL][1] == {"10.65.0.0/16", "10.9.9.9"}
    assert pools[n.POOLS_MASQ][1] == {"10.65.0.0/16"}


def test_everything_rendered_is_safe_nft_text() -> None:
    rendered = nr.static_chains(CONFIG, (4, 6))
    rendered.update(nr.nat_chains(CONFIG, (4, 6), [("10.65.0.4", "198.19.0.10")], True))
    rendered.update(
        nr.workload_endpoint_chains(workload("a", "tapa", ("w",), "02:00:00:00:00:01"), CONFIG)
    )
    for name, chain in rendered.chains.items():
        nr.check_name(name)
        for line in chain.rules:
            assert unsafe_rule(line) is None, line


def test_names_nft_can_read() -> None:
    assert nr.check_name("felix-p-_abc/def-i") == "felix-p-_abc/def-i"
    for bad in ("felix-a:b", "felix-x y", 'felix-"', "felix-;x", "cali-x", "felix-"):
        with pytest.raises(ValueError):
            nr.check_name(bad)
    assert ":" not in n.set_name("t:short", 4)
