"""One leg of a flow through one endpoint's chains: run the packet through the annotated chains
(`chains.Table`) with the iptables evaluator, then read the evaluator's events back as tiers,
policies, profiles and rules: which rule matched, which did not and why, where the packet was
dropped or accepted."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from calico.common import resources as res
from calico.ctl.explain import chains as c
from calico.ctl.explain.iptables import ACCEPT, DROP, RETURN, Event, Machine, Packet
from calico.felix.calc import messages as m

ALLOW, DENY = "allow", "deny"
TERMINAL = ("allow", "next-tier", "deny")


@dataclass
class RuleStep:
    index: int  # 1-based, as an operator counts
    text: str
    outcome: str
    detail: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class HolderStep:
    kind: str  # "policy" or "profile"
    name: str
    outcome: str = "not reached"
    note: str | None = None
    rules: list[RuleStep] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "name": self.name, "outcome": self.outcome}
        if self.note:
            out["note"] = self.note
        out["rules"] = [r.as_json() for r in self.rules]
        return out


@dataclass
class TierStep:
    name: str
    outcome: str = "not reached"
    policies: list[HolderStep] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "outcome": self.outcome,
            "policies": [p.as_json() for p in self.policies],
        }


@dataclass
class Leg:
    """Egress of the source (its from-chain) or ingress of the destination (its to-chain)."""

    direction: str  # "egress" or "ingress"
    endpoint: str
    host: str
    verdict: str = DENY
    reason: str = ""
    chain: str | None = None
    tiers: list[TierStep] = field(default_factory=list)
    profiles: list[HolderStep] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "endpoint": self.endpoint,
            "host": self.host,
            "chain": self.chain,
            "tiers": [t.as_json() for t in self.tiers],
            "profiles": [p.as_json() for p in self.profiles],
            "verdict": self.verdict,
            "reason": self.reason,
            "notes": self.notes,
        }


def run_leg(
    leg: Leg,
    table: c.Table,
    ipsets: Mapping[str, frozenset[str]],
    packet: Packet,
    set_labels: Mapping[str, str],
) -> None:
    """Fill in `leg` from the packet's walk through `table`."""
    machine = Machine(table.chains, ipsets, packet, set_labels)
    outcome = machine.run(table.entry)
    leg.chain = table.entry
    _read_events(leg, table, machine.events)
    leg.verdict = DENY if outcome == DROP else ALLOW
    if outcome == ACCEPT and not leg.reason:
        leg.reason = "accepted"
    if outcome == RETURN and not leg.reason:
        leg.reason = "allowed"


def _read_events(leg: Leg, table: c.Table, events: list[Event]) -> None:
    by_holder: dict[str, list[Event]] = {}
    steps: dict[str, HolderStep] = {}
    tier: TierStep | None = None
    for event in events:
        note = table.notes[(event.chain, event.index)]
        if note.role == c.RULE:
            by_holder.setdefault(event.chain, []).append(event)
            continue
        holder = table.holders.get(note.holder or "")
        if note.role == c.MAC and event.matched:
            leg.reason = _dropped(event, "the source MAC is not the endpoint's")
        elif note.role == c.TIER:
            tier = TierStep(note.tier or "")
            leg.tiers.append(tier)
        elif note.role == c.POLICY and tier is not None and holder is not None:
            step = HolderStep("policy", holder.name.partition("/")[2])
            if not event.matched:
                step.outcome = "skipped: an earlier policy in this tier said next-tier"
            tier.policies.append(step)
            steps[holder.chain] = step
        elif note.role == c.POLICY_ACCEPTED and event.matched and tier is not None:
            tier.outcome = f"allowed by policy {_short(note.holder, table)}"
            leg.reason = f"allowed by tier {tier.name}, policy {_short(note.holder, table)}"
        elif note.role == c.TIER_END and tier is not None:
            if event.matched and event.target in (DROP, "ACCEPT"):
                tier.outcome = "no policy allowed or passed the packet: end-of-tier drop"
                leg.reason = _dropped(event, f"end of tier {tier.name}: no policy passed it")
            elif not event.matched and event.target is None:
                tier.outcome = "next-tier: on to the next tier"
        elif note.role == c.PROFILE and holder is not None:
            step = HolderStep("profile", holder.name)
            if holder.stand_in:
                step.note = "missing or invalid: Felix programs a deny-all stand-in"
            leg.profiles.append(step)
            steps[holder.chain] = step
        elif note.role == c.PROFILE_ACCEPTED and event.matched:
            leg.reason = f"allowed by profile {_short(note.holder, table)}"
        elif note.role == c.FINAL_DROP and event.matched and event.target in (DROP, "ACCEPT"):
            what = (
                "no profile allowed the packet" if leg.profiles else "the endpoint has no profile"
            )
            leg.reason = _dropped(event, f"{what}: the endpoint chain's final drop")
    for chain, step in steps.items():
        _fill_holder(step, table.holders[chain], by_holder.get(chain, []), leg)
    for tier_step in leg.tiers:
        for policy in tier_step.policies:
            if tier_step.outcome == "not reached" and policy.outcome.endswith(
                ("deny", "(cannot be programmed)")
            ):
                tier_step.outcome = f"dropped by policy {policy.name}"


def _short(chain: str | None, table: c.Table) -> str:
    holder = table.holders.get(chain or "")
    if holder is None:
        return "?"
    return holder.name.partition("/")[2] if holder.kind == "policy" else holder.name


def _dropped(event: Event, why: str) -> str:
    if event.target == ACCEPT:
        return f"{why}, but DropActionOverride accepts what Felix would drop"
    return why


def _fill_holder(step: HolderStep, holder: c.Holder, events: list[Event], leg: Leg) -> None:
    if step.outcome.startswith("skipped"):
        return
    line_rule: list[int] = []
    for index, lines in enumerate(holder.renders):
        line_rule += [index] * len(lines)
    per_rule: dict[int, list[Event]] = {}
    for event in events:
        per_rule.setdefault(line_rule[event.index], []).append(event)
    ended = any(e.matched and e.target in (RETURN, DROP, ACCEPT) for e in events)
    last = max(per_rule) if per_rule else -1
    shown = range(len(holder.resolved)) if not ended else range(last + 1)
    step.outcome = "no rule matched" if holder.resolved else "no rules"
    for index in shown:
        rule_step = _rule_step(holder, index, per_rule.get(index))
        step.rules.append(rule_step)
        if rule_step.outcome in TERMINAL or rule_step.outcome.startswith(("drop", "return")):
            step.outcome = f"rule {index + 1}: {rule_step.outcome}"
    if step.outcome.endswith(("deny", "(cannot be programmed)")):
        done = "accepted (DropActionOverride)" if _accepted(events) else "dropped"
        leg.reason = f"{step.kind} {step.name}, {step.outcome}: {done}"


def _accepted(events: list[Event]) -> bool:
    return any(e.matched and e.target == ACCEPT for e in events)


def _rule_step(holder: c.Holder, index: int, events: list[Event] | None) -> RuleStep:
    text = describe(holder, index)
    if not holder.renders[index]:
        return RuleStep(index + 1, text, "skipped", "not in this IP version's table")
    if not events:
        return RuleStep(index + 1, text, "not reached")
    targets = {e.target for e in events if e.matched}
    if index in holder.unrenderable and targets & {DROP, ACCEPT}:
        why = holder.unrenderable[index]
        return RuleStep(index + 1, text, "drop (cannot be programmed)", why)
    action = holder.resolved[index].action
    if "MARK" in targets:
        return RuleStep(index + 1, text, action)
    if targets & {DROP, ACCEPT}:
        return RuleStep(index + 1, text, "deny")
    if RETURN in targets:
        return RuleStep(index + 1, text, "next-tier: on to the next profile")
    if "LOG" in targets:
        return RuleStep(index + 1, text, "log")
    failed = next((e.failed for e in events if e.failed), None)
    return RuleStep(index + 1, text, "no match", failed)


def describe(holder: c.Holder, index: int) -> str:
    """A rule as written in etcd (tags and selectors, not IP-set IDs)."""
    if holder.written is None or index >= len(holder.written):
        return _describe_fields(holder.resolved[index])
    return _describe_fields(holder.written[index])


def _describe_fields(rule: res.Rule | m.ResolvedRule) -> str:
    parts = [rule.action]
    for name in rule.__slots__:  # type: ignore[union-attr]
        if name in ("action", "log_prefix"):
            continue
        value = getattr(rule, name)
        if value is None or value == ():
            continue
        label = f"!{name[4:]}" if name.startswith("not_") else name
        if isinstance(value, tuple):
            value = "[" + ",".join(str(v) for v in value) + "]"
        elif isinstance(value, str) and " " in value:
            value = f'"{value}"'
        parts.append(f"{label}={value}")
    if rule.log_prefix:
        parts.append(f"log_prefix={rule.log_prefix}")
    return " ".join(parts)
