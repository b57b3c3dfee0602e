"""Validation and canonicalisation of v1 values (felix.md §2.2-§2.7)."""

from __future__ import annotations

import ipaddress
import json
import random
from typing import Any

import pytest

from calico.common import resources as res
from calico.common.datamodel_v1 import (
    HostEndpointKey,
    IPPoolKey,
    PolicyKey,
    ProfileLabelsKey,
    ProfileRulesKey,
    ProfileTagsKey,
    TierMetadataKey,
    WorkloadEndpointKey,
)
from calico.common.resources import InvalidValue, Labels, Rule

WL_KEY = WorkloadEndpointKey("host1", "openstack", "wl1", "ep1")
HEP_KEY = HostEndpointKey("host1", "eth0-ep")
RULES_KEY = ProfileRulesKey("prof1")
POLICY_KEY = PolicyKey("default", "pol1")


def fake_selector(text: str) -> object:
    """Stand-in for selectors.parse_selector: anything containing "bad" is invalid."""
    if "bad" in text:
        raise ValueError("syntax error")
    return text


def rule(data: dict[str, Any]) -> Rule:
    parsed, problems = res.parse_rule(data, fake_selector)
    assert problems == []
    assert parsed is not None
    return parsed


def rule_problems(data: dict[str, Any]) -> list[str]:
    parsed, problems = res.parse_rule(data, fake_selector)
    assert parsed is None
    assert problems
    return problems


# --- Rules: per-key accept tables ----------------------------------------------------------------

NEGATIONS = ["", "!"]


def attr(neg: str, name: str) -> str:
    return ("not_" if neg else "") + name


def test_empty_rule_defaults() -> None:
    assert rule({}) == Rule(action="allow")


@pytest.mark.parametrize("action", ["allow", "deny", "next-tier", "log"])
def test_action_accepted(action: str) -> None:
    assert rule({"action": action}).action == action


@pytest.mark.parametrize("action", ["accept", "ALLOW", "", "pass", 1, True, [], {}])
def test_action_rejected(action: object) -> None:
    assert any("action" in p for p in rule_problems({"action": action}))


@pytest.mark.parametrize("version", [4, 6])
def test_ip_version_accepted(version: int) -> None:
    assert rule({"ip_version": version}).ip_version == version


@pytest.mark.parametrize("version", [0, 5, "4", "6", 4.0, True, [4]])
def test_ip_version_rejected(version: object) -> None:
    assert any("ip_version" in p for p in rule_problems({"ip_version": version}))


@pytest.mark.parametrize("neg", NEGATIONS)
@pytest.mark.parametrize(
    ("value", "canonical"),
    [
        ("tcp", "tcp"),
        ("udp", "udp"),
        ("icmp", "icmp"),
        ("icmpv6", "icmpv6"),
        ("sctp", "sctp"),
        ("udplite", "udplite"),
        (1, "1"),
        (6, "6"),
        (255, "255"),
        ("17", "17"),
        ("255", "255"),
        ("033", "33"),
    ],
)
def test_protocol_accepted_and_normalised(neg: str, value: object, canonical: str) -> None:
    assert getattr(rule({neg + "protocol": value}), attr(neg, "protocol")) == canonical


@pytest.mark.parametrize("neg", NEGATIONS)
@pytest.mark.parametrize(
    "value", [0, "0", 256, "256", -1, "TCP", "dccp", "gre", "", " 6", 6.0, True, [6], {}]
)
def test_protocol_rejected(neg: str, value: object) -> None:
    assert any(p.startswith(neg + "protocol") for p in rule_problems({neg + "protocol": value}))


def test_protocol_zero_explains_kernel() -> None:
    assert any("kernel" in p for p in rule_problems({"protocol": 0}))


@pytest.mark.parametrize("neg", NEGATIONS)
@pytest.mark.parametrize(("protocol", "version"), [("icmp", 6), ("icmpv6", 4)])
def test_icmp_protocol_family_mismatch(neg: str, protocol: str, version: int) -> None:
    problems = rule_problems({neg + "protocol": protocol, "ip_version": version})
    assert any(f"ip_version {version}" in p for p in problems)


@pytest.mark.parametrize("neg", NEGATIONS)
@pytest.mark.parametrize(("protocol", "version"), [("icmp", 4), ("icmpv6", 6), ("tcp", 6)])
def test_icmp_protocol_family_match(neg: str, protocol: str, version: int) -> None:
    assert getattr(rule({neg + "protocol": protocol, "ip_version": version}), attr(neg, "protocol"))


@pytest.mark.parametrize("neg", NEGATIONS)
@pytest.mark.parametrize("end", ["src", "dst"])
@pytest.mark.parametrize(
    ("value", "version", "canonical"),
    [
        ("10.0.0.0/8", None, "10.0.0.0/8"),
        ("10.1.2.3/8", None, "10.0.0.0/8"),
        ("10.1.2.3", None, "10.1.2.3/32"),
        ("10.1.2.3", 4, "10.1.2.3/32"),
        ("fd00::1", None, "fd00::1/128"),
        ("FD00:0::1/64", 6, "fd00::/64"),
        ("0.0.0.0/0", 4, "0.0.0.0/0"),
    ],
)
def test_net_accepted(neg: str, end: str, value: str, version: int | None, canonical: str) -> None:
    data: dict[str, Any] = {f"{neg}{end}_net": value, "ip_version": version}
    assert getattr(rule(data), attr(neg, f"{end}_net")) == canonical


@pytest.mark.parametrize("neg", NEGATIONS)
@pytest.mark.parametrize("end", ["src", "dst"])
@pytest.mark.parametrize(
    ("value", "version"),
    [
        ("10.0.0.0/33", None),
        ("bogus", None),
        ("", None),
        (10, None),
        (["10.0.0.0/8"], None),
        ("10.0.0.0/8", 6),
        ("fd00::/64", 4),
    ],
)
def test_net_rejected(neg: str, end: str, value: object, version: int | None) -> None:
    key = f"{neg}{end}_net"
    assert any(p.startswith(key) for p in rule_problems({key: value, "ip_version": version}))


@pytest.mark.parametrize("neg", NEGATIONS)
@pytest.mark.parametrize("end", ["src", "dst"])
@pytest.mark.parametrize("value", ["tag", "a.b-c_D9", "openstack-sg-1234"])
def test_tag_accepted(neg: str, end: str, value: str) -> None:
    assert getattr(rule({f"{neg}{end}_tag": value}), attr(neg, f"{end}_tag")) == value


@pytest.mark.parametrize("neg", NEGATIONS)
@pytest.mark.parametrize("end", ["src", "dst"])
@pytest.mark.parametrize("value", ["", "a b", "a/b", "a!", 1, ["a"]])
def test_tag_rejected(neg: str, end: str, value: object) -> None:
    key = f"{neg}{end}_tag"
    assert any(p.startswith(key) for p in rule_problems({key: value}))


@pytest.mark.parametrize("neg", NEGATIONS)
@pytest.mark.parametrize("end", ["src", "dst"])
@pytest.mark.parametrize("value", ["has(a)", "a == 'b'", "!has(a)", ""])
def test_selector_accepted(neg: str, end: str, value: str) -> None:
    assert getattr(rule({f"{neg}{end}_selector": value}), attr(neg, f"{end}_selector")) == value


@pytest.mark.parametrize("neg", NEGATIONS)
@pytest.mark.parametrize("end", ["src", "dst"])
@pytest.mark.parametrize("value", ["bad(", 1, ["has(a)"], True])
def test_selector_rejected(neg: str, end: str, value: object) -> None:
    key = f"{neg}{end}_selector"
    assert any(p.startswith(key) for p in rule_problems({key: value}))


def test_selector_unchecked_without_validator() -> None:
    parsed, problems = res.parse_rule({"src_selector": "bad("}, None)
    assert problems == []
    assert parsed is not None
    assert parsed.src_selector == "bad("


def test_default_selector_validator_uses_selectors_module() -> None:
    good, problems = res.parse_rule({"src_selector": "has(a)"})
    assert good is not None, problems
    bad, problems = res.parse_rule({"src_selector": "has(a"})
    assert bad is None
    assert any("src_selector" in p for p in problems)


@pytest.mark.parametrize("neg", NEGATIONS)
@pytest.mark.parametrize("end", ["src", "dst"])
@pytest.mark.parametrize("protocol", ["tcp", "udp", "udplite", "sctp", 6, 17, 33, 132, 136, "33"])
@pytest.mark.parametrize(
    ("ports", "canonical"),
    [
        ([], ()),
        ([0], (0,)),
        ([80, 65535], (80, 65535)),
        (["1:2"], ("1:2",)),
        (["0:65535", 22], ("0:65535", 22)),
        (["010:20"], ("10:20",)),
    ],
)
def test_ports_accepted(
    neg: str, end: str, protocol: object, ports: list[object], canonical: tuple[object, ...]
) -> None:
    parsed = rule({"protocol": protocol, f"{neg}{end}_ports": ports})
    assert getattr(parsed, attr(neg, f"{end}_ports")) == canonical


@pytest.mark.parametrize("neg", NEGATIONS)
@pytest.mark.parametrize("end", ["src", "dst"])
@pytest.mark.parametrize(
    "ports",
    [
        80,
        "80",
        [-1],
        [65536],
        ["2:1"],
        ["1:1"],
        ["1:65536"],
        ["1-2"],
        ["1:2:3"],
        ["a:b"],
        ["-1:5"],
        [True],
        [1.5],
        [[1, 2]],
    ],
)
def test_ports_rejected(neg: str, end: str, ports: object) -> None:
    key = f"{neg}{end}_ports"
    assert any(p.startswith(key) for p in rule_problems({"protocol": "tcp", key: ports}))


@pytest.mark.parametrize("neg", NEGATIONS)
@pytest.mark.parametrize("end", ["src", "dst"])
@pytest.mark.parametrize(
    "protocol_fields",
    [{}, {"protocol": "icmp"}, {"protocol": 1}, {"!protocol": "tcp"}, {"protocol": "bogus"}],
)
def test_ports_need_positive_port_protocol(
    neg: str, end: str, protocol_fields: dict[str, object]
) -> None:
    key = f"{neg}{end}_ports"
    problems = rule_problems({**protocol_fields, key: [80]})
    assert any(p.startswith(key) and "protocol" in p for p in problems)


@pytest.mark.parametrize("neg", NEGATIONS)
@pytest.mark.parametrize("value", [0, 8, 254])
def test_icmp_type_accepted(neg: str, value: int) -> None:
    assert getattr(rule({neg + "icmp_type": value}), attr(neg, "icmp_type")) == value


@pytest.mark.parametrize("neg", NEGATIONS)
@pytest.mark.parametrize("value", [-1, 256, "8", 8.0, True, [8]])
def test_icmp_type_rejected(neg: str, value: object) -> None:
    key = neg + "icmp_type"
    assert any(p.startswith(key) for p in rule_problems({key: value}))


@pytest.mark.parametrize("neg", NEGATIONS)
def test_icmp_type_255_rejected_with_reason(neg: str) -> None:
    problems = rule_problems({neg + "icmp_type": 255})
    assert any("255" in p and "kernel" in p for p in problems)


@pytest.mark.parametrize("neg", NEGATIONS)
@pytest.mark.parametrize("value", [0, 3, 255])
def test_icmp_code_accepted(neg: str, value: int) -> None:
    parsed = rule({neg + "icmp_type": 3, neg + "icmp_code": value})
    assert getattr(parsed, attr(neg, "icmp_code")) == value


@pytest.mark.parametrize("neg", NEGATIONS)
@pytest.mark.parametrize("value", [-1, 256, "3", True])
def test_icmp_code_rejected(neg: str, value: object) -> None:
    key = neg + "icmp_code"
    assert any(p.startswith(key) for p in rule_problems({neg + "icmp_type": 3, key: value}))


@pytest.mark.parametrize(
    "data", [{"icmp_code": 1}, {"!icmp_code": 1}, {"icmp_code": 1, "!icmp_type": 3}]
)
def test_icmp_code_requires_type(data: dict[str, object]) -> None:
    assert any("without" in p for p in rule_problems(data))


@pytest.mark.parametrize(
    ("value", "canonical"),
    [
        ("drop", "drop"),
        ("a-b_c:d", "a-b_c:d"),
        ("a b/c!", "a_b_c_"),
        ("x" * 40, "x" * 27),
        ("\u00e9t\u00e9 " * 10, "_t__" * 6 + "_t_"),
        ("", ""),
    ],
)
def test_log_prefix_sanitised(value: str, canonical: str) -> None:
    assert rule({"action": "log", "log_prefix": value}).log_prefix == canonical


@pytest.mark.parametrize("value", [1, ["a"], True])
def test_log_prefix_rejected(value: object) -> None:
    assert any(p.startswith("log_prefix") for p in rule_problems({"log_prefix": value}))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ipv6_nets", ["fd00::1%a\n-A FORWARD -j ACCEPT/128"]),
        ("ipv6_nets", ["fd00::1%eth0/128"]),
        ("ipv6_gateway", "fe80::1%eth0"),
        ("ipv6_nat", [{"int_ip": "fd00::1%x", "ext_ip": "fd00::9"}]),
    ],
)
def test_scoped_ipv6_addresses_are_refused(field: str, value: object) -> None:
    """ipaddress accepts any text after "%" (an IPv6 scope) and prints it back, newlines
    included: no address or CIDR with a scope is valid anywhere (issue 12)."""
    data = {"state": "active", "name": "tap1", "ipv6_nets": ["fd00::1/128"], field: value}
    with pytest.raises(res.InvalidValue, match=field):
        res.parse_workload_endpoint(json.dumps(data), WL_KEY)
    assert any("scoped" in p for p in rule_problems({"src_net": "fd00::1%x\n-j ACCEPT"}))


@pytest.mark.parametrize("net", ["10/8", "10.1/16", "10.0.1/24", "10.0.1", "127.1"])
@pytest.mark.parametrize("field", ["src_net", "!dst_net"])
def test_shorthand_ipv4_refused_with_its_reason(field: str, net: str) -> None:
    """Felix 1.4 expanded these (netaddr); this project refuses them, saying why (issue 12)."""
    problems = rule_problems({field: net})
    assert any("shorthand IPv4 form" in p and field in p for p in problems), problems


@pytest.mark.parametrize(
    "key", ["foo", "!action", "!ip_version", "!log_prefix", "src_nets", "!!protocol", "Protocol"]
)
def test_unknown_rule_key_rejected(key: str) -> None:
    assert any("unknown rule key" in p for p in rule_problems({key: "x"}))


def test_null_valued_keys_removed_first() -> None:
    data = {k: None for k in res.RULE_KEYS} | {"mystery": None}
    assert rule(data) == Rule()


@pytest.mark.parametrize("data", [[], "allow", 1, None])
def test_rule_must_be_object(data: object) -> None:
    assert res.parse_rule(data, fake_selector)[0] is None


def test_full_rule() -> None:
    parsed = rule(
        {
            "action": "deny",
            "ip_version": 4,
            "protocol": "tcp",
            "!protocol": 17,
            "src_net": "10.0.0.1/24",
            "!dst_net": "192.168.0.0/16",
            "src_tag": "t1",
            "!dst_tag": "t2",
            "src_selector": "has(a)",
            "!dst_selector": "b == 'c'",
            "src_ports": [1, "10:20"],
            "!dst_ports": [22],
            "icmp_type": 8,
            "!icmp_type": 0,
            "icmp_code": 0,
            "!icmp_code": 1,
            "log_prefix": "x",
        }
    )
    assert parsed.action == "deny"
    assert parsed.not_protocol == "17"
    assert parsed.src_net == "10.0.0.0/24"
    assert parsed.src_ports == (1, "10:20")
    assert parsed.not_dst_ports == (22,)


def test_rule_reports_all_problems() -> None:
    problems = rule_problems(
        {
            "action": "reject",
            "ip_version": 6,
            "protocol": "icmp",
            "src_net": "10.0.0.0/8",
            "dst_tag": "bad tag",
            "src_selector": "bad",
            "dst_ports": [80],
            "icmp_type": 255,
            "!icmp_code": 1,
            "log_prefix": 5,
            "extra": 1,
        }
    )
    for fragment in [
        "unknown rule key 'extra'",
        "action",
        "protocol: 'icmp'",
        "src_net",
        "dst_tag",
        "src_selector",
        "dst_ports",
        "icmp_type",
        "!icmp_code",
        "log_prefix",
    ]:
        assert any(fragment in p for p in problems), fragment


# --- Profiles, policies, tiers, pools ------------------------------------------------------------


def test_profile_rules() -> None:
    raw = json.dumps({"inbound_rules": [{"src_tag": "a"}, {}], "outbound_rules": [{}]})
    parsed = res.parse_profile_rules(raw, RULES_KEY, fake_selector)
    assert parsed.inbound_rules == (Rule(src_tag="a"), Rule())
    assert parsed.outbound_rules == (Rule(),)
    assert isinstance(parsed.inbound_rules, tuple)


@pytest.mark.parametrize("raw", ["{}", '{"inbound_rules": null}', '{"outbound_rules": []}'])
def test_profile_rules_missing_lists_are_empty(raw: str) -> None:
    assert res.parse_profile_rules(raw, RULES_KEY, fake_selector) == res.ProfileRules()


def test_one_bad_rule_invalidates_profile_and_reports_all() -> None:
    raw = json.dumps(
        {"inbound_rules": [{}, {"foo": 1}], "outbound_rules": [{"action": "x"}, {"protocol": 0}]}
    )
    with pytest.raises(InvalidValue) as info:
        res.parse_profile_rules(raw, RULES_KEY, fake_selector)
    message = str(info.value)
    assert "inbound_rules[1]: unknown rule key 'foo'" in message
    assert "outbound_rules[0]: action" in message
    assert "outbound_rules[1]: protocol" in message
    assert len(info.value.problems) == 3
    assert RULES_KEY.path in message


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[]",
        '"x"',
        '{"inbound_rules": {}}',
        '{"outbound_rules": "x"}',
        '{"inbound_rules": ' + "[" * 100_000,  # deeper than json's recursion allows
    ],
)
def test_profile_rules_rejected(raw: str) -> None:
    with pytest.raises(InvalidValue):
        res.parse_profile_rules(raw, RULES_KEY, fake_selector)


def test_profile_rules_bad_profile_id_in_key() -> None:
    with pytest.raises(InvalidValue, match="profile ID"):
        res.parse_profile_rules("{}", ProfileRulesKey("a b"), fake_selector)


def test_profile_tags() -> None:
    assert res.parse_profile_tags('["a", "b.c"]', ProfileTagsKey("p")) == ("a", "b.c")
    assert res.parse_profile_tags("[]", ProfileTagsKey("p")) == ()


@pytest.mark.parametrize("raw", ['{"a": 1}', '"a"', '["a b"]', "[1]", "[null]", "nope"])
def test_profile_tags_rejected(raw: str) -> None:
    with pytest.raises(InvalidValue):
        res.parse_profile_tags(raw, ProfileTagsKey("p"))


def test_profile_labels() -> None:
    labels = res.parse_profile_labels('{"a": "b", "x.y/z-1_": ""}', ProfileLabelsKey("p"))
    assert labels == {"a": "b", "x.y/z-1_": ""}
    assert isinstance(labels, Labels)
    assert hash(labels) == hash(Labels({"x.y/z-1_": "", "a": "b"}))


@pytest.mark.parametrize(
    "raw", ['["a"]', '"a"', '{"a": 1}', '{"a": null}', '{"a b": "c"}', '{"": "c"}', "{"]
)
def test_profile_labels_rejected(raw: str) -> None:
    with pytest.raises(InvalidValue):
        res.parse_profile_labels(raw, ProfileLabelsKey("p"))


@pytest.mark.parametrize(
    ("raw", "order"),
    [
        ("{}", None),
        ('{"order": "default"}', None),
        ('{"order": null}', None),
        ('{"order": 10}', 10),
        ('{"order": -1.5}', -1.5),
    ],
)
def test_tier_metadata(raw: str, order: float | None) -> None:
    assert res.parse_tier_metadata(raw, TierMetadataKey("t")).order == order


@pytest.mark.parametrize(
    "raw", ['{"order": "10"}', '{"order": true}', '{"order": NaN}', '{"order": []}', "[]"]
)
def test_tier_metadata_rejected(raw: str) -> None:
    with pytest.raises(InvalidValue):
        res.parse_tier_metadata(raw, TierMetadataKey("t"))


def test_policy() -> None:
    raw = json.dumps(
        {
            "selector": "has(a)",
            "order": 5,
            "inbound_rules": [{"action": "next-tier"}],
            "untracked": True,
            "extra": "ignored",
        }
    )
    parsed = res.parse_policy(raw, POLICY_KEY, fake_selector)
    assert parsed == res.Policy("has(a)", 5, (Rule(action="next-tier"),), (), True)
    minimal = res.parse_policy('{"selector": "all()"}', POLICY_KEY, fake_selector)
    assert minimal == res.Policy("all()")
    assert minimal.order is None
    assert minimal.untracked is False


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("{}", "selector: missing"),
        ('{"selector": 1}', "selector"),
        ('{"selector": "bad"}', "invalid selector"),
        ('{"selector": "a", "order": "x"}', "order"),
        ('{"selector": "a", "untracked": "yes"}', "untracked"),
        ('{"selector": "a", "inbound_rules": [{"x": 1}]}', "inbound_rules[0]"),
    ],
)
def test_policy_rejected(raw: str, fragment: str) -> None:
    with pytest.raises(InvalidValue, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        res.parse_policy(raw, POLICY_KEY, fake_selector)


def test_policy_bad_key_ids() -> None:
    with pytest.raises(InvalidValue) as info:
        res.parse_policy('{"selector": "a"}', PolicyKey("t t", "p p"), fake_selector)
    assert len(info.value.problems) == 2


def test_ip_pool() -> None:
    key = IPPoolKey(4, "10.65.0.0-16")
    pool = res.parse_ip_pool('{"cidr": "10.65.0.0/16", "masquerade": true, "ipip": "tunl0"}', key)
    assert pool == res.IPPool("10.65.0.0/16", True)
    assert res.parse_ip_pool('{"cidr": "10.65.0.0/16"}', key).masquerade is False
    v6 = res.parse_ip_pool('{"cidr": "FD00::/64"}', IPPoolKey(6, "fd00::-64"))
    assert v6.cidr == "fd00::/64"


@pytest.mark.parametrize(
    ("key", "raw"),
    [
        (IPPoolKey(4, "p"), "{}"),
        (IPPoolKey(4, "p"), '{"cidr": "fd00::/64"}'),
        (IPPoolKey(6, "p"), '{"cidr": "10.0.0.0/8"}'),
        (IPPoolKey(4, "p"), '{"cidr": "10.0.0.0/8", "masquerade": "yes"}'),
        (IPPoolKey(4, "zz"), '{"cidr": "10.0.0.0/8"}'),
        (IPPoolKey(4, "1" * 44), '{"cidr": "10.0.0.0/8"}'),
    ],
)
def test_ip_pool_rejected(key: IPPoolKey, raw: str) -> None:
    with pytest.raises(InvalidValue):
        res.parse_ip_pool(raw, key)


# --- Workload endpoints --------------------------------------------------------------------------

GOOD_WL: dict[str, Any] = {
    "state": "active",
    "name": "tap1234",
    "mac": "AA-BB-CC-DD-EE-0F",
    "profile_ids": ["prof1", "prof2"],
    "ipv4_nets": ["10.0.0.1/32", "10.0.0.2"],
    "ipv6_nets": ["FD00::0001/128"],
    "ipv4_gateway": "10.0.0.254",
    "ipv6_gateway": None,
    "ipv4_nat": [{"int_ip": "10.0.0.1", "ext_ip": "172.16.0.1"}],
    "ipv6_nat": [{"int_ip": "fd00::1", "ext_ip": "2001:db8::1"}],
    "labels": {"app": "web", "k8s.io/role": "x"},
    # Unknown fields written by the OpenStack driver are tolerated.
    "ipv4_subnet_ids": ["s1"],
    "fqdn": "vm.example.com",
}


def wl(**changes: Any) -> dict[str, Any]:
    data = dict(GOOD_WL)
    for name, value in changes.items():
        if value is ...:
            del data[name]
        else:
            data[name] = value
    return data


def test_workload_endpoint_canonicalised() -> None:
    ep = res.parse_workload_endpoint(json.dumps(GOOD_WL), WL_KEY)
    assert ep.active
    assert ep.name == "tap1234"
    assert ep.mac == "aa:bb:cc:dd:ee:0f"
    assert ep.profile_ids == ("prof1", "prof2")
    assert ep.ipv4_nets == ("10.0.0.1/32", "10.0.0.2/32")
    assert ep.ipv6_nets == ("fd00::1/128",)
    assert ep.ipv4_gateway == "10.0.0.254"
    assert ep.ipv6_gateway is None
    assert ep.ipv4_nat == (res.NatMapping("10.0.0.1", "172.16.0.1"),)
    assert ep.ipv6_nat == (res.NatMapping("fd00::1", "2001:db8::1"),)
    assert ep.labels == {"app": "web", "k8s.io/role": "x"}
    assert hash(ep) == hash(res.parse_workload_endpoint(json.dumps(GOOD_WL), WL_KEY))


def test_workload_endpoint_minimal() -> None:
    ep = res.parse_workload_endpoint('{"state": "inactive", "name": "x"}', WL_KEY)
    assert ep == res.WorkloadEndpoint(state="inactive", name="x")
    assert not ep.active
    assert ep.mac is None
    assert ep.labels == {}


def test_endpoint_nets_keep_address_bits() -> None:
    ep = res.parse_workload_endpoint(
        json.dumps(wl(ipv4_nets=["10.0.0.1/24"], ipv4_nat=...)), WL_KEY
    )
    assert ep.ipv4_nets == ("10.0.0.1/24",)


def test_legacy_profile_id_converted() -> None:
    ep = res.parse_workload_endpoint(json.dumps(wl(profile_ids=..., profile_id="old")), WL_KEY)
    assert ep.profile_ids == ("old",)
    ep = res.parse_workload_endpoint(json.dumps(wl(profile_id="old")), WL_KEY)
    assert ep.profile_ids == ("prof1", "prof2")


@pytest.mark.parametrize(
    ("mac", "canonical"),
    [
        ("aa:bb:cc:dd:ee:ff", "aa:bb:cc:dd:ee:ff"),
        ("AA:BB:CC:DD:EE:FF", "aa:bb:cc:dd:ee:ff"),
        ("00-11-22-33-44-55", "00:11:22:33:44:55"),
        ("001122334455", "00:11:22:33:44:55"),
        ("0011.2233.4455", "00:11:22:33:44:55"),
    ],
)
def test_mac_canonicalised(mac: str, canonical: str) -> None:
    assert res.parse_workload_endpoint(json.dumps(wl(mac=mac)), WL_KEY).mac == canonical


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"state": ...}, "state"),
        ({"state": "up"}, "state"),
        ({"name": ...}, "name"),
        ({"name": ""}, "name"),
        ({"name": "a" * 16}, "name"),
        ({"name": "tap.1"}, "name"),
        ({"name": 5}, "name"),
        ({"mac": "aa:bb:cc:dd:ee"}, "mac"),
        ({"mac": "aa:bb-cc:dd:ee:ff"}, "mac"),
        ({"mac": "gg:bb:cc:dd:ee:ff"}, "mac"),
        ({"mac": 1}, "mac"),
        ({"profile_ids": "prof1"}, "profile_ids"),
        ({"profile_ids": ["a b"]}, "profile_ids[0]"),
        ({"ipv4_nets": "10.0.0.1/32"}, "ipv4_nets"),
        ({"ipv4_nets": ["fd00::1/128"]}, "ipv4_nets[0]"),
        ({"ipv6_nets": ["10.0.0.1/32"]}, "ipv6_nets[0]"),
        ({"ipv4_nets": ["10.0.0.1/33"]}, "ipv4_nets[0]"),
        ({"ipv4_gateway": "fd00::1"}, "ipv4_gateway"),
        ({"ipv6_gateway": "10.0.0.1"}, "ipv6_gateway"),
        ({"ipv4_gateway": "10.0.0.0/24"}, "ipv4_gateway"),
        ({"ipv4_nat": {"int_ip": "10.0.0.1"}}, "ipv4_nat"),
        ({"ipv4_nat": [{"int_ip": "10.0.0.1"}]}, "ipv4_nat[0]"),
        ({"ipv4_nat": [{"ext_ip": "1.2.3.4"}]}, "ipv4_nat[0]"),
        ({"ipv4_nat": [{"int_ip": "10.0.0.9", "ext_ip": "1.2.3.4"}]}, "not in ipv4_nets"),
        ({"ipv4_nat": [{"int_ip": "10.0.0.1", "ext_ip": "fd00::1"}]}, "ext_ip"),
        ({"ipv6_nat": [{"int_ip": "fd00::2", "ext_ip": "2001:db8::1"}]}, "not in ipv6_nets"),
        ({"ipv4_nat": ["x"]}, "ipv4_nat[0]"),
        ({"labels": ["a"]}, "labels"),
        ({"labels": {"a": 1}}, "labels"),
        ({"labels": {"a=b": "c"}}, "labels"),
        ({"expected_ipv4_addrs": ["10.0.0.1"]}, "expected_ipv4_addrs"),
        ({"expected_ipv6_addrs": []}, "expected_ipv6_addrs"),
    ],
)
def test_workload_endpoint_rejected(changes: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidValue) as info:
        res.parse_workload_endpoint(json.dumps(wl(**changes)), WL_KEY)
    assert any(p.startswith(fragment) or fragment in p for p in info.value.problems)


def test_nat_int_ip_must_be_host_route() -> None:
    data = wl(ipv4_nets=["10.0.0.1/24"])
    with pytest.raises(InvalidValue, match="not in ipv4_nets as /32"):
        res.parse_workload_endpoint(json.dumps(data), WL_KEY)


def test_workload_endpoint_bad_endpoint_id_in_key() -> None:
    key = WorkloadEndpointKey("any host", "any orch", "any workload", "bad id")
    with pytest.raises(InvalidValue, match="endpoint ID"):
        res.parse_workload_endpoint(json.dumps(GOOD_WL), key)


@pytest.mark.parametrize("raw", ["", "{", "[]", "null", '"x"'])
def test_workload_endpoint_not_an_object(raw: str) -> None:
    with pytest.raises(InvalidValue):
        res.parse_workload_endpoint(raw, WL_KEY)


def test_invalid_endpoint_reports_every_problem_in_one_message() -> None:
    data = {
        "state": "sleeping",
        "name": "far-too-long-interface-name",
        "mac": "not-a-mac",
        "profile_ids": ["ok", "not ok"],
        "ipv4_nets": ["10.0.0.1/32", "300.0.0.1/32"],
        "ipv6_gateway": "10.0.0.1",
        "ipv4_nat": [{"int_ip": "10.9.9.9", "ext_ip": "1.1.1.1"}],
        "labels": {"bad label": "v", "n": 3},
        "expected_ipv4_addrs": ["10.0.0.1"],
    }
    with pytest.raises(InvalidValue) as info:
        res.parse_workload_endpoint(json.dumps(data), WorkloadEndpointKey("h", "o", "w", "e e"))
    message = str(info.value)
    expected = [
        "endpoint ID",
        "state",
        "name",
        "mac",
        "profile_ids[1]",
        "ipv4_nets[1]",
        "ipv6_gateway",
        "ipv4_nat[0]",
        "'bad label'",
        "label 'n'",
        "expected_ipv4_addrs",
    ]
    for fragment in expected:
        assert fragment in message, fragment
    assert len(info.value.problems) == len(expected)
    assert isinstance(info.value, ValueError)


# --- Host endpoints ------------------------------------------------------------------------------


def test_host_endpoint() -> None:
    raw = json.dumps(
        {
            "name": "eth0",
            "expected_ipv4_addrs": ["10.0.0.1"],
            "expected_ipv6_addrs": ["FD00::1"],
            "profile_ids": ["p"],
            "labels": {"role": "gw"},
            "unknown": 1,
        }
    )
    hep = res.parse_host_endpoint(raw, HEP_KEY)
    assert hep == res.HostEndpoint(
        "eth0", ("10.0.0.1",), ("fd00::1",), ("p",), Labels({"role": "gw"})
    )


@pytest.mark.parametrize(
    "data",
    [{"name": "eth0"}, {"expected_ipv4_addrs": ["10.0.0.1"]}, {"expected_ipv6_addrs": ["::1"]}],
)
def test_host_endpoint_name_or_ip_suffices(data: dict[str, Any]) -> None:
    res.parse_host_endpoint(json.dumps(data), HEP_KEY)


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"expected_ipv4_addrs": []},
        {"name": "a" * 16},
        {"name": "eth0", "expected_ipv4_addrs": ["fd00::1"]},
        {"name": "eth0", "expected_ipv6_addrs": ["10.0.0.1"]},
        {"name": "eth0", "expected_ipv4_addrs": "10.0.0.1"},
        {"name": "eth0", "profile_ids": [1]},
        {"name": "eth0", "labels": {"a": 1}},
    ]
    + [{"name": "eth0", field: "v"} for field in res.WORKLOAD_ONLY_FIELDS],
)
def test_host_endpoint_rejected(data: dict[str, Any]) -> None:
    with pytest.raises(InvalidValue):
        res.parse_host_endpoint(json.dumps(data), HEP_KEY)


def test_host_endpoint_bad_key_id() -> None:
    with pytest.raises(InvalidValue, match="endpoint ID"):
        res.parse_host_endpoint('{"name": "eth0"}', HostEndpointKey("h", "a/b"))


def test_values_are_immutable() -> None:
    ep = res.parse_workload_endpoint(json.dumps(GOOD_WL), WL_KEY)
    with pytest.raises(AttributeError):
        ep.name = "other"  # type: ignore[misc]
    assert isinstance(ep.profile_ids, tuple)
    with pytest.raises(TypeError):
        ep.labels["app"] = "db"  # type: ignore[index]


def test_endpoint_net_fast_path_agrees_with_ipaddress() -> None:
    # Canonical IPv4 CIDRs skip ipaddress; everything else takes the slow path. Both must give
    # ipaddress's answer (accept with its canonical text, or refuse) for every shape of input.
    rng = random.Random(7)
    samples = [
        "0.0.0.0/0",
        "255.255.255.255/32",
        "10.65.0.1/32",
        "10.65.0.1/24",
        "010.65.0.1/32",
        "10.65.0.1/032",
        "10.65.0.1/33",
        "10.65.0.256/32",
        "10.65.0/32",
        "10.65.0.1",
        "10.65.0.1/",
        " 10.65.0.1/32",
        "1.2.3.4/09",
    ]
    for _ in range(2000):
        octets = [str(rng.choice([rng.randrange(256), rng.randrange(250, 300)])) for _ in range(4)]
        samples.append(".".join(octets) + f"/{rng.randrange(0, 40)}")
    for value in samples:
        try:
            iface = ipaddress.ip_interface(value)
            expected = str(iface) if iface.version == 4 else None
        except ValueError:
            expected = None
        errs: list[str] = []
        assert res.endpoint_net(value, 4, "ipv4_nets[0]", errs) == expected, value
        assert bool(errs) == (expected is None), value
