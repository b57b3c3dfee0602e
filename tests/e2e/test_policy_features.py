"""End to end: policy features beyond tags, proven with packets (felix.md §2.4-§2.6, §3, §5.5).

One compute host runs Felix; every VM below hangs off it (tests/e2e/lab_support.py). What
test_connectivity.py proves already (tag profiles, one tier policy, a profile change, endpoint
delete, refresh repair) is not repeated here.

====  =====  ==============  ========================  ========================================
VM    octet  profile         own labels                role in the tests
====  =====  ==============  ========================  ========================================
W     2      shop            --                        tcp/80 server for shop clients
C     3      shop            role=client               the usual client (allows all outbound)
W2    4      shop            --                        a shop member that is not a client
X     5      outsider        role=client               may only talk to role=web endpoints
T1    6      open            --                        role=web, inherited from ``open``
T2    7      open            role=db                   own label overrides the inherited one
P     8      open            tiered=yes, role=db       target of tiers t1 and t2
Q     9      open            tiered=other              target of tier t0 only
R     10     ranges          role=web                  port ranges, negations, ICMP type/code
K     11     icmp-code       --                        ICMP code, negated port ranges
L     12     open            --                        its TAP appears after its endpoint
V     13     open            --                        made inactive and active again
M     14     later           --                        its profile does not exist at first
C2    15     shop,           --                        role=client inherited from the later
             client-labels                             of its two profiles (later wins)
Y     18     next-in-prof    tiered=yes                tiers end in next-tier, then a profile
                                                       with a next-tier rule of its own
Y2    19     next-in-prof    --                        the same profile without tiers
====  =====  ==============  ========================  ========================================

Addresses 10.65.0.<octet>/32 and fd00:65::<octet>/128. Every profile allows all outbound traffic
except ``outsider``, so mostly the destination's inbound rules decide.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from lab_support import ALLOW, DENY, Expectation, Flow, Lab, reset_etcd

from calico.felix.dataplane import names
from calico.lab.etcd_server import EtcdServer
from calico.lab.probes import ping, tcp_ok, wait_until

HOST = "e2e-features-1"
CHANGE_TIMEOUT = 10.0  # a change in etcd reaches the kernel within this (busy machine)
TIER = "/calico/v1/policy/tier"
X_IP = "10.65.0.5"

ALLOW_ALL: dict[str, object] = {"inbound_rules": [{}], "outbound_rules": [{}]}

PROFILES: dict[str, dict[str, object]] = {
    "shop": {
        "labels": {"app": "shop", "role": "web"},
        "rules": {
            "inbound_rules": [
                {
                    "action": "allow",
                    "protocol": "tcp",
                    "dst_ports": [80],
                    # app comes from the profile, role from the endpoint's own labels.
                    "src_selector": "app == 'shop' && role == 'client'",
                }
            ],
            "outbound_rules": [{"action": "allow"}],
        },
    },
    "outsider": {
        "rules": {
            "inbound_rules": [{"action": "allow"}],
            "outbound_rules": [{"action": "allow", "dst_selector": "role == 'web'"}],
        },
    },
    "open": {"labels": {"role": "web"}, "rules": ALLOW_ALL},
    "client-labels": {"labels": {"role": "client"}, "rules": ALLOW_ALL},
    # A next-tier rule in a profile ends that profile on its own match only, even when the
    # tiers before left the NEXT-TIER mark set (then everything else is allowed).
    "next-in-prof": {
        "rules": {
            "inbound_rules": [{"action": "next-tier", "protocol": "udp"}, {}],
            "outbound_rules": [{}],
        },
    },
    "ranges": {
        "rules": {
            "inbound_rules": [
                {"protocol": "tcp", "dst_ports": ["8000:8010"]},
                {"protocol": "udp", "!dst_ports": ["5000:5999"]},
                {"protocol": "tcp", "dst_ports": [9000], "!src_net": f"{X_IP}/32"},
                {"protocol": "tcp", "dst_ports": [9001], "!src_selector": "role == 'client'"},
                {"protocol": "icmp", "icmp_type": 8, "icmp_code": 0},  # echo request only
                {"protocol": "icmpv6", "!icmp_type": 128},  # anything but echo request
            ],
            "outbound_rules": [{}],
        },
    },
    "icmp-code": {
        "rules": {
            "inbound_rules": [
                {"protocol": "icmp", "icmp_type": 8, "icmp_code": 1},  # ping sends code 0
                {"protocol": "icmpv6", "icmp_type": 128},
                {"protocol": "tcp", "!dst_ports": [22, "1000:2000"]},
            ],
            "outbound_rules": [{}],
        },
    },
}

# name: (octet, profiles, own labels); one profile unless a list is given
VMS: dict[str, tuple[int, str | list[str], dict[str, str]]] = {
    "W": (2, "shop", {}),
    "C": (3, "shop", {"role": "client"}),
    "W2": (4, "shop", {}),
    "X": (5, "outsider", {"role": "client"}),
    "T1": (6, "open", {}),
    "T2": (7, "open", {"role": "db"}),
    "P": (8, "open", {"tiered": "yes", "role": "db"}),
    "Q": (9, "open", {"tiered": "other"}),
    "R": (10, "ranges", {"role": "web"}),  # role=web: X's outbound rules let X reach it
    "K": (11, "icmp-code", {}),
    "L": (12, "open", {}),
    "V": (13, "open", {}),
    "M": (14, "later", {}),
    "C2": (15, ["shop", "client-labels"], {}),  # role=client from the later profile
    "Y": (18, "next-in-prof", {"tiered": "yes"}),  # (16, 17: test_explain.py's own VMs)
    "Y2": (19, "next-in-prof", {}),
}
UNPLUGGED = {"L"}  # created without a TAP; its endpoint is written by its test
OUT_NEXT_TIER = [{"action": "next-tier"}]  # a matching tier drops what no policy passes

# Tiers (felix.md §2.5). t0 < t1 < t2 by order; "nometa" has no metadata and is ignored.
TIERS: dict[str, int | None] = {"t0": 5, "t1": 10, "t2": 20, "nometa": None}
POLICIES: dict[tuple[str, str], dict[str, object]] = {
    # Applies to Q only: a tier none of whose policies matches P does not touch P.
    ("t0", "only-other"): {
        "selector": "tiered == 'other'",
        "order": 1,
        "inbound_rules": [{"protocol": "tcp", "dst_ports": [7000]}],
        "outbound_rules": OUT_NEXT_TIER,
    },
    # Never applies (no endpoint has tiered=nope): if it did, P would be cut off.
    ("t1", "not-me"): {
        "selector": "tiered == 'nope'",
        "order": 0,
        "inbound_rules": [{"action": "deny"}],
    },
    ("t1", "p-first"): {
        "selector": "tiered == 'yes'",
        "order": 1,
        "inbound_rules": [
            {"action": "deny", "protocol": "tcp", "dst_ports": [81]},
            {"action": "allow", "protocol": "tcp", "dst_ports": [82]},
            {"action": "next-tier", "protocol": "tcp", "dst_ports": [83, 84, 86]},
            {"action": "deny", "protocol": "tcp", "dst_ports": [87]},
        ],
        "outbound_rules": OUT_NEXT_TIER,
    },
    # Sorts before p-first by name, after it by order: order wins.
    ("t1", "a-second"): {
        "selector": "tiered == 'yes'",
        "order": 2,
        "inbound_rules": [{"action": "allow", "protocol": "tcp", "dst_ports": [87, 88]}],
    },
    ("t2", "second-tier"): {
        "selector": "tiered == 'yes'",
        "order": 1,
        "inbound_rules": [
            {"action": "allow", "protocol": "tcp", "dst_ports": [83]},
            {"action": "deny", "protocol": "tcp", "dst_ports": [82]},
            {"action": "next-tier", "protocol": "tcp", "dst_ports": [86]},
        ],
        "outbound_rules": OUT_NEXT_TIER,
    },
    # The tier has no metadata key, so this deny-all is never used (§2.5, [1.4]).
    ("nometa", "ignored"): {"selector": "tiered == 'yes'", "inbound_rules": [{"action": "deny"}]},
}


def tcp(src: str, dst: str, port: int, v6: bool = False) -> Flow:
    return Flow(src, dst, "tcp", port, v6)


def udp(src: str, dst: str, port: int, v6: bool = False) -> Flow:
    return Flow(src, dst, "udp", port, v6)


def icmp(src: str, dst: str, v6: bool = False) -> Flow:
    return Flow(src, dst, "icmp", None, v6)


def build(lab: Lab) -> None:
    for name, (octet, _, _) in VMS.items():
        lab.add_vm(name, octet, plugged=name not in UNPLUGGED)
    lab.put("/calico/v1/Ready", "true")
    for name, spec in PROFILES.items():
        labels = spec.get("labels")
        lab.put_profile(name, spec["rules"], labels=labels)  # type: ignore[arg-type]
    for tier, order in TIERS.items():
        if order is not None:
            lab.put(f"{TIER}/{tier}/metadata", {"order": order})
    for (tier, policy), spec in POLICIES.items():
        lab.put(f"{TIER}/{tier}/policy/{policy}", spec)
    for name, (_, profiles, labels) in VMS.items():
        if name not in UNPLUGGED:
            lab.put_endpoint(name, [profiles] if isinstance(profiles, str) else profiles, labels)
    lab.start_felix()
    lab.wait_pings("C", "T1", timeout=20)


@pytest.fixture(scope="module")
def lab(
    backend: str, etcd_server: EtcdServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Lab]:
    reset_etcd(etcd_server)
    lab = Lab(etcd_server, tmp_path_factory.mktemp("features"), HOST, "feat")
    try:
        build(lab)
        yield lab
    finally:
        lab.close()


# -- selectors and inherited labels (§2.4, §3) -----------------------------------------------------


def test_src_selector_sees_inherited_and_own_labels(lab: Lab) -> None:
    """W admits tcp/80 from ``app == 'shop' && role == 'client'``: C has app=shop from its
    profile and role=client of its own (overriding the profile's role=web)."""
    rows: list[Expectation] = []
    for v6 in (False, True):
        rows += [
            (tcp("C", "W", 80, v6), ALLOW),
            (tcp("X", "W", 80, v6), DENY),  # role=client but no profile with app=shop
            (tcp("W2", "W", 80, v6), DENY),  # app=shop but role=web, inherited
            (tcp("C2", "W", 80, v6), ALLOW),  # of two profiles' roles, the later one wins
            (tcp("C", "W", 81, v6), DENY),
        ]
    rows.append((icmp("C", "W"), DENY))
    lab.expect(rows, what="src_selector")


def test_dst_selector_sees_inherited_and_own_labels(lab: Lab) -> None:
    """X may send only to ``role == 'web'``: T1 inherits role=web from profile ``open``, T2's
    own role=db wins over it. Both admit anything, so X's outbound rules decide."""
    rows: list[Expectation] = []
    for v6 in (False, True):
        rows += [
            (tcp("X", "T1", 80, v6), ALLOW),
            (icmp("X", "T1", v6), ALLOW),
            (tcp("X", "T2", 80, v6), DENY),
            (icmp("X", "T2", v6), DENY),
            (tcp("C", "T2", 80, v6), ALLOW),  # T2 itself admits anyone
        ]
    lab.expect(rows, what="dst_selector")


def test_profile_label_change_moves_endpoints_in_and_out_of_selectors(lab: Lab) -> None:
    """§3.4: changing a profile's labels re-evaluates every endpoint that lists it."""
    shop = PROFILES["shop"]
    base = "/calico/v1/policy/profile/shop/labels"
    lab.expect([(tcp("C", "W", 80), ALLOW)], what="before the label change")
    try:
        lab.put(base, {"app": "elsewhere", "role": "web"})
        lab.expect([(tcp("C", "W", 80), DENY)], CHANGE_TIMEOUT, what="C lost app=shop")
    finally:
        lab.put(base, shop["labels"])
    lab.expect([(tcp("C", "W", 80), ALLOW)], CHANGE_TIMEOUT, what="app=shop restored")


# -- tiers (§2.5, §5.5) ------------------------------------------------------------------------


def test_tiers_deny_allow_next_tier_and_order(lab: Lab) -> None:
    rows: list[Expectation] = [
        (tcp("C", "P", 81), DENY),  # t1 denies; t2 and the profile never see it
        (tcp("C", "P", 82), ALLOW),  # t1 allows: evaluation ends (t2 would deny)
        (tcp("C", "P", 83), ALLOW),  # t1 next-tier, t2 allows
        (tcp("C", "P", 84), DENY),  # t1 next-tier, no rule of t2 matches: end-of-tier drop
        (tcp("C", "P", 85), DENY),  # no rule of t1 matches: end-of-tier drop (profile allows)
        (tcp("C", "P", 86), ALLOW),  # next-tier twice: the profile allows
        (tcp("C", "P", 87), DENY),  # order 1 denies before order 2 allows
        (tcp("C", "P", 88), ALLOW),  # order 1 has no match, order 2 allows
        (icmp("C", "P"), DENY),
        (tcp("C", "P", 82, v6=True), ALLOW),
        (tcp("C", "P", 81, v6=True), DENY),
        (tcp("C", "P", 86, v6=True), ALLOW),
        (icmp("C", "P", v6=True), DENY),
    ]
    lab.expect(rows, what="tiers t1/t2 on P")


def test_next_tier_in_a_profile_ends_that_profile_on_its_own_match_only(lab: Lab) -> None:
    rows: list[Expectation] = [
        (tcp("C", "Y", 86), ALLOW),  # t1 and t2 end in next-tier; the profile's allow-all
        (tcp("C", "Y", 86, v6=True), ALLOW),
        (tcp("C", "Y", 85), DENY),  # t1's end-of-tier drop
        (tcp("C", "Y2", 80), ALLOW),  # no tiers: the profile's allow-all
        (udp("C", "Y2", 53), DENY),  # the profile's next-tier ends it; no profile left: drop
        (udp("C", "Y2", 53, v6=True), DENY),
    ]
    lab.expect(rows, what="next-tier in a profile")


def test_tier_applies_only_to_endpoints_its_policies_match(lab: Lab) -> None:
    """Tier t0's only policy matches Q: Q gets t0's end-of-tier drop, P and T1 do not (a tier
    without a policy matching the endpoint is skipped). The tier without metadata is ignored."""
    rows: list[Expectation] = [
        (tcp("C", "Q", 7000), ALLOW),
        (tcp("C", "Q", 7001), DENY),  # t0's end-of-tier drop, although Q's profile allows
        (icmp("C", "Q"), DENY),
        (tcp("C", "T1", 7001), ALLOW),  # no tier at all: the profile allows
        (tcp("C", "P", 7000), DENY),  # P is in t1 (no match there), not in t0
    ]
    lab.expect(rows, what="tier t0")


# -- ports, negations, ICMP (§2.6, §5.6) -------------------------------------------------------


def test_port_ranges_negations_and_icmp(lab: Lab) -> None:
    rows: list[Expectation] = [
        # tcp dst_ports "8000:8010" (inclusive)
        (tcp("C", "R", 8000), ALLOW),
        (tcp("C", "R", 8005), ALLOW),
        (tcp("C", "R", 8010), ALLOW),
        (tcp("C", "R", 7999), DENY),
        (tcp("C", "R", 8011), DENY),
        (tcp("C", "R", 8005, v6=True), ALLOW),
        (tcp("C", "R", 8011, v6=True), DENY),
        # udp !dst_ports "5000:5999"
        (udp("C", "R", 6000), ALLOW),
        (udp("C", "R", 4999), ALLOW),
        (udp("C", "R", 5000), DENY),
        (udp("C", "R", 5999), DENY),
        # tcp/9000 !src_net X
        (tcp("C", "R", 9000), ALLOW),
        (tcp("X", "R", 9000), DENY),
        # tcp/9001 !src_selector role == 'client'
        (tcp("W2", "R", 9001), ALLOW),
        (tcp("C", "R", 9001), DENY),
        # ICMP: v4 type 8 code 0 allowed; v6 everything but type 128
        (icmp("C", "R"), ALLOW),
        (icmp("C", "R", v6=True), DENY),
        # K: v4 only type 8 code 1 (ping sends code 0); v6 type 128
        (icmp("C", "K"), DENY),
        (icmp("C", "K", v6=True), ALLOW),
        # K: tcp !dst_ports [22, "1000:2000"]
        (tcp("C", "K", 999), ALLOW),
        (tcp("C", "K", 1000), DENY),
        (tcp("C", "K", 1500), DENY),
        (tcp("C", "K", 2000), DENY),
        (tcp("C", "K", 2001), ALLOW),
        (tcp("C", "K", 22), DENY),
        (tcp("C", "K", 1500, v6=True), DENY),
        (tcp("C", "K", 2001, v6=True), ALLOW),
    ]
    lab.expect(rows, what="ports/negations/ICMP")


# -- endpoint life cycle (§2.2, §5.11) ---------------------------------------------------------


def _chain_exists(lab: Lab, chain: str) -> bool:
    return chain in lab.view.chains()


def test_endpoint_programmed_when_its_interface_appears_later(lab: Lab) -> None:
    lab.require_felix()
    late = lab.vms["L"]
    to_chain = names.endpoint_chain("to", late.tap, ("tap",))
    lab.put_endpoint("L", ["open"])
    # Felix has taken the endpoint in once its chains exist; the interface does not yet.
    if not wait_until(lambda: _chain_exists(lab, to_chain), CHANGE_TIMEOUT):
        lab.fail(f"Felix never programmed {to_chain} for the new endpoint")
    assert lab.host.route_to(late.ip) is None, "a route to an interface that does not exist"
    lab.require_felix()

    late.plug()
    # Routes, proxy ARP/NDP and sysctls follow the interface's appearance.
    lab.expect(
        [
            (icmp("C", "L"), ALLOW),
            (icmp("C", "L", v6=True), ALLOW),
            (tcp("C", "L", 80), ALLOW),
            (icmp("L", "T1"), ALLOW),
        ],
        CHANGE_TIMEOUT,
        what="after the interface appeared",
    )
    assert lab.host.route_to(late.ip) == late.tap
    assert lab.host.read_sysctl(f"net.ipv4.conf.{late.tap}.proxy_arp") == "1"

    # The interface goes (routes go with it) and comes back: programmed again.
    late.unplug()
    late.plug()
    lab.expect(
        [(icmp("C", "L"), ALLOW), (icmp("C", "L", v6=True), ALLOW), (icmp("L", "T1"), ALLOW)],
        CHANGE_TIMEOUT,
        what="after the interface came back",
    )
    assert lab.host.route_to(late.ip) == late.tap


def test_inactive_endpoint_is_cut_off_until_active_again(lab: Lab) -> None:
    v = lab.vms["V"]
    reachable: list[Expectation] = [
        (icmp("C", "V"), ALLOW),
        (tcp("C", "V", 80), ALLOW),
        (icmp("C", "V", v6=True), ALLOW),
        (icmp("V", "T1"), ALLOW),
    ]
    lab.expect(reachable, what="V active")
    try:
        lab.put_endpoint("V", ["open"], state="inactive")
        # Inactive: chains and routes go (§2.2), so the denial needs no route check.
        lab.expect(
            [(flow, DENY) for flow, _ in reachable],
            CHANGE_TIMEOUT,
            require_path=False,
            what="V inactive",
        )
        if not wait_until(lambda: lab.host.route_to(v.ip) is None, CHANGE_TIMEOUT):
            lab.fail("the inactive endpoint's route is still there")
    finally:
        lab.put_endpoint("V", ["open"])
    lab.expect(reachable, CHANGE_TIMEOUT, what="V active again")
    assert lab.host.route_to(v.ip) == v.tap


def test_missing_profile_denies_until_it_is_created(lab: Lab) -> None:
    both_ways: list[Flow] = [
        icmp("C", "M"),
        tcp("C", "M", 80),
        icmp("C", "M", v6=True),
        icmp("M", "T1"),  # T1 admits anything: M's own (missing) outbound rules deny
        tcp("M", "T1", 80),
    ]
    lab.expect([(flow, DENY) for flow in both_ways], what="profile 'later' missing")
    started = time.monotonic()
    try:
        lab.put_profile("later", ALLOW_ALL)
        lab.expect(
            [(flow, ALLOW) for flow in both_ways], CHANGE_TIMEOUT, what="profile 'later' created"
        )
        print(f"profile creation took effect within {time.monotonic() - started:.1f} s")
    finally:
        lab.delete("/calico/v1/policy/profile/later", recursive=True)
    # Deleted again: the endpoint still lists it, so it is a deny-all stub once more.
    lab.expect([(flow, DENY) for flow in both_ways], CHANGE_TIMEOUT, what="profile 'later' deleted")
    assert ping(lab.vms["C"], lab.vms["T1"]) and tcp_ok(lab.vms["C"], lab.vms["T1"], 80)
