"""The rule scanner's pure half: resolve rules to IP-set IDs and list the sets they need.

Every tag and selector in an active rule becomes one IP set (felix.md §3.6): a tag's ID is
`selectors.tag_id(tag)` and a selector's is its `unique_id`, so the same selector written two ways
(`a == "x" && b == "y"` and `b == 'y' && a == 'x'`) shares one set.
"""

from __future__ import annotations

from collections.abc import Iterable

from calico.common.resources import Rule
from calico.common.selectors import Selector, parse_selector, tag_id
from calico.felix.calc.messages import ResolvedRule

# What an IP set contains: the endpoints carrying a tag (str) or matching a selector.
IPSetSource = str | Selector


def _set_ids(tag: str | None, selector: str | None) -> tuple[str, ...]:
    ids: list[str] = []
    if tag is not None:
        ids.append(tag_id(tag))
    if selector is not None:
        ids.append(parse_selector(selector).unique_id)
    return tuple(ids)


def resolve_rule(rule: Rule) -> ResolvedRule:
    return ResolvedRule(
        action=rule.action,
        ip_version=rule.ip_version,
        protocol=rule.protocol,
        not_protocol=rule.not_protocol,
        src_net=rule.src_net,
        not_src_net=rule.not_src_net,
        src_ip_set_ids=_set_ids(rule.src_tag, rule.src_selector),
        not_src_ip_set_ids=_set_ids(rule.not_src_tag, rule.not_src_selector),
        src_ports=rule.src_ports,
        not_src_ports=rule.not_src_ports,
        dst_net=rule.dst_net,
        not_dst_net=rule.not_dst_net,
        dst_ip_set_ids=_set_ids(rule.dst_tag, rule.dst_selector),
        not_dst_ip_set_ids=_set_ids(rule.not_dst_tag, rule.not_dst_selector),
        dst_ports=rule.dst_ports,
        not_dst_ports=rule.not_dst_ports,
        icmp_type=rule.icmp_type,
        not_icmp_type=rule.not_icmp_type,
        icmp_code=rule.icmp_code,
        not_icmp_code=rule.not_icmp_code,
        log_prefix=rule.log_prefix,
    )


def resolve_rules(rules: Iterable[Rule]) -> tuple[ResolvedRule, ...]:
    return tuple(resolve_rule(r) for r in rules)


def ip_set_sources(rules: Iterable[Rule]) -> dict[str, IPSetSource]:
    """Every IP set the rules use, by ID, with what it contains."""
    sources: dict[str, IPSetSource] = {}
    for rule in rules:
        for tag in (rule.src_tag, rule.not_src_tag, rule.dst_tag, rule.not_dst_tag):
            if tag is not None:
                sources[tag_id(tag)] = tag
        for text in (
            rule.src_selector,
            rule.not_src_selector,
            rule.dst_selector,
            rule.not_dst_selector,
        ):
            if text is not None:
                selector = parse_selector(text)
                sources[selector.unique_id] = selector
    return sources
