"""Rules (felix.md §5.6) as nftables rules, and the policy and profile chains built from them.
Pure.

One chain serves both IP families. A rule that names nothing family-specific is written once;
one that does (nets, IP sets, ICMP, an ``ip_version``) is written once per family it applies
to, with ``ip``/``ip6`` matches (which only match their own family) or ``meta nfproto``. So a
rule of one family never matches the other's packets, as the iptables backend leaves such a
rule out of the other family's table.

Ports and ICMP are written without anonymous sets: a positive port list becomes one rule per
(source port, destination port) pair (OR, like the iptables backend's multiport chunks), a
negated list one ``!=`` match per entry (AND). nft 1.0.6 dumps every anonymous interval set of
the ruleset before each element update, so sets inside thousands of rules would make every IP
set change slow.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

from calico.common import protocols
from calico.common.resources import Port
from calico.felix.calc.messages import ActivePolicyUpdate, ActiveProfileUpdate, ResolvedRule
from calico.felix.dataplane import names
from calico.felix.dataplane.nft_rendering import names as nft_names
from calico.felix.dataplane.nft_rendering.base import (
    ADDR_KEYWORD,
    FAMILY_MATCH,
    LOG_PREFIX,
    Chain,
    drop_rules,
    join,
    log,
    mark_is_set,
    set_mark,
)
from calico.felix.dataplane.rendering.base import RenderConfig, UnrenderableRule, net_version

_ICMP = {4: protocols.ICMP, 6: protocols.ICMPV6}
_ICMP_KEYWORD = {4: "icmp", 6: "icmpv6"}


def _proto(protocol: str) -> int:
    number = protocols.number(protocol)
    if number is None or not 0 <= number <= 255:
        raise UnrenderableRule(f"unknown protocol {protocol[:20]!r}")
    return number


def _families(rule: ResolvedRule) -> tuple[tuple[int, ...], bool]:
    """The families the rule applies to, and whether it must say so (False: one neutral rule)."""
    wanted = {4, 6} if rule.ip_version is None else {rule.ip_version}
    specific = rule.ip_version is not None
    for net in (rule.src_net, rule.not_src_net, rule.dst_net, rule.not_dst_net):
        if net is not None:
            wanted &= {net_version(net)}
            specific = True
    for proto in (rule.protocol,):
        if proto is not None and _proto(proto) in _ICMP.values():
            wanted &= {4 if _proto(proto) == protocols.ICMP else 6}
            specific = True
    sets = (rule.src_ip_set_ids, rule.dst_ip_set_ids, rule.not_src_ip_set_ids)
    if any(sets) or rule.not_dst_ip_set_ids:
        specific = True
    return tuple(sorted(wanted)), specific


def _ports(field: str, ports: Sequence[Port], negate: bool) -> list[str]:
    op = "!= " if negate else ""
    return [f"th {field} {op}{str(port).replace(':', '-')}" for port in ports]


def _icmp(rule: ResolvedRule, v: int) -> str:
    """The positive and negated ICMP type/code matches of the family's ICMP."""
    kw = _ICMP_KEYWORD[v]
    parts = []
    if rule.icmp_type is not None:
        parts.append(f"{kw} type {rule.icmp_type}")
        if rule.icmp_code is not None:
            parts.append(f"{kw} code {rule.icmp_code}")
    if rule.not_icmp_type is not None:
        if rule.not_icmp_code is None:
            parts.append(f"{kw} type != {rule.not_icmp_type}")
        else:  # not (type T and code C)
            pair = f"{rule.not_icmp_type} . {rule.not_icmp_code}"
            parts.append(f"{kw} type . {kw} code != {{ {pair} }}")
    if parts and (rule.protocol is None or _proto(rule.protocol) != _ICMP[v]):
        raise UnrenderableRule(f"ICMP type match needs protocol {kw}")
    return join(*parts)


def _family_matches(rule: ResolvedRule, v: int, specific: bool) -> str:
    """The address, set and ICMP matches of one family (empty for a neutral rule)."""
    addr = ADDR_KEYWORD[v]
    parts = []
    for side, net, not_net in (
        ("saddr", rule.src_net, rule.not_src_net),
        ("daddr", rule.dst_net, rule.not_dst_net),
    ):
        if net is not None:
            parts.append(f"{addr} {side} {net}")
        if not_net is not None:
            parts.append(f"{addr} {side} != {not_net}")
    for side, ids, op in (
        ("saddr", rule.src_ip_set_ids, ""),
        ("daddr", rule.dst_ip_set_ids, ""),
        ("saddr", rule.not_src_ip_set_ids, "!= "),
        ("daddr", rule.not_dst_ip_set_ids, "!= "),
    ):
        parts += [f"{addr} {side} {op}@{nft_names.set_name(i, v)}" for i in ids]
    parts.append(_icmp(rule, v))
    text = join(*parts)
    if specific and not any(p.startswith(f"{addr} ") for p in parts if p):
        text = join(FAMILY_MATCH[v], text)  # say the family: ip_version, or ICMP alone
    return text


def rule_matches(rule: ResolvedRule) -> list[str]:
    """The match part of each nft rule `rule` becomes ([] = it can never match)."""
    has_ports = rule.src_ports or rule.dst_ports or rule.not_src_ports or rule.not_dst_ports
    if has_ports and not protocols.has_ports(rule.protocol or ""):
        raise UnrenderableRule(f"port match needs a port protocol, not {rule.protocol!r}")
    has_icmp = rule.icmp_type is not None or rule.not_icmp_type is not None
    if has_icmp and (rule.protocol is None or _proto(rule.protocol) not in _ICMP.values()):
        raise UnrenderableRule(f"ICMP type match needs an ICMP protocol, not {rule.protocol!r}")
    families, specific = _families(rule)
    proto = ""
    if rule.protocol is not None:
        if rule.not_protocol is not None and _proto(rule.not_protocol) == _proto(rule.protocol):
            return []  # "tcp and not tcp"
        proto = f"meta l4proto {_proto(rule.protocol)}"
    elif rule.not_protocol is not None:
        proto = f"meta l4proto != {_proto(rule.not_protocol)}"
    negated = [
        *_ports("sport", rule.not_src_ports or (), True),
        *_ports("dport", rule.not_dst_ports or (), True),
    ]
    src_ports = _ports("sport", rule.src_ports or (), False) or [""]
    dst_ports = _ports("dport", rule.dst_ports or (), False) or [""]
    out = []
    for v in families if specific else (0,):
        family = _family_matches(rule, v, specific) if v else ""
        for src, dst in itertools.product(src_ports, dst_ports):
            out.append(join(proto, family, src, dst, *negated))
    return out


def render_rule(
    rule: ResolvedRule, config: RenderConfig, untracked: bool = False, in_profile: bool = False
) -> list[str]:
    """The nft rules of one policy/profile rule (§5.6); UnrenderableRule for a rule the kernel
    could not load (`rules_chain` turns it into a drop: fail closed).

    An allow is ``accept``: each direction of policy has a base chain of its own, so accepting
    ends only that direction's evaluation (`static`). `untracked` (the raw hooks' copies of
    untracked policies): an allow sets the ACCEPT bit and returns, as in the iptables backend,
    and the raw chain untracks the packet. `in_profile`: a next-tier rule in a profile ends only
    that profile, on its own match (felix.md §2.5); the NEXT-TIER mark may still be set from a
    tier that ended in next-tier, so returning on the mark would skip the profile's later rules
    for every packet (the iptables rendering does the same)."""
    matches = rule_matches(rule)
    if not matches:
        return []
    prefix = f"{rule.log_prefix or LOG_PREFIX}: "
    if rule.action == "allow" and not untracked:
        logged = log(prefix) if rule.log_prefix else ""
        return [join(m, logged, "accept") for m in matches]
    if rule.action == "next-tier" and in_profile:
        logged = log(prefix) if rule.log_prefix else ""
        return [join(m, logged, "return") for m in matches]
    if rule.action in ("allow", "next-tier"):
        mark = config.mark_accept if rule.action == "allow" else config.mark_next_tier
        rules = [join(m, set_mark(mark)) for m in matches]
        if rule.log_prefix:  # log what this rule let through, once, before returning
            rules.append(join(mark_is_set(mark), log(prefix)))
        return [*rules, join(mark_is_set(mark), "return")]
    if rule.action == "deny":
        rules = []
        for match in matches:
            if rule.log_prefix:
                rules.append(join(match, log(prefix)))
            rules += drop_rules(config, match)
        return rules
    if rule.action == "log":
        return [join(m, log(prefix)) for m in matches]
    raise UnrenderableRule(f"unknown action {rule.action!r}")


def rules_chain(
    rules: Iterable[ResolvedRule],
    config: RenderConfig,
    untracked: bool = False,
    in_profile: bool = False,
) -> Chain:
    """A profile/policy chain: each rule in order; an unrenderable rule becomes a drop."""
    out: list[str] = []
    for rule in rules:
        try:
            out += render_rule(rule, config, untracked, in_profile)
        except UnrenderableRule:
            out += drop_rules(config, comment_text="ERROR failed to parse rules")
    return Chain(tuple(out))


def policy_chains(update: ActivePolicyUpdate, config: RenderConfig) -> dict[str, Chain]:
    """``felix-p-<tier/policy>-i`` and ``-o``, shared by both families; an untracked policy
    also gets its raw hooks' copies ``felix-raw-p-...`` (allow = ACCEPT bit, untracked)."""
    tier, policy = update.id.tier, update.id.policy
    chains = {
        names.policy_chain(tier, policy, True): rules_chain(update.inbound_rules, config),
        names.policy_chain(tier, policy, False): rules_chain(update.outbound_rules, config),
    }
    if update.untracked:
        for inbound, rules in ((True, update.inbound_rules), (False, update.outbound_rules)):
            raw = nft_names.raw_policy_chain(names.policy_chain(tier, policy, inbound))
            chains[raw] = rules_chain(rules, config, untracked=True)
    return chains


def profile_chains(update: ActiveProfileUpdate, config: RenderConfig) -> dict[str, Chain]:
    """``felix-p-<profile>-i`` and ``-o`` (a stand-in profile arrives as deny-all rules)."""
    return {
        names.profile_chain(update.id, True): rules_chain(
            update.inbound_rules, config, in_profile=True
        ),
        names.profile_chain(update.id, False): rules_chain(
            update.outbound_rules, config, in_profile=True
        ),
    }
