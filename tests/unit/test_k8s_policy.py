"""NetworkPolicy -> policies: the selectors mean what Kubernetes means (a reference matcher written
here from the Kubernetes API docs, against random selectors and labels), the rules are the cross
product of ports and peers, ipBlock exceptions are exact, every output is valid for Felix's parser,
and every problem fails closed (never widens)."""

from __future__ import annotations

import ipaddress
import json
import random
from typing import Any

import pytest

from calico.common import resources as res
from calico.common.datamodel_v1 import PolicyKey, parse_key
from calico.common.selectors import parse_selector
from calico.k8s import selectors
from calico.k8s.names import Unmappable
from calico.k8s.policy import EGRESS_TIER, INGRESS_TIER, MAX_RULES, policy_keys, tier_keys

NS = "shop"
PID = f"knp.default.{NS}.p"
INGRESS_KEY = f"/calico/v1/policy/tier/{INGRESS_TIER}/policy/{PID}"
EGRESS_KEY = f"/calico/v1/policy/tier/{EGRESS_TIER}/policy/{PID}"


def netpol(spec: Any, name: str = "p") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NS}, "spec": spec}


def translate(spec: Any) -> tuple[dict[str, dict[str, Any]], list[str]]:
    keys, problems = policy_keys(netpol(spec))
    for path, value in keys.items():
        key = parse_key(path)
        assert isinstance(key, PolicyKey)
        res.parse_policy(value, key)  # Felix accepts every value produced
    return {k: json.loads(v) for k, v in keys.items()}, problems


# --- Selector semantics against a reference -------------------------------------------------------


def k8s_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes LabelSelector semantics (apimachinery's LabelSelectorAsSelector)."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


KEYS = ["app", "tier", "example.com/role", "a.b-c_d"]
VALUES = ["", "web", "db", "v1.2", "x-y_z"]


def random_selector(rng: random.Random) -> dict[str, Any]:
    selector: dict[str, Any] = {}
    if rng.random() < 0.7:
        selector["matchLabels"] = {
            rng.choice(KEYS): rng.choice(VALUES) for _ in range(rng.randint(0, 2))
        }
    expressions = []
    for _ in range(rng.randint(0, 3)):
        op = rng.choice(["In", "NotIn", "Exists", "DoesNotExist"])
        expr: dict[str, Any] = {"key": rng.choice(KEYS), "operator": op}
        if op in ("In", "NotIn"):
            expr["values"] = rng.sample(VALUES, rng.randint(1, 3))
        expressions.append(expr)
    if expressions or rng.random() < 0.5:
        selector["matchExpressions"] = expressions
    return selector


def random_labels(rng: random.Random) -> dict[str, str]:
    return {k: rng.choice(VALUES) for k in rng.sample(KEYS, rng.randint(0, len(KEYS)))}


@pytest.mark.parametrize("seed", range(20))
def test_selectors_match_exactly_what_kubernetes_selects(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(50):
        pod_sel, ns_sel = random_selector(rng), random_selector(rng)
        pod_labels, ns_labels = random_labels(rng), random_labels(rng)
        pod_ns = rng.choice([NS, "other"])
        # An endpoint's labels as the calc graph merges them: the namespace profile's (pcns.)
        # then the pod's own, with calico/k8s_ns added by the mapping.
        merged = {f"pcns.{k}": v for k, v in ns_labels.items()}
        merged |= {**pod_labels, "calico/k8s_ns": pod_ns}
        cases = [
            (
                selectors.pod_selector(pod_sel, NS, "s"),
                pod_ns == NS and k8s_matches(pod_sel, pod_labels),
            ),
            (selectors.namespace_selector(ns_sel, "s"), k8s_matches(ns_sel, ns_labels)),
            (
                selectors.peer_selector(pod_sel, ns_sel, NS, "s"),
                k8s_matches(ns_sel, ns_labels) and k8s_matches(pod_sel, pod_labels),
            ),
        ]
        for text, expected in cases:
            assert parse_selector(text).evaluate(merged) == expected, (text, merged)
        # A host endpoint or non-pod endpoint (no calico/k8s_ns) is never a pod peer.
        assert not parse_selector(selectors.namespace_selector({}, "s")).evaluate({"app": "x"})


HOSTILE = [
    "a'b",
    'a"b',
    "a' || all() || '",
    "x\ny",
    "a b",
    "-lead",
    "trail-",
    "é",
    "a" * 64,
    "{a}",
    "a,b",
    "a)",
    "",
]


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_keys_and_values_never_become_selector_text(bad: str) -> None:
    if bad != "":  # the empty value is a valid label value
        with pytest.raises(Unmappable):
            selectors.pod_selector({"matchLabels": {"app": bad}}, NS, "s")
        with pytest.raises(Unmappable):
            selectors.pod_selector(
                {"matchExpressions": [{"key": "app", "operator": "In", "values": [bad]}]}, NS, "s"
            )
    with pytest.raises(Unmappable):
        selectors.namespace_selector({"matchLabels": {bad: "v"}}, "s")
    # And in a policy: the policy fails closed (isolates the namespace, allows nothing).
    keys, problems = translate({"podSelector": {"matchLabels": {bad or "a b": "v"}}})
    assert problems
    for value in keys.values():
        assert value["selector"] == f'calico/k8s_ns == "{NS}"'
        assert "inbound_rules" not in value and "outbound_rules" not in value


def test_a_quote_in_an_allowed_peer_value_drops_only_that_peer() -> None:
    keys, problems = translate(
        {
            "ingress": [
                {
                    "from": [
                        {"podSelector": {"matchLabels": {"app": "x' || all() || 'y"}}},
                        {"podSelector": {"matchLabels": {"app": "web"}}},
                    ]
                }
            ]
        }
    )
    assert len(problems) == 1
    assert keys[INGRESS_KEY]["inbound_rules"] == [
        {"action": "allow", "src_selector": f'(calico/k8s_ns == "{NS}" && app == "web")'}
    ]


def test_selector_shapes() -> None:
    assert selectors.pod_selector({}, NS, "s") == f'calico/k8s_ns == "{NS}"'
    assert selectors.namespace_selector({}, "s") == "has(calico/k8s_ns)"
    text = selectors.pod_selector(
        {
            "matchLabels": {"b": "2", "a": "1"},
            "matchExpressions": [
                {"key": "c", "operator": "NotIn", "values": ["x", "y"]},
                {"key": "d", "operator": "DoesNotExist"},
            ],
        },
        NS,
        "s",
    )
    assert text == (
        f'(calico/k8s_ns == "{NS}" && a == "1" && b == "2" && c not in {{"x", "y"}} && !has(d))'
    )
    for bad in (
        {"matchExpressions": [{"key": "a", "operator": "In"}]},
        {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
        {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]},
        {"matchFields": {}},
        {"matchLabels": ["a"]},
        "app=web",
    ):
        with pytest.raises(Unmappable):
            selectors.pod_selector(bad, NS, "s")


# --- Policies -------------------------------------------------------------------------------------


def test_directions_live_in_their_own_tiers() -> None:
    assert json.loads(tier_keys()[f"/calico/v1/policy/tier/{INGRESS_TIER}/metadata"]) == {
        "order": 1000
    }
    keys, _ = translate({"podSelector": {}})  # no policyTypes, no egress: ingress only
    assert list(keys) == [INGRESS_KEY]
    assert keys[INGRESS_KEY] == {
        "selector": f'calico/k8s_ns == "{NS}"',
        "order": 1000,
        "inbound_rules": [],
        "outbound_rules": [{"action": "next-tier"}],
    }
    keys, _ = translate({"egress": [{}]})  # egress rules, no policyTypes: both
    assert set(keys) == {INGRESS_KEY, EGRESS_KEY}
    assert keys[EGRESS_KEY]["inbound_rules"] == [{"action": "next-tier"}]
    assert keys[EGRESS_KEY]["outbound_rules"] == [{"action": "allow"}]
    keys, _ = translate({"policyTypes": ["Egress"]})
    assert list(keys) == [EGRESS_KEY] and keys[EGRESS_KEY]["outbound_rules"] == []


def test_rules_are_the_product_of_ports_and_peers() -> None:
    keys, problems = translate(
        {
            "ingress": [
                {
                    "from": [
                        {"podSelector": {"matchLabels": {"app": "a"}}},
                        {"namespaceSelector": {"matchLabels": {"team": "x"}}},
                    ],
                    "ports": [{"port": 80}, {"protocol": "UDP", "port": 53, "endPort": 55}],
                },
                {"ports": [{"protocol": "SCTP"}]},
            ]
        }
    )
    assert not problems
    rules = keys[INGRESS_KEY]["inbound_rules"]
    sel_a = f'(calico/k8s_ns == "{NS}" && app == "a")'
    sel_x = '(has(calico/k8s_ns) && pcns.team == "x")'
    assert rules == [
        {"action": "allow", "protocol": "tcp", "dst_ports": [80], "src_selector": sel_a},
        {"action": "allow", "protocol": "tcp", "dst_ports": [80], "src_selector": sel_x},
        {"action": "allow", "protocol": "udp", "dst_ports": ["53:55"], "src_selector": sel_a},
        {"action": "allow", "protocol": "udp", "dst_ports": ["53:55"], "src_selector": sel_x},
        {"action": "allow", "protocol": "sctp"},
    ]


@pytest.mark.parametrize(
    "entries",
    [
        {"ports": [{"port": "http"}]},  # named port
        {"ports": [{"protocol": "ICMP"}]},
        {"ports": [{"port": 0}]},
        {"ports": [{"port": 80, "endPort": 79}]},
        {"from": [{}]},
        {"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]},
        {"from": [{"ipBlock": {"cidr": "not-a-cidr"}}]},
        {"from": [{"ipBlock": {"cidr": "fe80::/64%eth0"}}]},
        {"from": [{"podSelector": {}, "extra": 1}]},
        {"ports": [{"port": 80, "extra": 1}]},
    ],
)
def test_a_list_that_loses_every_entry_allows_nothing(entries: dict[str, Any]) -> None:
    keys, problems = translate({"ingress": [entries]})
    assert problems
    assert keys[INGRESS_KEY]["inbound_rules"] == []  # never "any port" / "any peer"


def test_a_rule_with_an_unknown_field_is_left_out() -> None:
    keys, problems = translate({"ingress": [{"from": [], "sourceAll": True}, {}]})
    assert len(problems) == 1
    assert keys[INGRESS_KEY]["inbound_rules"] == [{"action": "allow"}]


@pytest.mark.parametrize(
    "spec",
    [
        {"podSelector": {"matchLabels": {"a": "b'c"}}},
        {"podSelector": {}, "futureField": {}},
        {"policyTypes": ["Ingress", "Sideways"]},
        {"policyTypes": []},
        "not a map",
    ],
)
def test_a_policy_that_cannot_be_read_isolates_its_namespace_in_both_directions(spec: Any) -> None:
    keys, problems = translate(spec)
    assert problems
    closed = {"selector": f'calico/k8s_ns == "{NS}"', "order": 1000}
    assert keys == {INGRESS_KEY: closed, EGRESS_KEY: closed}


def test_a_policy_with_a_bad_name_still_isolates() -> None:
    keys, problems = policy_keys({"metadata": {"name": "Bad Name", "namespace": NS}, "spec": {}})
    assert problems and len(keys) == 2
    assert all(".invalid-name-" in key for key in keys)
    with pytest.raises(Unmappable):  # no valid namespace: it could select no pod at all
        policy_keys({"metadata": {"name": "p", "namespace": "Bad"}, "spec": {}})


def covered(rules: list[dict[str, Any]]) -> set[ipaddress.IPv4Address]:
    out: set[ipaddress.IPv4Address] = set()
    for rule in rules:
        out |= set(ipaddress.ip_network(rule["src_net"]))  # type: ignore[arg-type]
    return out


@pytest.mark.parametrize("seed", range(10))
def test_ip_block_exceptions_are_exact(seed: int) -> None:
    rng = random.Random(seed)
    cidr = ipaddress.ip_network(f"10.{rng.randint(0, 255)}.0.0/20")
    subnets = list(cidr.subnets(new_prefix=26))
    holes = [str(n.supernet(new_prefix=rng.randint(22, 26))) for n in rng.sample(subnets, 4)]
    keys, problems = translate(
        {"ingress": [{"from": [{"ipBlock": {"cidr": str(cidr), "except": holes}}]}]}
    )
    assert not problems
    rules = keys[INGRESS_KEY]["inbound_rules"]
    expected = set(cidr) - {a for h in holes for a in ipaddress.ip_network(h)}
    assert covered(rules) == expected
    total = sum(ipaddress.ip_network(r["src_net"]).num_addresses for r in rules)
    assert total == len(expected)  # disjoint pieces
    assert all(r["ip_version"] == 4 for r in rules)


def test_an_ip_block_of_the_other_version_in_except_is_left_out() -> None:
    keys, problems = translate(
        {"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["fd00::/8"]}}]}]}
    )
    assert problems and keys[EGRESS_KEY]["outbound_rules"] == []


def test_too_many_rules_allow_nothing() -> None:
    peers = [{"ipBlock": {"cidr": f"10.{i // 256}.{i % 256}.0/24"}} for i in range(100)]
    ports = [{"port": p} for p in range(1, MAX_RULES // 100 + 2)]
    keys, problems = translate({"ingress": [{"from": peers, "ports": ports}]})
    assert any("more than" in p for p in problems)
    assert keys[INGRESS_KEY]["inbound_rules"] == []
