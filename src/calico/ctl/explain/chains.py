"""The chains Felix programs for one endpoint in one direction, as Felix's renderer writes them
(`calico.felix.dataplane.rendering`), each rule annotated with what it stands for: which tier,
policy or profile, which of its rules, or which step of the endpoint chain (felix.md §5.5).

The annotated chains are rebuilt from the same builders the renderer uses and then compared
with the renderer's own output; any difference is a `ModelMismatch` (explain refuses to explain
chains it does not recognise), so the annotations cannot drift from what Felix programs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from calico.common import resources as res
from calico.common.datamodel_v1 import PolicyKey, WorkloadEndpointKey
from calico.felix.calc import messages as m
from calico.felix.dataplane import names
from calico.felix.dataplane.rendering import (
    RenderConfig,
    UnrenderableRule,
    drop_rules,
    policy_chains,
    profile_chains,
    render_rule,
    workload_endpoint_chains,
)
from calico.felix.dataplane.rendering.base import (
    clear_mark,
    comment,
    join,
    mark_is_clear,
    mark_is_set,
)

START, MAC, TIER, POLICY, POLICY_ACCEPTED, TIER_END = (
    "start",
    "mac",
    "tier",
    "policy",
    "policy-accepted",
    "tier-end",
)
PROFILE, PROFILE_ACCEPTED, FINAL_DROP, RULE = "profile", "profile-accepted", "final-drop", "rule"


class ModelMismatch(RuntimeError):
    """explain's reconstruction of a chain differs from the renderer's (a bug to report)."""


@dataclass(frozen=True)
class Note:
    role: str
    tier: str | None = None
    holder: str | None = None  # the policy or profile chain this line jumps to or belongs to
    rule: int | None = None  # 0-based rule index within its policy or profile


@dataclass
class Holder:
    """A policy or profile as programmed: its chain, rules (resolved and as written) and the
    lines each rule became (None: the rule could not be rendered and became a drop)."""

    kind: str  # "policy" or "profile"
    name: str  # "tier/policy" or the profile ID
    chain: str
    resolved: tuple[m.ResolvedRule, ...]
    written: tuple[res.Rule, ...] | None  # None for a deny-all stand-in
    stand_in: bool = False
    renders: list[list[str]] = field(default_factory=list)
    unrenderable: dict[int, str] = field(default_factory=dict)  # rule index -> reason


@dataclass
class Table:
    """Every chain a packet can reach from one endpoint chain, with the annotations."""

    entry: str
    chains: dict[str, list[str]]
    notes: dict[tuple[str, int], Note]
    holders: dict[str, Holder]


def endpoint_table(
    update: m.WorkloadEndpointUpdate,
    inbound: bool,
    ip_version: int,
    config: RenderConfig,
    state_policies: dict[PolicyKey, m.ActivePolicyUpdate],
    state_profiles: dict[str, m.ActiveProfileUpdate],
    written: dict[str, tuple[tuple[res.Rule, ...], tuple[res.Rule, ...]]],
) -> Table:
    """The chains of `update`'s to-chain (`inbound`) or from-chain, annotated. `written` holds
    the rules as stored (inbound, outbound) by holder name, for descriptions."""
    direction = "to" if inbound else "from"
    entry = names.endpoint_chain(direction, update.endpoint.name, config.interface_prefixes)
    annotated = _endpoint_lines(update, inbound, config)
    rendered = workload_endpoint_chains(update, ip_version, config)
    if [line for line, _ in annotated] != rendered.get(entry):
        raise ModelMismatch(f"the renderer's {entry} differs from explain's reconstruction")
    table = Table(entry, {entry: [line for line, _ in annotated]}, {}, {})
    for i, (_, note) in enumerate(annotated):
        table.notes[(entry, i)] = note
    for tier in update.tiers:
        for policy in tier.policies:
            key = PolicyKey(tier.name, policy)
            pupdate = state_policies[key]
            rules = pupdate.inbound_rules if inbound else pupdate.outbound_rules
            name = f"{tier.name}/{policy}"
            chain = names.policy_chain(tier.name, policy, inbound)
            holder = Holder("policy", name, chain, rules, _pick(written.get(name), inbound))
            expected = policy_chains(pupdate, ip_version, config)[chain]
            _add_holder(table, holder, ip_version, config, expected)
    for profile_id in update.endpoint.profile_ids:
        prof = state_profiles[profile_id]
        rules = prof.inbound_rules if inbound else prof.outbound_rules
        chain = names.profile_chain(profile_id, inbound)
        stand_in = prof.stand_in
        holder = Holder(
            "profile",
            profile_id,
            chain,
            rules,
            None if stand_in else _pick(written.get(profile_id), inbound),
            stand_in,
        )
        expected = profile_chains(prof, ip_version, config)[chain]
        _add_holder(table, holder, ip_version, config, expected)
    return table


def _pick(
    rules: tuple[tuple[res.Rule, ...], tuple[res.Rule, ...]] | None, inbound: bool
) -> tuple[res.Rule, ...] | None:
    if rules is None:
        return None
    return rules[0] if inbound else rules[1]


def _add_holder(
    table: Table, holder: Holder, ip_version: int, config: RenderConfig, expected: list[str]
) -> None:
    lines: list[str] = []
    for index, rule in enumerate(holder.resolved):
        try:
            rendered = render_rule(rule, ip_version, config, holder.kind == "profile")
        except UnrenderableRule as e:
            rendered = drop_rules(config, comment_text="ERROR failed to parse rules")
            holder.unrenderable[index] = str(e)
        holder.renders.append(rendered)
        for line in rendered:
            table.notes[(holder.chain, len(lines))] = Note(RULE, holder=holder.chain, rule=index)
            lines.append(line)
    if lines != expected:
        raise ModelMismatch(f"the renderer's {holder.chain} differs from explain's reconstruction")
    table.chains[holder.chain] = lines
    table.holders[holder.chain] = holder


def _endpoint_lines(
    update: m.WorkloadEndpointUpdate, inbound: bool, config: RenderConfig
) -> list[tuple[str, Note]]:
    """§5.5 steps for one workload endpoint chain, in the renderer's order, with notes."""
    accept, next_tier = config.mark_accept, config.mark_next_tier
    endpoint = update.endpoint
    out: list[tuple[str, Note]] = [(clear_mark(accept), Note(START))]
    if not inbound and endpoint.mac:
        match = f"-m mac ! --mac-source {endpoint.mac}"
        out += [(line, Note(MAC)) for line in drop_rules(config, match, "Incorrect source MAC")]
    for tier in update.tiers:
        if not tier.policies:
            continue
        out.append(
            (
                join(comment(f"Start of tier {tier.name}"), clear_mark(next_tier)),
                Note(TIER, tier.name),
            )
        )
        for policy in tier.policies:
            chain = names.policy_chain(tier.name, policy, inbound)
            out.append(
                (join(mark_is_clear(next_tier), f"-j {chain}"), Note(POLICY, tier.name, chain))
            )
            accepted = join(mark_is_set(accept), comment("Return if policy accepted"), "-j RETURN")
            out.append((accepted, Note(POLICY_ACCEPTED, tier.name, chain)))
        drops = drop_rules(config, mark_is_clear(next_tier), "Drop if no policy in tier passed")
        out += [(line, Note(TIER_END, tier.name)) for line in drops]
    for profile in endpoint.profile_ids:
        chain = names.profile_chain(profile, inbound)
        out.append((f"-j {chain}", Note(PROFILE, holder=chain)))
        accepted = join(mark_is_set(accept), comment("Profile accepted packet"), "-j RETURN")
        out.append((accepted, Note(PROFILE_ACCEPTED, holder=chain)))
    key: WorkloadEndpointKey = update.id
    endpoint_id = f"{key.orchestrator}/{key.workload}/{key.endpoint}"
    final = f"Packet did not match any profile (endpoint {endpoint_id})"
    out += [(line, Note(FINAL_DROP)) for line in drop_rules(config, comment_text=final)]
    return out
