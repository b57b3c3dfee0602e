"""`explain`'s output: the verdict path as aligned text, or JSON (`-o json`)."""

from __future__ import annotations

import json

from calico.common import protocols
from calico.ctl.explain.flow import Explanation
from calico.ctl.explain.trace import ALLOW, HolderStep, Leg

INDENT = "  "


def packet_text(explanation: Explanation) -> str:
    p = explanation.packet
    proto = protocols.FELIX_PROTOCOL_NAMES.get(p.protocol, str(p.protocol))
    text = f"{proto} {p.src}"
    if p.src_port is not None:
        text += f" port {p.src_port}"
    text += f" -> {p.dst}"
    if p.dst_port is not None:
        text += f" port {p.dst_port}"
    if p.icmp_type is not None:
        text += f" type {p.icmp_type} code {p.icmp_code}"
    return f"{text} (IPv{p.ip_version})"


def as_text(explanation: Explanation) -> str:
    lines = [
        f"Flow:         {packet_text(explanation)}",
        f"Source:       {explanation.source.label}",
        f"Destination:  {explanation.destination.label}",
    ]
    lines += [f"Note:         {note}" for note in explanation.notes]
    for leg in explanation.legs:
        lines.append("")
        lines += _leg_lines(leg)
    verdict = "ALLOWED" if explanation.verdict == ALLOW else "DENIED"
    lines += ["", f"Verdict:      {verdict}"]
    return "\n".join(lines) + "\n"


def as_json(explanation: Explanation) -> str:
    return json.dumps(explanation.as_json(), indent=2) + "\n"


def _leg_lines(leg: Leg) -> list[str]:
    side = "source" if leg.direction == "egress" else "destination"
    where = f"host {leg.host}" + (f", chain {leg.chain}" if leg.chain else "")
    lines = [f"{leg.direction.capitalize()} of the {side} ({where})"]
    lines += [f"{INDENT}note: {note}" for note in leg.notes]
    if leg.chain is not None and not leg.tiers:
        lines.append(f"{INDENT}no tier has a policy for this endpoint")
    for tier in leg.tiers:
        lines.append(f"{INDENT}tier {tier.name}: {tier.outcome}")
        for policy in tier.policies:
            lines += _holder_lines(policy, 2)
    for profile in leg.profiles:
        lines += _holder_lines(profile, 1)
    verdict = "allowed" if leg.verdict == ALLOW else "denied"
    lines.append(f"{INDENT}=> {verdict}: {leg.reason}")
    return lines


def _holder_lines(step: HolderStep, depth: int) -> list[str]:
    pad = INDENT * depth
    head = f"{pad}{step.kind} {step.name}: {step.outcome}"
    if step.note:
        head += f" ({step.note})"
    lines = [head]
    width = max((len(r.text) for r in step.rules), default=0)
    for rule in step.rules:
        number = f"{rule.index}.".ljust(4)
        text = f"{pad}{INDENT}{number}{rule.text.ljust(width)}  -> {rule.outcome}"
        if rule.detail:
            text += f" ({rule.detail})"
        lines.append(text)
    return lines
