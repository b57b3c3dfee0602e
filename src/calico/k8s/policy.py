"""networking.k8s.io/v1 NetworkPolicy -> Calico policies. Pure.

Kubernetes semantics ("GA", Calico 2.3+): a pod selected by a NetworkPolicy that governs a
direction (`policyTypes`) is isolated in that direction, and admits exactly what some such
policy's rules allow; a pod no policy selects is not isolated (its namespace profile allows all).

The v1 model has no per-policy `types`, and in it a policy that selects an endpoint governs both
directions (the end of a tier drops). So each direction has its own tier, and a NetworkPolicy
becomes up to two policies `knp.default.<ns>.<name>`:

* in tier `k8s-ingress` (when it governs ingress): the translated ingress rules inbound, and one
  outbound rule `next-tier`, which hands the pod's egress on to the next tier untouched;
* in tier `k8s-egress` (when it governs egress): `next-tier` inbound, the egress rules outbound.

A pod selected only for ingress thus meets, for its egress, only `next-tier` rules (and then its
allow-all profile); a pod selected for egress meets the egress tier's drop at its end unless a
rule allowed the packet. Both policies have order 1000 (Calico's order for every NetworkPolicy).

Rules (Calico's `k8sRuleToCalico`): each ingress/egress rule is the cross product of its ports and
its peers (a missing or empty list is one "any"), each pair one `allow` rule. Peers: pod and
namespace selectors (`selectors.peer_selector`; both in one peer are ANDed, as Kubernetes 1.11+
does), `ipBlock` -> the CIDR minus every `except` as a list of disjoint CIDRs (one rule each, so
any number of exceptions is exact). Ports: protocol TCP (default), UDP or SCTP, a number, a range
with `endPort`. A named port cannot be resolved here: its rules are left out.

Failing closed: a part that cannot be translated is left out and reported, never widened. A bad
port or peer drops that port or peer (and a list whose every entry was dropped allows nothing,
not "any"); a bad rule drops that rule; a policy whose pod selector, policy types or shape cannot
be read selects every pod of its namespace and allows nothing in either direction.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

from calico.common import resources as res
from calico.common.datamodel_v1 import PolicyKey, TierMetadataKey
from calico.common.quoting import quoted
from calico.k8s import selectors
from calico.k8s.mapping import Keys, encode
from calico.k8s.names import (
    Unmappable,
    check_name,
    check_namespace,
    get_list,
    get_map,
    policy_id,
)

INGRESS_TIER = "k8s-ingress"
EGRESS_TIER = "k8s-egress"
TIER_ORDER = 1000
POLICY_ORDER = 1000
MAX_RULES = 2000  # per direction: ports x peers x ipBlock pieces
MAX_PIECES = 512  # one ipBlock after its exceptions
NEXT_TIER: list[dict[str, object]] = [{"action": "next-tier"}]

_SPEC_FIELDS = frozenset({"podSelector", "policyTypes", "ingress", "egress"})
_PEER_FIELDS = frozenset({"podSelector", "namespaceSelector", "ipBlock"})
_PORT_FIELDS = frozenset({"protocol", "port", "endPort"})
_PROTOCOLS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}
# direction -> (rule list field, peer list field, rule side, tier)
_DIRECTIONS = {
    "ingress": ("ingress", "from", "src", INGRESS_TIER),
    "egress": ("egress", "to", "dst", EGRESS_TIER),
}
_TYPES = {"Ingress": "ingress", "Egress": "egress"}


def tier_keys() -> Keys:
    """The two tiers' metadata (constant; a tier without metadata is ignored by Felix)."""
    return {
        TierMetadataKey(tier).path: encode({"order": TIER_ORDER + i})
        for i, tier in enumerate((INGRESS_TIER, EGRESS_TIER))
    }


def policy_keys(policy: dict[str, Any]) -> tuple[Keys, list[str]]:
    """The policies of one NetworkPolicy and the problems met (each a part that was left out)."""
    meta = get_map(policy, "metadata", "NetworkPolicy")
    namespace = check_namespace(meta.get("namespace"))  # else it can select no pod: left out
    problems: list[str] = []
    spec = policy.get("spec")
    try:
        try:
            pid = policy_id(namespace, check_name(meta.get("name"), "NetworkPolicy"))
        except Unmappable:
            # Still isolate what it might have selected, under a name derived from the bad one.
            digest = hashlib.sha256(repr(meta.get("name")).encode()).hexdigest()[:16]
            pid = policy_id(namespace, f"invalid-name-{digest}")
            raise
        if not isinstance(spec, dict):
            raise Unmappable(f"spec: expected a map, got {quoted(spec)}")
        unknown = set(spec) - _SPEC_FIELDS
        if unknown:
            raise Unmappable(f"spec: unknown field(s) {quoted(sorted(unknown))}")
        selector = selectors.pod_selector(spec.get("podSelector", {}), namespace, "podSelector")
        types = _types(spec)
    except Unmappable as e:
        problems.append(f"{e}; isolating every pod of namespace {namespace}, allowing nothing")
        closed = {"selector": selectors.namespace_only(namespace), "order": POLICY_ORDER}
        return {
            PolicyKey(tier, pid).path: _checked(closed, tier, pid)
            for tier in (INGRESS_TIER, EGRESS_TIER)
        }, problems

    keys: Keys = {}
    for direction in types:
        field, _, _, tier = _DIRECTIONS[direction]
        rules = _rules(spec, direction, namespace, problems)
        if len(rules) > MAX_RULES:
            problems.append(f"{field}: {len(rules)} rules (more than {MAX_RULES}); allowing none")
            rules = []
        body = {
            "selector": selector,
            "order": POLICY_ORDER,
            "inbound_rules": rules if direction == "ingress" else NEXT_TIER,
            "outbound_rules": rules if direction == "egress" else NEXT_TIER,
        }
        keys[PolicyKey(tier, pid).path] = _checked(body, tier, pid)
    return keys, problems


def _checked(body: dict[str, object], tier: str, pid: str) -> str:
    key = PolicyKey(tier, pid)
    value = encode(body)
    try:
        res.parse_policy(value, key)
    except res.InvalidValue as e:  # a translation bug: never hand Felix what it would refuse
        raise Unmappable(str(e)) from None
    return value


def _types(spec: dict[str, Any]) -> list[str]:
    """The directions the policy governs. Absent: ingress, plus egress when it has egress rules
    (what the API server defaults)."""
    raw = spec.get("policyTypes")
    if raw is None:
        return ["ingress", "egress"] if spec.get("egress") else ["ingress"]
    if not isinstance(raw, list) or not raw:
        raise Unmappable(f"policyTypes: expected a non-empty list, got {quoted(raw)}")
    types: list[str] = []
    for entry in raw:
        if entry not in _TYPES:
            raise Unmappable(f"policyTypes: unknown type {quoted(entry)}")
        if _TYPES[entry] not in types:
            types.append(_TYPES[entry])
    return sorted(types, key=["ingress", "egress"].index)


def _rules(spec: dict[str, Any], direction: str, namespace: str, problems: list[str]) -> list[Any]:
    field, peers_field, side, _ = _DIRECTIONS[direction]
    try:
        entries = get_list(spec, field, "spec")
    except Unmappable as e:
        problems.append(f"{e}; allowing nothing for {direction}")
        return []
    rules: list[dict[str, object]] = []
    for i, entry in enumerate(entries):
        where = f"{field}[{i}]"
        try:
            if not isinstance(entry, dict):
                raise Unmappable(f"{where}: expected a map, got {quoted(entry)}")
            unknown = set(entry) - {"ports", peers_field}
            if unknown:
                raise Unmappable(f"{where}: unknown field(s) {quoted(sorted(unknown))}")
            ports = _each(get_list(entry, "ports", where), f"{where}.ports", _port, problems)
            matches = _each(
                get_list(entry, peers_field, where),
                f"{where}.{peers_field}",
                lambda peer, what: _peer(peer, what, side, namespace),
                problems,
            )
        except Unmappable as e:
            problems.append(f"{e}; rule left out")
            continue
        for port in ports:
            for match in matches:
                rules.append({"action": "allow", **port, **match})
    return rules


def _each(entries: list[Any], what: str, translate: Any, problems: list[str]) -> list[Any]:
    """Translated entries, flattened; [{}] (one "any") for an empty list. An entry that cannot be
    translated is left out, so a list that loses every entry matches nothing."""
    if not entries:
        return [{}]
    out: list[Any] = []
    for i, entry in enumerate(entries):
        try:
            out.extend(translate(entry, f"{what}[{i}]"))
        except Unmappable as e:
            problems.append(f"{e}; left out")
        if len(out) > MAX_RULES:
            raise Unmappable(f"{what}: more than {MAX_RULES} entries")
    return out


def _port(entry: object, what: str) -> list[dict[str, object]]:
    if not isinstance(entry, dict):
        raise Unmappable(f"{what}: expected a map, got {quoted(entry)}")
    unknown = set(entry) - _PORT_FIELDS
    if unknown:
        raise Unmappable(f"{what}: unknown field(s) {quoted(sorted(unknown))}")
    protocol = entry.get("protocol", "TCP")
    if protocol not in _PROTOCOLS:
        raise Unmappable(f"{what}: unsupported protocol {quoted(protocol)}")
    match: dict[str, object] = {"protocol": _PROTOCOLS[protocol]}
    port, end = entry.get("port"), entry.get("endPort")
    if isinstance(port, str):
        raise Unmappable(f"{what}: named port {quoted(port)} cannot be resolved by Felix")
    if port is None:
        if end is not None:
            raise Unmappable(f"{what}: endPort without port")
        return [match]
    if not _port_number(port):
        raise Unmappable(f"{what}: invalid port {quoted(port)}")
    if end is None or end == port:
        match["dst_ports"] = [port]
    elif _port_number(end) and end > port:
        match["dst_ports"] = [f"{port}:{end}"]
    else:
        raise Unmappable(f"{what}: invalid endPort {quoted(end)} for port {port}")
    return [match]


def _port_number(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def _peer(entry: object, what: str, side: str, namespace: str) -> list[dict[str, object]]:
    if not isinstance(entry, dict):
        raise Unmappable(f"{what}: expected a map, got {quoted(entry)}")
    unknown = set(entry) - _PEER_FIELDS
    if unknown:
        raise Unmappable(f"{what}: unknown field(s) {quoted(sorted(unknown))}")
    pod, ns, block = entry.get("podSelector"), entry.get("namespaceSelector"), entry.get("ipBlock")
    if block is not None:
        if pod is not None or ns is not None:
            raise Unmappable(f"{what}: ipBlock together with a selector")
        return [
            {"ip_version": net.version, f"{side}_net": str(net)}
            for net in _ip_block(block, f"{what}.ipBlock")
        ]
    if pod is None and ns is None:
        raise Unmappable(f"{what}: no podSelector, namespaceSelector or ipBlock")
    return [{f"{side}_selector": selectors.peer_selector(pod, ns, namespace, what)}]


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _network(text: object, what: str) -> Network:
    if not isinstance(text, str) or "%" in text:
        raise Unmappable(f"{what}: invalid CIDR {quoted(text)}")
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise Unmappable(f"{what}: invalid CIDR {quoted(text)}") from None


def _ip_block(block: object, what: str) -> list[Network]:
    """The block's CIDR minus its exceptions, as disjoint CIDRs."""
    if not isinstance(block, dict):
        raise Unmappable(f"{what}: expected a map, got {quoted(block)}")
    unknown = set(block) - {"cidr", "except"}
    if unknown:
        raise Unmappable(f"{what}: unknown field(s) {quoted(sorted(unknown))}")
    cidr = _network(block.get("cidr"), f"{what}.cidr")
    pieces: list[Network] = [cidr]
    for i, text in enumerate(get_list(block, "except", what)):
        hole = _network(text, f"{what}.except[{i}]")
        if hole.version != cidr.version:
            raise Unmappable(f"{what}.except[{i}]: {hole} is not of the CIDR's IP version")
        remaining: list[Network] = []
        for piece in pieces:
            if piece.subnet_of(hole):  # type: ignore[arg-type]  # same version, checked above
                continue
            if hole.subnet_of(piece):  # type: ignore[arg-type]
                remaining.extend(piece.address_exclude(hole))  # type: ignore[arg-type]
            else:
                remaining.append(piece)
        pieces = remaining
        if len(pieces) > MAX_PIECES:
            raise Unmappable(f"{what}: more than {MAX_PIECES} CIDRs after its exceptions")
    return sorted(pieces, key=lambda n: (n.network_address, n.prefixlen))
