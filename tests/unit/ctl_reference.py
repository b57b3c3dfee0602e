"""A second statement of what a packet meets in Felix's chains, for `explain`'s tests.

It reads the dataplane state computed by the brute-force calc-graph oracle
(`calc_oracle.expected_state`, none of the graph's code) and evaluates rules by their meaning
(felix.md §2.6, §5.5, §5.6: address, protocol, port and ICMP matches, IP-set membership,
negations, rules of the other IP version skipped), never through iptables text. Where the
dataplane's behaviour is a consequence of how it is rendered, the renderer's rule is restated
here explicitly and commented: a rule whose net lies inside its negated net, or whose protocol
equals its negated protocol, is never written; an ICMP match without the family's ICMP protocol
cannot be written and becomes a drop; policy chains pass their verdicts back in the ACCEPT and
NEXT-TIER mark bits, and a next-tier rule in a profile only ends that profile, on its own match.

Verdicts: ("allow" | "deny", decider), the decider naming the step that decided:
("policy", tier, policy, rule index), ("tier-end", tier), ("profile", profile, rule index),
("final",), ("no-chains",).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from calico.common import protocols
from calico.common.datamodel_v1 import PolicyKey, WorkloadEndpointKey
from calico.felix.calc import messages as m
from calico.felix.calc.checker import DataplaneState

Decider = tuple[object, ...]
ICMP = {4: protocols.ICMP, 6: protocols.ICMPV6}


@dataclass(frozen=True)
class Pkt:
    version: int
    protocol: int
    src: str
    dst: str
    src_port: int | None
    dst_port: int | None
    icmp_type: int | None
    icmp_code: int | None


def _net_version(net: str) -> int:
    return ipaddress.ip_network(net, strict=False).version


def _in(addr: str, net: str) -> bool:
    return ipaddress.ip_address(addr) in ipaddress.ip_network(net, strict=False)


def _ports(port: int | None, entries: tuple[object, ...]) -> bool:
    assert port is not None
    for entry in entries:
        lo, _, hi = str(entry).partition(":")
        if int(lo) <= port <= int(hi or lo):
            return True
    return False


def written(rule: m.ResolvedRule, version: int) -> str:
    """ "skip" (not in this family's table, or never matches), "drop" (cannot be rendered),
    or "ok"."""
    if rule.ip_version is not None and rule.ip_version != version:
        return "skip"
    nets = (rule.src_net, rule.not_src_net, rule.dst_net, rule.not_dst_net)
    if any(n is not None and _net_version(n) != version for n in nets):
        return "skip"
    proto = protocols.number(rule.protocol) if rule.protocol is not None else None
    if proto == ICMP[10 - version]:
        return "skip"
    for net, not_net in ((rule.src_net, rule.not_src_net), (rule.dst_net, rule.not_dst_net)):
        if net is not None and not_net is not None:
            pos, neg = ipaddress.ip_network(net), ipaddress.ip_network(not_net)
            if pos.overlaps(neg) and pos.subnet_of(neg):  # type: ignore[arg-type]
                return "skip"  # can never match: the renderer writes nothing
    if rule.protocol is not None and rule.not_protocol is not None:
        if protocols.number(rule.not_protocol) == proto:
            return "skip"
    if (rule.icmp_type is not None or rule.not_icmp_type is not None) and proto != ICMP[version]:
        return "drop"
    return "ok"


def matches(rule: m.ResolvedRule, p: Pkt, sets: Mapping[str, frozenset[str]]) -> bool:
    if rule.protocol is not None and protocols.number(rule.protocol) != p.protocol:
        return False
    if rule.not_protocol is not None and protocols.number(rule.not_protocol) == p.protocol:
        return False
    for addr, net, not_net, ids, not_ids in (
        (p.src, rule.src_net, rule.not_src_net, rule.src_ip_set_ids, rule.not_src_ip_set_ids),
        (p.dst, rule.dst_net, rule.not_dst_net, rule.dst_ip_set_ids, rule.not_dst_ip_set_ids),
    ):
        if net is not None and not _in(addr, net):
            return False
        if not_net is not None and _in(addr, not_net):
            return False
        if any(addr not in sets[i] for i in ids):
            return False
        if any(addr in sets[i] for i in not_ids):
            return False
    for port, ports, not_ports in (
        (p.src_port, rule.src_ports, rule.not_src_ports),
        (p.dst_port, rule.dst_ports, rule.not_dst_ports),
    ):
        if ports is not None and not _ports(port, ports):
            return False
        if not_ports is not None and _ports(port, not_ports):
            return False

    def icmp(t: int, c: int | None) -> bool:
        return p.icmp_type == t and (c is None or p.icmp_code == c)

    if rule.icmp_type is not None and not icmp(rule.icmp_type, rule.icmp_code):
        return False
    return rule.not_icmp_type is None or not icmp(rule.not_icmp_type, rule.not_icmp_code)


class Marks:
    def __init__(self) -> None:
        self.accept = False
        self.next_tier = False


def _chain(
    rules: tuple[m.ResolvedRule, ...],
    p: Pkt,
    sets: Mapping[str, frozenset[str]],
    marks: Marks,
    in_profile: bool = False,
) -> tuple[str, int | None]:
    """("drop" | "return" | "end", index of the deciding rule)."""
    for i, rule in enumerate(rules):
        how = written(rule, p.version)
        if how == "skip":
            continue
        if how == "drop":
            return "drop", i
        hit = matches(rule, p, sets)
        if rule.action == "deny" and hit:
            return "drop", i
        if rule.action == "allow":
            marks.accept = marks.accept or hit
            if marks.accept:
                return "return", i
        if rule.action == "next-tier" and in_profile:
            if hit:  # ends this profile; the next one is tried
                return "return", i
        elif rule.action == "next-tier":
            marks.next_tier = marks.next_tier or hit
            if marks.next_tier:
                return "return", i
    return "end", None


def leg(
    state: DataplaneState,
    key: WorkloadEndpointKey,
    inbound: bool,
    p: Pkt,
) -> tuple[str, Decider]:
    update = state.workload_endpoints.get(key)
    if update is None or not update.endpoint.active:
        return "deny", ("no-chains",)
    sets = {
        i: frozenset(a for a in members if ipaddress.ip_address(a).version == p.version)
        for i, members in state.ip_sets.items()
    }
    marks = Marks()
    for tier in update.tiers:
        if not tier.policies:
            continue
        marks.next_tier = False
        for name in tier.policies:
            if marks.next_tier:
                continue
            pol = state.policies[PolicyKey(tier.name, name)]
            rules = pol.inbound_rules if inbound else pol.outbound_rules
            outcome, index = _chain(rules, p, sets, marks)
            if outcome == "drop":
                return "deny", ("policy", tier.name, name, index)
            if marks.accept:
                return "allow", ("policy", tier.name, name, index)
        if not marks.next_tier:
            return "deny", ("tier-end", tier.name)
    for profile_id in update.endpoint.profile_ids:
        prof = state.profiles[profile_id]
        rules = prof.inbound_rules if inbound else prof.outbound_rules
        outcome, index = _chain(rules, p, sets, marks, in_profile=True)
        if outcome == "drop":
            return "deny", ("profile", profile_id, index)
        if marks.accept:
            return "allow", ("profile", profile_id, index)
    return "deny", ("final",)
