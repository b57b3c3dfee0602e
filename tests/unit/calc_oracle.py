"""A brute-force statement of what the calc graph must compute, for the graph tests.

`expected_state(datastore, hostname, prefixes)` reads a whole datastore (path -> raw value) and
computes the dataplane state from scratch, the obvious way: no indexes, no reference counts, no
increments. It reuses the validated parsers and the selector evaluator (tested on their own) but
none of the graph's code, so agreement between the two is evidence about the graph.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

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
    parse_key,
)
from calico.common.selectors import parse_selector, tag_id
from calico.felix.calc import messages as m
from calico.felix.calc.checker import DataplaneState
from calico.felix.calc.rules import resolve_rules


def _try(parser, value, key):  # type: ignore[no-untyped-def]
    try:
        return parser(value, key)
    except res.InvalidValue:
        return None


def _inf(order: float | None) -> float:
    return math.inf if order is None else order


def expected_state(
    datastore: Mapping[str, str], hostname: str, prefixes: tuple[str, ...]
) -> DataplaneState:
    endpoints: dict[object, object] = {}
    rules: dict[str, res.ProfileRules] = {}
    tags: dict[str, tuple[str, ...]] = {}
    labels: dict[str, res.Labels] = {}
    tiers: dict[str, res.TierMetadata] = {}
    policies: dict[PolicyKey, res.Policy] = {}
    state = DataplaneState()
    for path, value in datastore.items():
        key = parse_key(path)
        if isinstance(key, WorkloadEndpointKey):
            ep = _try(res.parse_workload_endpoint, value, key)
            if ep is not None and key.hostname == hostname and not ep.name.startswith(prefixes):
                ep = None
            if ep is not None:
                endpoints[key] = ep
        elif isinstance(key, HostEndpointKey):
            if (hep := _try(res.parse_host_endpoint, value, key)) is not None:
                endpoints[key] = hep
        elif isinstance(key, ProfileRulesKey):
            if (r := _try(res.parse_profile_rules, value, key)) is not None:
                rules[key.profile] = r
        elif isinstance(key, ProfileTagsKey):
            if (t := _try(res.parse_profile_tags, value, key)) is not None:
                tags[key.profile] = t
        elif isinstance(key, ProfileLabelsKey):
            if (lab := _try(res.parse_profile_labels, value, key)) is not None:
                labels[key.profile] = lab
        elif isinstance(key, TierMetadataKey):
            if (tm := _try(res.parse_tier_metadata, value, key)) is not None:
                tiers[key.tier] = tm
        elif isinstance(key, PolicyKey):
            if (p := _try(res.parse_policy, value, key)) is not None:
                policies[key] = p
        elif isinstance(key, IPPoolKey):
            if (pool := _try(res.parse_ip_pool, value, key)) is not None:
                state.pools[key] = m.IPPoolUpdate(key, pool)

    def merged(ep) -> dict[str, str]:  # type: ignore[no-untyped-def]
        out: dict[str, str] = {}
        for pid in ep.profile_ids:
            out.update(labels.get(pid, {}))
        out.update(ep.labels)
        return out

    def ips(ep) -> set[str]:  # type: ignore[no-untyped-def]
        if isinstance(ep, res.WorkloadEndpoint):
            return {n.split("/")[0] for n in ep.ipv4_nets + ep.ipv6_nets}
        return set(ep.expected_ipv4_addrs + ep.expected_ipv6_addrs)

    local = {k: ep for k, ep in endpoints.items() if k.hostname == hostname}  # type: ignore[attr-defined]
    usable = {k: p for k, p in policies.items() if k.tier in tiers}

    def matching(key, ep, untracked: bool) -> list[PolicyKey]:  # type: ignore[no-untyped-def]
        if untracked and isinstance(key, WorkloadEndpointKey):
            return []
        found = [
            pk
            for pk, p in usable.items()
            if p.untracked == untracked and parse_selector(p.selector).evaluate(merged(ep))
        ]
        found.sort(
            key=lambda pk: (_inf(tiers[pk.tier].order), pk.tier, _inf(usable[pk].order), pk.policy)
        )
        return found

    def grouped(found: list[PolicyKey]) -> tuple[m.TierInfo, ...]:
        out: list[m.TierInfo] = []
        for pk in found:
            if out and out[-1].name == pk.tier:
                out[-1] = m.TierInfo(pk.tier, (*out[-1].policies, pk.policy))
            else:
                out.append(m.TierInfo(pk.tier, (pk.policy,)))
        return tuple(out)

    active_policies: set[PolicyKey] = set()
    active_profiles: set[str] = set()
    for key, ep in local.items():
        normal = matching(key, ep, untracked=False)
        untracked = matching(key, ep, untracked=True)
        active_policies.update(normal + untracked)
        active_profiles.update(ep.profile_ids)  # type: ignore[attr-defined]
        if isinstance(key, WorkloadEndpointKey):
            state.workload_endpoints[key] = m.WorkloadEndpointUpdate(key, ep, grouped(normal))  # type: ignore[arg-type]
        else:
            state.host_endpoints[key] = m.HostEndpointUpdate(  # type: ignore[index]
                key,
                ep,
                grouped(normal),
                grouped(untracked),  # type: ignore[arg-type]
            )

    used_rules: list[res.Rule] = []
    for pk in active_policies:
        p = usable[pk]
        state.policies[pk] = m.ActivePolicyUpdate(
            pk, resolve_rules(p.inbound_rules), resolve_rules(p.outbound_rules), p.untracked
        )
        used_rules += p.inbound_rules + p.outbound_rules
    for pid in active_profiles:
        if pid in rules:
            r = rules[pid]
            state.profiles[pid] = m.ActiveProfileUpdate(
                pid, resolve_rules(r.inbound_rules), resolve_rules(r.outbound_rules)
            )
            used_rules += r.inbound_rules + r.outbound_rules
        else:
            state.profiles[pid] = m.ActiveProfileUpdate(pid, m.DENY_ALL, m.DENY_ALL, stand_in=True)

    for rule in used_rules:
        for tag in (rule.src_tag, rule.not_src_tag, rule.dst_tag, rule.not_dst_tag):
            if tag is not None:
                members: set[str] = set()
                for ep in endpoints.values():
                    if any(tag in tags.get(pid, ()) for pid in ep.profile_ids):  # type: ignore[attr-defined]
                        members |= ips(ep)
                state.ip_sets[tag_id(tag)] = frozenset(members)
        for text in (
            rule.src_selector,
            rule.not_src_selector,
            rule.dst_selector,
            rule.not_dst_selector,
        ):
            if text is not None:
                sel = parse_selector(text)
                members = set()
                for ep in endpoints.values():
                    if sel.evaluate(merged(ep)):
                        members |= ips(ep)
                state.ip_sets[sel.unique_id] = frozenset(members)
    return state
