"""rendering: calc messages → iptables chains. Pure unit tests, then a real-kernel round trip.

The round trip loads a full ruleset (static, dispatch, endpoints, policies, profiles, NAT, raw)
into a throwaway namespace for v4 and v6 on both iptables backends, and checks that the kernel
prints every rule back exactly as rendered, so a restarted Felix rewrites nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from calico.common.datamodel_v1 import HostEndpointKey, PolicyKey, WorkloadEndpointKey
from calico.common.resources import HostEndpoint, NatMapping, WorkloadEndpoint
from calico.felix.calc.messages import (
    ActivePolicyUpdate,
    ActiveProfileUpdate,
    HostEndpointUpdate,
    ResolvedRule,
    TierInfo,
    WorkloadEndpointUpdate,
)
from calico.felix.config.loader import resolve
from calico.felix.dataplane import names
from calico.felix.dataplane.rendering import (
    RenderConfig,
    UnrenderableRule,
    chunk_ports,
    dispatch_chains,
    drop_rules,
    host_endpoint_chains,
    marks_from_mask,
    nat_chains,
    policy_chains,
    profile_chains,
    raw_chains,
    render_rule,
    rules_chain,
    static_filter_chains,
    workload_endpoint_chains,
)
from calico.felix.driver.config import DriverConfig, default_driver_config
from calico.felix.kernel.commands import NetnsRunner
from calico.felix.kernel.iptables import IptablesTable
from calico.felix.kernel.iptables_text import parse_save, tokens
from calico.lab.netns import NetNS

CFG = RenderConfig()
ACC_SET = "-j MARK --set-xmark 0x1000000/0x1000000"
ACC_RETURN = "-m mark --mark 0x1000000/0x1000000 -j RETURN"
NT_SET = "-j MARK --set-xmark 0x2000000/0x2000000"
NT_RETURN = "-m mark --mark 0x2000000/0x2000000 -j RETURN"


def R(**kw: object) -> ResolvedRule:
    return ResolvedRule(**kw)  # type: ignore[arg-type]


# --- config and marks ------------------------------------------------------------------------


def test_marks_from_default_sparse_and_short_masks() -> None:
    assert marks_from_mask(0xFF000000) == (0x1000000, 0x2000000, 0x4000000)
    assert marks_from_mask(0x80010004) == (0x4, 0x10000, 0x80000000)
    with pytest.raises(ValueError, match="needs 3"):
        marks_from_mask(0x30)


def test_config_from_values() -> None:
    values = {
        "InterfacePrefix": ["cali", "tap"],
        "IptablesMarkMask": 0x700,
        "DropActionOverride": "LOG-and-DROP",
        "DefaultEndpointToHostAction": "RETURN",
        "MetadataAddr": None,
        "MetadataPort": 8775,
        "FailsafeInboundHostPorts": [22],
        "FailsafeOutboundHostPorts": [],
    }
    cfg = RenderConfig.from_config(values)
    assert (cfg.mark_accept, cfg.mark_next_tier, cfg.mark_endpoint) == (0x100, 0x200, 0x400)
    assert cfg.interface_prefixes == ("cali", "tap")
    assert cfg.metadata_addr is None and cfg.failsafe_outbound_ports == ()
    with pytest.raises(ValueError):  # a host name is the driver's to resolve first
        RenderConfig.from_config({**values, "MetadataAddr": "nova"})
    assert RenderConfig.from_config({**values, "MetadataAddr": "10.1.1.1"}).metadata_addr == (
        "10.1.1.1"
    )


def test_the_default_config_is_the_parameter_tables() -> None:
    """RenderConfig's defaults are the parameters' defaults (config/params.py), not a copy."""
    assert RenderConfig() == RenderConfig.from_config(resolve({}, {}).values())
    assert RenderConfig().interface_prefixes == ("cali",)
    assert RenderConfig().mark_accept == 0x1000000  # the lowest bit of 0xff000000


def test_driver_config_from_felix_parameters() -> None:
    """The typed configuration Felix sends its driver: a MetadataAddr host name is kept apart
    (the driver resolves it) and the rules start without metadata NAT."""
    default = default_driver_config()
    assert default.render.metadata_addr == "127.0.0.1" and default.metadata_name is None
    assert default.interface_prefixes == ("cali",) and default.metrics_port is None
    values = {**resolve({}, {}).values(), "MetadataAddr": "nova-api.example"}
    named = DriverConfig.from_params(values)
    assert named.metadata_name == "nova-api.example" and named.render.metadata_addr is None
    with pytest.raises(ValueError):
        RenderConfig(drop_action_override="REJECT")


# --- drop rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("DROP", ['-i x -m comment --comment "why" -j DROP']),
        (
            "ACCEPT",
            ['-i x -m comment --comment "!SECURITY DISABLED! DROP overridden to ACCEPT" -j ACCEPT'],
        ),
        (
            "LOG-and-DROP",
            [
                '-i x -m comment --comment "why" -j LOG --log-prefix "calico-drop: "',
                '-i x -m comment --comment "why" -j DROP',
            ],
        ),
        (
            "LOG-and-ACCEPT",
            [
                '-i x -m comment --comment "why" -j LOG --log-prefix "calico-drop: "',
                '-i x -m comment --comment "!SECURITY DISABLED! DROP overridden to ACCEPT" '
                "-j ACCEPT",
            ],
        ),
    ],
)
def test_drop_action_override(override: str, expected: list[str]) -> None:
    cfg = RenderConfig(drop_action_override=override)
    assert drop_rules(cfg, "-i x", "why") == expected


def test_drop_rules_plain() -> None:
    assert drop_rules(CFG) == ["-j DROP"]


# --- rule rendering ----------------------------------------------------------------------------


def test_actions() -> None:
    assert render_rule(R(), 4, CFG) == [ACC_SET, ACC_RETURN]
    assert render_rule(R(action="next-tier"), 4, CFG) == [NT_SET, NT_RETURN]
    assert render_rule(R(action="deny"), 4, CFG) == ["-j DROP"]
    assert render_rule(R(action="log"), 4, CFG) == [
        '-j LOG --log-prefix "calico-packet: " --log-level 5'
    ]


def test_log_prefixes() -> None:
    log = '-j LOG --log-prefix "pfx: " --log-level 5'
    assert render_rule(R(action="log", log_prefix="pfx"), 4, CFG) == [log]
    assert render_rule(R(action="deny", log_prefix="pfx", protocol="udp"), 4, CFG) == [
        f"-p udp {log}",
        "-p udp -j DROP",
    ]
    assert render_rule(R(log_prefix="pfx"), 6, CFG) == [
        ACC_SET,
        f"-m mark --mark 0x1000000/0x1000000 {log}",
        ACC_RETURN,
    ]


def test_positive_and_negated_matches() -> None:
    rule = R(
        protocol="tcp",
        src_net="10.0.0.0/8",
        dst_net="10.1.2.3/32",
        src_ip_set_ids=("t:a",),
        dst_ip_set_ids=("s:b",),
        src_ports=(80, "1000:2000"),
        dst_ports=(443,),
        not_src_ip_set_ids=("t:c",),
        not_dst_ip_set_ids=("t:d",),
        not_src_ports=(81,),
        not_dst_ports=("5:6",),
    )
    (got, _ret) = render_rule(rule, 4, CFG)
    assert got == (
        "-s 10.0.0.0/8 -d 10.1.2.3/32 -p tcp "
        "-m set --match-set felix-v4-t:a src -m set --match-set felix-v4-s:b dst "
        "-m multiport --sports 80,1000:2000 -m multiport --dports 443 "
        "-m set ! --match-set felix-v4-t:c src -m set ! --match-set felix-v4-t:d dst "
        "-m multiport ! --sports 81 -m multiport ! --dports 5:6 " + ACC_SET
    )
    neg = R(action="deny", not_protocol="udp", not_src_net="10.0.0.0/8", not_dst_net="1.2.3.4/32")
    assert render_rule(neg, 4, CFG) == ["! -s 10.0.0.0/8 ! -d 1.2.3.4/32 ! -p udp -j DROP"]


def test_net_and_negated_net_on_one_side() -> None:
    # iptables takes one -s: a disjoint negation is redundant, a covering one never matches,
    # a nested one becomes an iprange match.
    disjoint = R(action="deny", src_net="10.0.0.0/8", not_src_net="11.0.0.0/8")
    assert render_rule(disjoint, 4, CFG) == ["-s 10.0.0.0/8 -j DROP"]
    assert render_rule(R(src_net="10.1.0.0/16", not_src_net="10.0.0.0/8"), 4, CFG) == []
    nested = R(action="deny", dst_net="10.0.0.0/8", not_dst_net="10.1.0.0/16")
    assert render_rule(nested, 4, CFG) == [
        "-d 10.0.0.0/8 -m iprange ! --dst-range 10.1.0.0-10.1.255.255 -j DROP"
    ]
    assert render_rule(R(protocol="tcp", not_protocol="6"), 4, CFG) == []
    assert render_rule(R(action="deny", protocol="tcp", not_protocol="udp"), 4, CFG) == [
        "-p tcp -j DROP"
    ]


def test_protocol_spelling() -> None:
    assert render_rule(R(action="deny", protocol="17"), 4, CFG) == ["-p udp -j DROP"]
    assert render_rule(R(action="deny", protocol="icmpv6"), 6, CFG) == ["-p ipv6-icmp -j DROP"]
    assert render_rule(R(action="deny", protocol="47"), 6, CFG) == ["-p 47 -j DROP"]


def test_other_family_skipped() -> None:
    assert render_rule(R(src_net="10.0.0.0/8"), 6, CFG) == []
    assert render_rule(R(not_dst_net="2001:db8::/32"), 4, CFG) == []
    assert render_rule(R(ip_version=6), 4, CFG) == []
    assert render_rule(R(protocol="icmp"), 6, CFG) == []
    assert render_rule(R(protocol="icmpv6"), 4, CFG) == []
    assert render_rule(R(action="deny", src_net="2001:db8::/32"), 6, CFG) == [
        "-s 2001:db8::/32 -j DROP"
    ]


def test_ipsets_named_per_family() -> None:
    rule = R(action="deny", src_ip_set_ids=("t:web",))
    assert render_rule(rule, 6, CFG) == ["-m set --match-set felix-v6-t:web src -j DROP"]


def test_icmp_types_and_codes() -> None:
    v4 = R(action="deny", protocol="icmp", icmp_type=8, not_icmp_type=3, not_icmp_code=1)
    assert render_rule(v4, 4, CFG) == [
        "-p icmp -m icmp --icmp-type 8 -m icmp ! --icmp-type 3/1 -j DROP"
    ]
    v6 = R(action="deny", protocol="icmpv6", icmp_type=128, icmp_code=0)
    assert render_rule(v6, 6, CFG) == ["-p ipv6-icmp -m icmp6 --icmpv6-type 128/0 -j DROP"]
    v6_neg = R(action="deny", protocol="58", not_icmp_type=1)
    assert render_rule(v6_neg, 6, CFG) == ["-p ipv6-icmp -m icmp6 ! --icmpv6-type 1 -j DROP"]


def test_port_chunking() -> None:
    ports = tuple(range(1, 21))  # 20 entries
    assert chunk_ports(ports) == [list(range(1, 16)), list(range(16, 21))]
    assert [len(c) for c in chunk_ports(("1:2",) * 8)] == [7, 1]  # ranges count two
    src = tuple(range(100, 117))  # 17 → 2 chunks
    dst = tuple(range(1, 21))  # 20 → 2 chunks
    got = render_rule(R(protocol="tcp", src_ports=src, dst_ports=dst), 4, CFG)
    assert len(got) == 4 + 1  # 2 x 2 mark-setting rules, then one RETURN
    assert got[1] == (
        "-p tcp -m multiport --sports 100,101,102,103,104,105,106,107,108,109,110,111,112,113,"
        "114 -m multiport --dports 16,17,18,19,20 " + ACC_SET
    )
    (neg,) = render_rule(R(action="deny", protocol="udp", not_dst_ports=dst), 4, CFG)
    assert neg == (
        "-p udp -m multiport ! --dports 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15 "
        "-m multiport ! --dports 16,17,18,19,20 -j DROP"
    )


def test_unrenderable_rules_fail_closed() -> None:
    with pytest.raises(UnrenderableRule):
        render_rule(R(dst_ports=(80,)), 4, CFG)
    with pytest.raises(UnrenderableRule):
        render_rule(R(protocol="icmp", dst_ports=(80,)), 4, CFG)
    with pytest.raises(UnrenderableRule):
        render_rule(R(icmp_type=8), 4, CFG)
    assert rules_chain([R(action="deny"), R(icmp_type=8), R()], 4, CFG) == [
        "-j DROP",
        '-m comment --comment "ERROR failed to parse rules" -j DROP',
        ACC_SET,
        ACC_RETURN,
    ]


def test_policy_and_profile_chains() -> None:
    pol = ActivePolicyUpdate(PolicyKey("t1", "p1"), (R(),), (R(action="deny"), R(ip_version=6)))
    assert policy_chains(pol, 4, CFG) == {
        "felix-p-t1/p1-i": [ACC_SET, ACC_RETURN],
        "felix-p-t1/p1-o": ["-j DROP"],
    }
    # In a profile, next-tier ends the profile on its own match only: no NEXT-TIER mark, which
    # may still be set from a tier that ended in next-tier.
    prof = ActiveProfileUpdate(
        "prof", (), (R(action="next-tier"), R(action="next-tier", protocol="udp"))
    )
    assert profile_chains(prof, 6, CFG) == {
        "felix-p-prof-i": [],
        "felix-p-prof-o": ["-j RETURN", "-p udp -j RETURN"],
    }
    # In a policy it sets the mark for the tier.
    pol = ActivePolicyUpdate(PolicyKey("t1", "p2"), (R(action="next-tier"),), ())
    assert policy_chains(pol, 4, CFG)["felix-p-t1/p2-i"] == [NT_SET, NT_RETURN]


# --- endpoints ---------------------------------------------------------------------------------

WL_KEY = WorkloadEndpointKey("host1", "openstack", "vm1", "ep1")
WL = WorkloadEndpoint(
    state="active",
    name="tapabc",
    mac="aa:bb:cc:dd:ee:ff",
    profile_ids=("prof1", "prof2"),
    ipv4_nets=("10.65.0.2/32",),
    ipv6_nets=("2001:db8::2/128",),
)
TIERS = (TierInfo("t1", ("p1", "p2")), TierInfo("empty", ()), TierInfo("t2", ("p3",)))


def test_workload_endpoint_chains() -> None:
    cfg = RenderConfig(interface_prefixes=("cali", "tap"))
    chains = workload_endpoint_chains(WorkloadEndpointUpdate(WL_KEY, WL, TIERS), 4, cfg)
    assert set(chains) == {"felix-to-abc", "felix-from-abc"}
    tier_end = (
        '-m mark --mark 0x0/0x2000000 -m comment --comment "Drop if no policy in tier passed"'
    )
    ret_pol = '-m mark --mark 0x1000000/0x1000000 -m comment --comment "Return if policy accepted"'
    ret_prof = '-m mark --mark 0x1000000/0x1000000 -m comment --comment "Profile accepted packet"'
    assert chains["felix-from-abc"] == [
        "-j MARK --set-xmark 0x0/0x1000000",
        '-m mac ! --mac-source aa:bb:cc:dd:ee:ff -m comment --comment "Incorrect source MAC" '
        "-j DROP",
        '-m comment --comment "Start of tier t1" -j MARK --set-xmark 0x0/0x2000000',
        "-m mark --mark 0x0/0x2000000 -j felix-p-t1/p1-o",
        f"{ret_pol} -j RETURN",
        "-m mark --mark 0x0/0x2000000 -j felix-p-t1/p2-o",
        f"{ret_pol} -j RETURN",
        f"{tier_end} -j DROP",
        '-m comment --comment "Start of tier t2" -j MARK --set-xmark 0x0/0x2000000',
        "-m mark --mark 0x0/0x2000000 -j felix-p-t2/p3-o",
        f"{ret_pol} -j RETURN",
        f"{tier_end} -j DROP",
        "-j felix-p-prof1-o",
        f"{ret_prof} -j RETURN",
        "-j felix-p-prof2-o",
        f"{ret_prof} -j RETURN",
        '-m comment --comment "Packet did not match any profile (endpoint openstack/vm1/ep1)" '
        "-j DROP",
    ]
    to = chains["felix-to-abc"]
    assert not any("--mac-source" in r for r in to)
    assert "-m mark --mark 0x0/0x2000000 -j felix-p-t1/p1-i" in to
    assert "-j felix-p-prof2-i" in to


def test_workload_without_mac_and_inactive() -> None:
    no_mac = dataclasses.replace(WL, mac=None, profile_ids=())
    chains = workload_endpoint_chains(WorkloadEndpointUpdate(WL_KEY, no_mac, ()), 6, CFG)
    assert chains["felix-from-tapabc"] == [
        "-j MARK --set-xmark 0x0/0x1000000",
        '-m comment --comment "Packet did not match any profile (endpoint openstack/vm1/ep1)" '
        "-j DROP",
    ]
    down = dataclasses.replace(WL, state="inactive")
    assert workload_endpoint_chains(WorkloadEndpointUpdate(WL_KEY, down, TIERS), 4, CFG) == {}


def test_host_endpoint_chains_failsafe_and_untracked() -> None:
    hep = HostEndpoint(name="eth0", profile_ids=("prof1",))
    update = HostEndpointUpdate(
        HostEndpointKey("host1", "eth0"), hep, (TierInfo("t1", ("p1",)),), (TierInfo("u", ("p9",)),)
    )
    filt, raw = host_endpoint_chains(update, "eth0", 4, CFG)
    assert filt["felix-to-eth0"][:2] == [
        "-j felix-FAILSAFE-OUT",
        "-j MARK --set-xmark 0x0/0x1000000",
    ]
    assert filt["felix-from-eth0"][0] == "-j felix-FAILSAFE-IN"
    # Reversed directions: leaving through the interface = the outbound rules.
    assert "-m mark --mark 0x0/0x2000000 -j felix-p-t1/p1-o" in filt["felix-to-eth0"]
    assert "-j felix-p-prof1-i" in filt["felix-from-eth0"]
    assert filt["felix-from-eth0"][-1].endswith("-j DROP")
    assert raw["felix-from-eth0"] == [
        "-j felix-FAILSAFE-IN",
        "-j MARK --set-xmark 0x0/0x1000000",
        '-m comment --comment "Start of tier u" -j MARK --set-xmark 0x0/0x2000000',
        "-m mark --mark 0x0/0x2000000 -j felix-p-u/p9-i",
        "-m mark --mark 0x1000000/0x1000000 -j NOTRACK",
        '-m mark --mark 0x1000000/0x1000000 -m comment --comment "Return if policy accepted" '
        "-j RETURN",
    ]


# --- dispatch -----------------------------------------------------------------------------------

UNKNOWN_FROM = '-m comment --comment "From unknown endpoint" -j DROP'
UNKNOWN_TO = '-m comment --comment "To unknown endpoint" -j DROP'
HOST_RETURN = '-m comment --comment "Unknown interface, return" -j RETURN'


def test_dispatch_empty_and_single() -> None:
    assert dispatch_chains([], 4, CFG) == {
        "felix-FROM-ENDPOINT": [UNKNOWN_FROM],
        "felix-TO-ENDPOINT": [UNKNOWN_TO],
    }
    assert dispatch_chains(["cali1"], 4, CFG) == {
        "felix-FROM-ENDPOINT": ["-i cali1 -g felix-from-1", UNKNOWN_FROM],
        "felix-TO-ENDPOINT": ["-o cali1 -g felix-to-1", UNKNOWN_TO],
    }


def test_dispatch_two_interfaces() -> None:
    chains = dispatch_chains(["calib", "calia"], 4, CFG)
    assert chains["felix-FROM-ENDPOINT"] == [
        "-i calia -g felix-from-a",
        "-i calib -g felix-from-b",
        UNKNOWN_FROM,
    ]
    assert len(chains) == 2


def test_dispatch_tree_many_interfaces() -> None:
    ifaces = ["calia1", "calia2", "calib1", "calic1", "calic2", "calic3"]
    chains = dispatch_chains(ifaces, 4, CFG)
    assert chains["felix-FROM-ENDPOINT"] == [
        "-i calia+ -g felix-FROM-EP-PFX-a",
        "-i calib1 -g felix-from-b1",
        "-i calic+ -g felix-FROM-EP-PFX-c",
        UNKNOWN_FROM,
    ]
    assert chains["felix-FROM-EP-PFX-c"] == [
        "-i calic1 -g felix-from-c1",
        "-i calic2 -g felix-from-c2",
        "-i calic3 -g felix-from-c3",
        UNKNOWN_FROM,
    ]
    assert chains["felix-TO-EP-PFX-a"] == [
        "-o calia1 -g felix-to-a1",
        "-o calia2 -g felix-to-a2",
        UNKNOWN_TO,
    ]
    assert set(chains) == {
        "felix-FROM-ENDPOINT",
        "felix-TO-ENDPOINT",
        "felix-FROM-EP-PFX-a",
        "felix-FROM-EP-PFX-c",
        "felix-TO-EP-PFX-a",
        "felix-TO-EP-PFX-c",
    }


def test_dispatch_groups_are_remembered_but_never_stale_and_names_still_checked() -> None:
    ifaces = ["calia1", "calia2", "calib1", "calic1", "calic2"]
    before = dispatch_chains(ifaces, 4, CFG)
    after = dispatch_chains([*ifaces, "calic3"], 4, CFG)  # groups a and b from memory
    assert after["felix-FROM-EP-PFX-a"] == before["felix-FROM-EP-PFX-a"]
    assert after["felix-FROM-EP-PFX-c"][-2:] == ["-i calic3 -g felix-from-c3", UNKNOWN_FROM]
    assert dispatch_chains(ifaces, 4, CFG) == before  # (as rendered the first time)
    after["felix-FROM-EP-PFX-a"].append("-j DROP")  # a caller's edit stays its own
    assert dispatch_chains(ifaces, 4, CFG) == before
    with pytest.raises(ValueError, match="unusable interface name"):
        dispatch_chains([*ifaces, "calic 4"], 4, CFG)


def test_dispatch_host_interfaces_return() -> None:
    chains = dispatch_chains(["eth0", "eth1", "bond0"], 4, CFG, host=True)
    assert chains["felix-FROM-HOST-IF"] == [
        "-i bond0 -g felix-from-bond0",
        "-i e+ -g felix-FROM-IF-PFX-e",
        HOST_RETURN,
    ]
    assert chains["felix-TO-IF-PFX-e"] == [
        "-o eth0 -g felix-to-eth0",
        "-o eth1 -g felix-to-eth1",
        HOST_RETURN,
    ]


# --- static, raw and nat chains ---------------------------------------------------------------


def test_static_input_per_endpoint_to_host_action() -> None:
    drop = static_filter_chains(4, CFG)["felix-INPUT"]
    assert drop == [
        "-m mark --mark 0x1000000/0x1000000 -j ACCEPT",
        "-m conntrack --ctstate INVALID -j DROP",
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-j MARK --set-xmark 0x0/0x4000000",
        "-i cali+ -j MARK --set-xmark 0x4000000/0x4000000",
        "-m mark --mark 0x0/0x4000000 -g felix-FROM-HOST-IF",
        "-d 127.0.0.1/32 -p tcp -m tcp --dport 8775 -j ACCEPT",
        "-p udp -m udp --sport 68 --dport 67 -j ACCEPT",
        "-p udp -m udp --dport 53 -j ACCEPT",
        '-m comment --comment "Drop all packets from endpoints to the host" -j DROP',
    ]
    ret = static_filter_chains(4, RenderConfig(default_endpoint_to_host_action="RETURN"))
    assert ret["felix-INPUT"][-3:] == [
        "-p udp -m udp --sport 68 --dport 67 -j ACCEPT",
        "-p udp -m udp --dport 53 -j ACCEPT",
        "-j felix-FROM-ENDPOINT",
    ]
    acc = static_filter_chains(4, RenderConfig(default_endpoint_to_host_action="ACCEPT"))
    assert acc["felix-INPUT"][-2:] == ["-j felix-FROM-ENDPOINT", "-j ACCEPT"]


def test_static_input_metadata_and_v6() -> None:
    cfg = RenderConfig(metadata_addr=None, interface_prefixes=("cali", "tap"))
    v4 = static_filter_chains(4, cfg)["felix-INPUT"]
    assert not any("8775" in r for r in v4)
    assert "-i tap+ -j MARK --set-xmark 0x4000000/0x4000000" in v4
    v6 = static_filter_chains(6, RenderConfig())["felix-INPUT"]
    assert not any("-p 4" in r or "8775" in r for r in v6)
    assert "-p ipv6-icmp -m icmp6 --icmpv6-type 135 -j ACCEPT" in v6
    assert "-p udp -m udp --sport 546 --dport 547 -j ACCEPT" in v6


def test_static_output_forward_failsafe() -> None:
    chains = static_filter_chains(4, RenderConfig(interface_prefixes=("cali", "tap")))
    assert chains["felix-OUTPUT"] == [
        "-m mark --mark 0x1000000/0x1000000 -j ACCEPT",
        "-m conntrack --ctstate INVALID -j DROP",
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-j MARK --set-xmark 0x0/0x4000000",
        "-o cali+ -j MARK --set-xmark 0x4000000/0x4000000",
        "-o tap+ -j MARK --set-xmark 0x4000000/0x4000000",
        "-m mark --mark 0x0/0x4000000 -g felix-TO-HOST-IF",
    ]
    assert chains["felix-FORWARD"] == [
        "-m mark --mark 0x1000000/0x1000000 -m conntrack --ctstate UNTRACKED -j ACCEPT",
        "-m conntrack --ctstate INVALID -j DROP",
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-i cali+ -j felix-FROM-ENDPOINT",
        "-o cali+ -j felix-TO-ENDPOINT",
        "-i tap+ -j felix-FROM-ENDPOINT",
        "-o tap+ -j felix-TO-ENDPOINT",
        "-i cali+ -j ACCEPT",
        "-o cali+ -j ACCEPT",
        "-i tap+ -j ACCEPT",
        "-o tap+ -j ACCEPT",
        "-j felix-FROM-HOST-IF",
        "-j felix-TO-HOST-IF",
    ]
    assert chains["felix-FAILSAFE-IN"] == ["-p tcp -m tcp --dport 22 -j ACCEPT"]
    assert len(chains["felix-FAILSAFE-OUT"]) == 4


def test_raw_chains() -> None:
    v4 = raw_chains(4, CFG)
    assert v4["felix-PREROUTING"] == [
        "-j MARK --set-xmark 0x0/0x1000000",
        "-j MARK --set-xmark 0x0/0x4000000",
        "-i cali+ -j MARK --set-xmark 0x4000000/0x4000000",
        "-m mark --mark 0x0/0x4000000 -g felix-FROM-HOST-IF",
    ]
    assert v4["felix-OUTPUT"][-1] == "-m mark --mark 0x0/0x4000000 -g felix-TO-HOST-IF"
    assert "felix-RPFILTER" not in v4 and "felix-FAILSAFE-IN" in v4
    v6 = raw_chains(6, CFG)
    assert v6["felix-PREROUTING"][0] == "-i cali+ -m rpfilter --invert -j felix-RPFILTER"
    assert v6["felix-RPFILTER"] == ['-m comment --comment "Drop IPv6 spoofed packets" -j DROP']


def test_nat_chains() -> None:
    fips = [("10.65.0.3", "172.16.0.9"), ("10.65.0.2", "172.16.0.1"), ("10.65.0.2", "172.16.0.2")]
    fips += [("2001:db8::2", "2001:db8:1::2")]
    chains = nat_chains(4, CFG, fips, masquerade_enabled=True)
    assert chains == {
        "felix-PREROUTING": [
            "-j felix-FIP-DNAT",
            "-d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j DNAT "
            "--to-destination 127.0.0.1:8775",
        ],
        "felix-OUTPUT": ["-j felix-FIP-DNAT"],
        "felix-POSTROUTING": [
            "-j felix-FIP-SNAT",
            "-m set --match-set felix-masq-ipam-pools src "
            "-m set ! --match-set felix-all-ipam-pools dst -j MASQUERADE",
        ],
        "felix-FIP-DNAT": [
            "-d 172.16.0.9/32 -j DNAT --to-destination 10.65.0.3",
            "-d 172.16.0.1/32 -j DNAT --to-destination 10.65.0.2",
            "-d 172.16.0.2/32 -j DNAT --to-destination 10.65.0.2",
        ],
        "felix-FIP-SNAT": [
            "-s 10.65.0.2/32 -d 10.65.0.2/32 -j SNAT --to-source 172.16.0.1",
            "-s 10.65.0.3/32 -d 10.65.0.3/32 -j SNAT --to-source 172.16.0.9",
        ],
    }
    v6 = nat_chains(6, RenderConfig(metadata_addr=None), fips, masquerade_enabled=True)
    assert v6["felix-PREROUTING"] == ["-j felix-FIP-DNAT"]
    assert v6["felix-POSTROUTING"] == ["-j felix-FIP-SNAT"]
    assert v6["felix-FIP-DNAT"] == ["-d 2001:db8:1::2/128 -j DNAT --to-destination 2001:db8::2"]
    no_md = nat_chains(4, RenderConfig(metadata_addr=None), [], masquerade_enabled=False)
    assert no_md["felix-PREROUTING"] == ["-j felix-FIP-DNAT"]
    assert no_md["felix-POSTROUTING"] == ["-j felix-FIP-SNAT"]


# --- real kernel round trip -------------------------------------------------------------------

RT_CFG = RenderConfig(
    interface_prefixes=("cali", "tap"),
    drop_action_override="LOG-and-DROP",
    default_endpoint_to_host_action="RETURN",
)
SET_IDS = ("t:web", "s:db")


def _full_ruleset(ip_version: int) -> dict[str, dict[str, list[str]]]:
    """Every chain Felix would program for a realistic host, per table."""
    cfg = RT_CFG
    rules_in = (
        R(protocol="tcp", dst_ports=tuple(range(1, 21)), src_ip_set_ids=("t:web",)),
        R(action="deny", log_prefix="denied", protocol="udp", not_dst_ports=(53, "100:200")),
        R(action="next-tier", not_src_ip_set_ids=("s:db",), src_net="10.0.0.0/8"),
        R(action="allow", src_net="2001:db8::/32", not_src_net="2001:db8:1::/48"),
        R(action="log", protocol="icmp", icmp_type=8, icmp_code=0),
        R(action="allow", protocol="icmpv6", not_icmp_type=128),
        R(action="deny", not_protocol="sctp", dst_net="10.0.0.0/8", not_dst_net="10.1.0.0/16"),
        R(action="deny", protocol="icmp", dst_ports=(1,)),  # unrenderable: fail closed
    )
    policies = [
        ActivePolicyUpdate(PolicyKey("t1", "p1"), rules_in, (R(),)),
        ActivePolicyUpdate(PolicyKey("t1", "p2"), (), (R(action="deny"),)),
        ActivePolicyUpdate(PolicyKey("t2", "p3"), rules_in[:2], ()),
    ]
    untracked = ActivePolicyUpdate(PolicyKey("u", "p9"), (R(protocol="udp"),), (), untracked=True)
    profiles = [
        ActiveProfileUpdate("prof1", rules_in, (R(),)),
        ActiveProfileUpdate("prof2", (R(action="deny"),), (R(action="deny"),), stand_in=True),
    ]
    wl2 = dataclasses.replace(WL, name="cali1234", mac=None, profile_ids=("prof1",))
    wl_key2 = dataclasses.replace(WL_KEY, endpoint="ep2")
    hep = HostEndpointUpdate(
        HostEndpointKey("host1", "eth0"),
        HostEndpoint(name="eth0", profile_ids=("prof1",)),
        (TierInfo("t1", ("p1",)),),
        (TierInfo("u", ("p9",)),),
    )
    filt = static_filter_chains(ip_version, cfg)
    filt |= dispatch_chains(["tapabc", "cali1234", "cali5678"], ip_version, cfg)
    filt |= dispatch_chains(["eth0"], ip_version, cfg, host=True)
    for pol in policies:
        filt |= policy_chains(pol, ip_version, cfg)
    for prof in profiles:
        filt |= profile_chains(prof, ip_version, cfg)
    filt |= workload_endpoint_chains(WorkloadEndpointUpdate(WL_KEY, WL, TIERS), ip_version, cfg)
    filt |= workload_endpoint_chains(WorkloadEndpointUpdate(wl_key2, wl2, ()), ip_version, cfg)
    hep_filter, hep_raw = host_endpoint_chains(hep, "eth0", ip_version, cfg)
    filt |= hep_filter
    raw = raw_chains(ip_version, cfg) | dispatch_chains(["eth0"], ip_version, cfg, host=True)
    raw |= hep_raw | policy_chains(untracked, ip_version, cfg)
    mappings = (NatMapping("10.65.0.2", "172.16.0.1"), NatMapping("2001:db8::2", "fd::1"))
    fips = [(m.int_ip, m.ext_ip) for m in mappings]
    nat = nat_chains(ip_version, cfg, fips, masquerade_enabled=True)
    return {"filter": filt, "raw": raw, "nat": nat}


HOOKS = {
    "filter": {"INPUT": "felix-INPUT", "OUTPUT": "felix-OUTPUT", "FORWARD": "felix-FORWARD"},
    "nat": {"PREROUTING": "felix-PREROUTING", "POSTROUTING": "felix-POSTROUTING"},
    "raw": {"PREROUTING": "felix-PREROUTING", "OUTPUT": "felix-OUTPUT"},
}
HOOKS["nat"]["OUTPUT"] = "felix-OUTPUT"
# Rules iptables-save prints differently (protocol names come from /etc/protocols).
KNOWN_RESPELLED = {"-p 4"}


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_ruleset_round_trips_through_the_kernel(backend: str, netns: Callable[[], NetNS]) -> None:
    ns = netns()
    runner = NetnsRunner(ns.name)
    for version, family in ((4, "inet"), (6, "inet6")):
        for set_id in SET_IDS:
            name = names.ipset_name(set_id, version)
            ns.run(["ipset", "create", name, "hash:ip", "family", family])
    for name in (names.IPSET_ALL_POOLS, names.IPSET_MASQ_POOLS):
        ns.run(["ipset", "create", name, "hash:net"])
    for version in (4, 6):
        for table_name, chains in _full_ruleset(version).items():
            table = _table(version, table_name, chains, runner, backend)
            assert table.apply() is True
            # Exactly what we rendered is what iptables-save prints (bar known respellings),
            # so a restarted Felix with a fresh table rewrites nothing.
            cmd = f"{'iptables' if version == 4 else 'ip6tables'}-{backend}-save"
            kernel = parse_save(ns.run([cmd, "-t", table_name]).stdout, table_name)
            respelled = set()
            for chain, rules in chains.items():
                for want, got in zip(rules, kernel[chain], strict=True):
                    if tokens(want) != got:
                        assert any(k in want for k in KNOWN_RESPELLED), (want, got)
                        respelled.add(chain)
            # Normal applies do not read the kernel back, so the first refresh rewrites a
            # respelled chain once and learns its spelling; later refreshes write nothing.
            assert table.apply(force_refresh=True) is bool(respelled)
            assert table.apply(force_refresh=True) is False
            fresh = _table(version, table_name, chains, runner, backend)
            assert fresh.apply() is bool(respelled)  # only chains with respelled rules


def _table(
    version: int, table_name: str, chains: dict[str, list[str]], runner: NetnsRunner, backend: str
) -> IptablesTable:
    table = IptablesTable(version, table_name, runner, backend=backend)
    for chain, rules in chains.items():
        table.set_chain(chain, rules)
    for kernel_chain, felix_chain in HOOKS[table_name].items():
        table.set_hook(kernel_chain, felix_chain)
    table.end_grace_period()
    return table
