"""The rule schema (felix.md §2.6): protocols, ports, ICMP, nets, tags and selectors, negations;
`parse_rule` validates one rule completely. Pure."""

from __future__ import annotations

import re
from typing import Any

from calico.common import protocols
from calico.common.quoting import quoted
from calico.common.resources.checks import (
    check_id,
    check_selector,
    is_int,
    rule_net,
    validate_selector,
)
from calico.common.resources.values import (
    ACTIONS,
    LOG_PREFIX_MAX_LEN,
    PROTOCOL_NAMES,
    RULE_KEYS,
    Port,
    Rule,
    SelectorValidator,
)

_LOG_PREFIX_BAD_CHARS_RE = re.compile(r"[^a-zA-Z0-9_:-]")


# --- Rules ---------------------------------------------------------------------------------------


def _check_protocol(value: object, field: str, errs: list[str]) -> str | None:
    number: int | None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value in PROTOCOL_NAMES:
        return value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        number = int(value)
    else:
        number = None
    if number is not None and 1 <= number <= 255:
        return str(number)
    if number == 0:
        errs.append(f"{field}: protocol 0 cannot be matched by the kernel")
    else:
        errs.append(
            f"{field}: invalid protocol {quoted(value)} "
            f"(need one of {sorted(PROTOCOL_NAMES)} or 1-255)"
        )
    return None


def _check_port(value: object) -> Port | str:
    """A canonical port entry, or (as an "!"-prefixed string) a problem description."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= 65535:
            return value
        return f"!port {value} out of range 0-65535"
    if not isinstance(value, str):
        return f"!port {quoted(value)} is neither an integer nor a 'lo:hi' string"
    fields = value.split(":")
    if len(fields) != 2 or not all(f.isascii() and f.isdigit() for f in fields):
        return f"!port range {quoted(value)} unparseable (need 'lo:hi')"
    lo, hi = int(fields[0]), int(fields[1])
    if not lo < hi or hi > 65535:
        return f"!port range {quoted(value)} invalid (need 0 <= lo < hi <= 65535)"
    return f"{lo}:{hi}"


def _check_ports(value: object, field: str, errs: list[str]) -> tuple[Port, ...] | None:
    if not isinstance(value, list):
        errs.append(f"{field}: expected a list of ports, got {type(value).__name__}")
        return None
    out: list[Port] = []
    for i, item in enumerate(value):
        port = _check_port(item)
        if isinstance(port, str) and port.startswith("!"):
            errs.append(f"{field}[{i}]: {port[1:]}")
        else:
            out.append(port)
    return tuple(out)


def _check_icmp(value: object, field: str, maximum: int, errs: list[str]) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= maximum:
        return value
    if value == 255 and maximum == 254:
        errs.append(f"{field}: ICMP type 255 is rejected by the kernel (need 0-254)")
    else:
        errs.append(f"{field}: expected an integer 0-{maximum}, got {quoted(value)}")
    return None


def parse_rule(
    data: object, selector_validator: SelectorValidator | None = validate_selector
) -> tuple[Rule | None, list[str]]:
    """Validate one rule (a decoded JSON object): (rule, []) or (None, problems)."""
    errs: list[str] = []
    if not isinstance(data, dict):
        return None, [f"expected a rule object, got {type(data).__name__}"]
    rule = {k: v for k, v in data.items() if v is not None}
    for unknown in sorted(set(rule) - RULE_KEYS):
        errs.append(f"unknown rule key {quoted(unknown)}")
    fields: dict[str, Any] = {}

    action = rule.get("action", "allow")
    if not isinstance(action, str) or action not in ACTIONS:
        errs.append(f"action: invalid {quoted(action)} (need one of {sorted(ACTIONS)})")
    fields["action"] = action

    ip_version = rule.get("ip_version")
    if ip_version is not None and (not is_int(ip_version) or ip_version not in (4, 6)):
        errs.append(f"ip_version: invalid {quoted(ip_version)} (need 4 or 6)")
        ip_version = None
    fields["ip_version"] = ip_version

    for neg in ("", "!"):
        attr = "not_" if neg else ""
        key = neg + "protocol"
        if key in rule:
            protocol = _check_protocol(rule[key], key, errs)
            if protocol == "icmp" and ip_version == 6:
                errs.append(f"{key}: 'icmp' is invalid with ip_version 6 (use 'icmpv6')")
            elif protocol == "icmpv6" and ip_version == 4:
                errs.append(f"{key}: 'icmpv6' is invalid with ip_version 4 (use 'icmp')")
            fields[attr + "protocol"] = protocol
        for end in ("src", "dst"):
            key = f"{neg}{end}_net"
            if key in rule:
                fields[f"{attr}{end}_net"] = rule_net(rule[key], ip_version, key, errs)
            key = f"{neg}{end}_tag"
            if key in rule:
                fields[f"{attr}{end}_tag"] = check_id(rule[key], key, errs)
            key = f"{neg}{end}_selector"
            if key in rule:
                text = rule[key]
                if not isinstance(text, str):
                    errs.append(f"{key}: expected a selector string, got {quoted(text)}")
                elif (problem := check_selector(text, selector_validator)) is not None:
                    errs.append(f"{key}: {problem}")
                else:
                    fields[f"{attr}{end}_selector"] = text
            key = f"{neg}{end}_ports"
            if key in rule:
                fields[f"{attr}{end}_ports"] = _check_ports(rule[key], key, errs)
                if not protocols.has_ports(str(fields.get("protocol") or "")):
                    errs.append(
                        f"{key}: port matches need 'protocol' (not negated) to be one of "
                        "tcp/udp/udplite/sctp/dccp"
                    )
        key = neg + "icmp_type"
        if key in rule:
            fields[attr + "icmp_type"] = _check_icmp(rule[key], key, 254, errs)
        key = neg + "icmp_code"
        if key in rule:
            fields[attr + "icmp_code"] = _check_icmp(rule[key], key, 255, errs)
            if neg + "icmp_type" not in rule:
                errs.append(f"{key}: ICMP code given without {neg}icmp_type")

    if "log_prefix" in rule:
        prefix = rule["log_prefix"]
        if isinstance(prefix, str):
            fields["log_prefix"] = _LOG_PREFIX_BAD_CHARS_RE.sub("_", prefix)[:LOG_PREFIX_MAX_LEN]
        else:
            errs.append(f"log_prefix: expected a string, got {quoted(prefix)}")

    if errs:
        return None, errs
    return Rule(**fields), []


def check_rules(
    data: dict[str, Any],
    field: str,
    errs: list[str],
    selector_validator: SelectorValidator | None,
) -> tuple[Rule, ...]:
    value = data.get(field)
    if value is None:
        return ()
    if not isinstance(value, list):
        errs.append(f"{field}: expected a list, got {type(value).__name__}")
        return ()
    rules: list[Rule] = []
    for i, item in enumerate(value):
        rule, problems = parse_rule(item, selector_validator)
        errs.extend(f"{field}[{i}]: {p}" for p in problems)
        if rule is not None:
            rules.append(rule)
    return tuple(rules)
