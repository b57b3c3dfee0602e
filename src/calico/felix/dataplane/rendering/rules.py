"""Rules (felix.md §5.6): one ResolvedRule as iptables rule specs, and the policy and profile
chains built from them. Pure."""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterable, Sequence

from calico.common import protocols
from calico.common.resources import Port
from calico.felix.calc.messages import ActivePolicyUpdate, ActiveProfileUpdate, ResolvedRule
from calico.felix.dataplane import names
from calico.felix.dataplane.rendering.base import (
    DEFAULT_LOG_PREFIX,
    ICMP_PROTOCOL,
    MAX_MULTIPORT_ENTRIES,
    Chains,
    RenderConfig,
    UnrenderableRule,
    drop_rules,
    join,
    log_target,
    mark_is_set,
    net_version,
    set_mark,
)

# --- rule rendering (§5.6) -------------------------------------------------------------------


def _protocol(proto: str) -> str:
    return protocols.iptables_name(proto)


def _port_entries(port: Port) -> int:
    return 2 if isinstance(port, str) and ":" in port else 1


def chunk_ports(ports: Sequence[Port]) -> list[list[Port]]:
    """Split a port list into multiport-sized chunks (at most 15 entries, a range counting 2)."""
    chunks: list[list[Port]] = []
    used = 0
    for port in ports:
        size = _port_entries(port)
        if not chunks or used + size > MAX_MULTIPORT_ENTRIES:
            chunks.append([])
            used = 0
        chunks[-1].append(port)
        used += size
    return chunks


def _multiport(direction: str, ports: Sequence[Port], negate: bool) -> str:
    flag = "--sports" if direction == "src" else "--dports"
    listed = ",".join(str(port) for port in ports)
    return f"-m multiport {'! ' if negate else ''}{flag} {listed}"


def _icmp(ip_version: int, icmp_type: int, code: int | None, negate: bool) -> str:
    value = f"{icmp_type}" if code is None else f"{icmp_type}/{code}"
    module, flag = ("icmp", "--icmp-type") if ip_version == 4 else ("icmp6", "--icmpv6-type")
    return f"-m {module} {'! ' if negate else ''}{flag} {value}"


def _in_family(rule: ResolvedRule, ip_version: int) -> bool:
    """False if the rule belongs only to the other family's table (§2.6: skip, don't widen)."""
    if rule.ip_version is not None and rule.ip_version != ip_version:
        return False
    nets = (rule.src_net, rule.not_src_net, rule.dst_net, rule.not_dst_net)
    if any(net is not None and net_version(net) != ip_version for net in nets):
        return False
    other_icmp = ICMP_PROTOCOL[10 - ip_version]
    return rule.protocol is None or _protocol(rule.protocol) != other_icmp


def _net_matches(flag: str, net: str | None, not_net: str | None) -> tuple[str, str] | None:
    """(basic match, extra match) for one side's nets; None if the rule can never match.

    iptables allows one ``-s``; when both a net and a negated net are given, the negation is
    dropped if disjoint (redundant), and otherwise written as an iprange match."""
    if net is None or not_net is None:
        if net is not None:
            return f"{flag} {net}", ""
        return (f"! {flag} {not_net}", "") if not_net is not None else ("", "")
    pos, neg = ipaddress.ip_network(net), ipaddress.ip_network(not_net)
    if not pos.overlaps(neg):
        return f"{flag} {net}", ""
    if pos.subnet_of(neg):  # type: ignore[arg-type]
        return None
    side = "--src-range" if flag == "-s" else "--dst-range"
    return f"{flag} {net}", f"-m iprange ! {side} {neg[0]}-{neg[-1]}"


def _basic_matches(rule: ResolvedRule) -> tuple[str, str] | None:
    """``-s -d -p`` in iptables-save's order, plus any iprange negations; None = never matches."""
    src = _net_matches("-s", rule.src_net, rule.not_src_net)
    dst = _net_matches("-d", rule.dst_net, rule.not_dst_net)
    if src is None or dst is None:
        return None
    proto = ""
    if rule.protocol is not None:
        if rule.not_protocol is not None and _protocol(rule.not_protocol) == _protocol(
            rule.protocol
        ):
            return None  # "tcp and not tcp"
        proto = f"-p {_protocol(rule.protocol)}"  # a different negated protocol is implied
    elif rule.not_protocol is not None:
        proto = f"! -p {_protocol(rule.not_protocol)}"
    return join(src[0], dst[0], proto), join(src[1], dst[1])


def _ipset_matches(ids: Iterable[str], side: str, ip_version: int, negate: bool) -> list[str]:
    bang = "! " if negate else ""
    return [f"-m set {bang}--match-set {names.ipset_name(i, ip_version)} {side}" for i in ids]


def _icmp_matches(rule: ResolvedRule, ip_version: int) -> tuple[str, str]:
    """(positive, negated) ICMP matches; they need the family's ICMP protocol."""
    pos = neg = ""
    if rule.icmp_type is not None:
        pos = _icmp(ip_version, rule.icmp_type, rule.icmp_code, negate=False)
    if rule.not_icmp_type is not None:
        neg = _icmp(ip_version, rule.not_icmp_type, rule.not_icmp_code, negate=True)
    wanted = ICMP_PROTOCOL[ip_version]
    if (pos or neg) and (rule.protocol is None or _protocol(rule.protocol) != wanted):
        raise UnrenderableRule(f"ICMP type match needs protocol {wanted}")
    return pos, neg


def _port_chunks(ports: tuple[Port, ...] | None) -> list[list[Port]]:
    return chunk_ports(ports) if ports else [[]]


def rule_matches(rule: ResolvedRule, ip_version: int) -> list[str]:
    """The match part of each iptables rule `rule` becomes ([] = skipped in this table).

    Usually one; long positive port lists make one per (src chunk x dst chunk), OR semantics.
    Positive matches come first, then the negated ones (§5.6)."""
    if not _in_family(rule, ip_version):
        return []
    basic = _basic_matches(rule)
    if basic is None:
        return []
    has_ports = rule.src_ports or rule.dst_ports or rule.not_src_ports or rule.not_dst_ports
    if has_ports and not protocols.has_ports(rule.protocol or ""):
        raise UnrenderableRule(f"port match needs a port protocol, not {rule.protocol!r}")
    icmp_pos, icmp_neg = _icmp_matches(rule, ip_version)
    negated = [
        basic[1],
        *_ipset_matches(rule.not_src_ip_set_ids, "src", ip_version, negate=True),
        *_ipset_matches(rule.not_dst_ip_set_ids, "dst", ip_version, negate=True),
        *[_multiport("src", c, True) for c in chunk_ports(rule.not_src_ports or ())],
        *[_multiport("dst", c, True) for c in chunk_ports(rule.not_dst_ports or ())],
        icmp_neg,
    ]
    sets = [
        *_ipset_matches(rule.src_ip_set_ids, "src", ip_version, negate=False),
        *_ipset_matches(rule.dst_ip_set_ids, "dst", ip_version, negate=False),
    ]
    out = []
    for src, dst in itertools.product(_port_chunks(rule.src_ports), _port_chunks(rule.dst_ports)):
        ports = [
            _multiport("src", src, False) if src else "",
            _multiport("dst", dst, False) if dst else "",
        ]
        out.append(join(basic[0], *sets, *ports, icmp_pos, *(n for n in negated if n)))
    return out


def render_rule(
    rule: ResolvedRule, ip_version: int, config: RenderConfig, in_profile: bool = False
) -> list[str]:
    """The iptables rules for one policy/profile rule in the `ip_version` table (§5.6).

    `in_profile`: a next-tier rule in a profile only ends that profile (the next one is tried,
    felix.md §2.5): it returns on its own match, without the NEXT-TIER mark, which may still be
    set from a tier that ended in next-tier (the mark would make it return for every packet).
    Raises UnrenderableRule for a rule the kernel would reject; `rules_chain` turns that into a
    drop (fail closed)."""
    matches = rule_matches(rule, ip_version)
    if not matches:
        return []
    prefix = f"{rule.log_prefix or DEFAULT_LOG_PREFIX}: "
    if rule.action == "next-tier" and in_profile:
        rules = []
        for match in matches:
            if rule.log_prefix:
                rules.append(join(match, log_target(prefix)))
            rules.append(join(match, "-j RETURN"))
        return rules
    if rule.action in ("allow", "next-tier"):
        mark = config.mark_accept if rule.action == "allow" else config.mark_next_tier
        rules = [join(m, set_mark(mark)) for m in matches]
        if rule.log_prefix:  # log what this rule let through, once, before returning
            rules.append(join(mark_is_set(mark), log_target(prefix)))
        return [*rules, join(mark_is_set(mark), "-j RETURN")]
    if rule.action == "deny":
        rules = []
        for match in matches:
            if rule.log_prefix:
                rules.append(join(match, log_target(prefix)))
            rules += drop_rules(config, match)
        return rules
    if rule.action == "log":
        return [join(m, log_target(prefix)) for m in matches]
    raise UnrenderableRule(f"unknown action {rule.action!r}")


def rules_chain(
    rules: Iterable[ResolvedRule], ip_version: int, config: RenderConfig, in_profile: bool = False
) -> list[str]:
    """A profile/policy chain body: each rule in order; an unrenderable rule becomes a drop."""
    out: list[str] = []
    for rule in rules:
        try:
            out += render_rule(rule, ip_version, config, in_profile)
        except UnrenderableRule:
            out += drop_rules(config, comment_text="ERROR failed to parse rules")
    return out


def policy_chains(update: ActivePolicyUpdate, ip_version: int, config: RenderConfig) -> Chains:
    """``felix-p-<tier/policy>-i`` and ``-o``. Untracked policies' chains go in the raw table."""
    tier, policy = update.id.tier, update.id.policy
    return {
        names.policy_chain(tier, policy, True): rules_chain(
            update.inbound_rules, ip_version, config
        ),
        names.policy_chain(tier, policy, False): rules_chain(
            update.outbound_rules, ip_version, config
        ),
    }


def profile_chains(update: ActiveProfileUpdate, ip_version: int, config: RenderConfig) -> Chains:
    """``felix-p-<profile>-i`` and ``-o`` (a stand-in profile arrives as deny-all rules)."""
    return {
        names.profile_chain(update.id, True): rules_chain(
            update.inbound_rules, ip_version, config, in_profile=True
        ),
        names.profile_chain(update.id, False): rules_chain(
            update.outbound_rules, ip_version, config, in_profile=True
        ),
    }
