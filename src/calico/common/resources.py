"""Validated, immutable values of the v1 data model (reference: felix.md §2.2-§2.7).

Each `parse_*(raw_json, key)` decodes one etcd value and validates it completely: on failure it
raises `InvalidValue`, whose message (and `.problems`) lists every problem found, not just the
first. Callers treat an invalid value as if the key were deleted (§2.9).

Canonical forms: MACs are lower-case colon-separated; CIDRs are `ipaddress` text (endpoint nets keep
their address bits, rule nets and pools are masked to the network); protocols are strings (numbers
become their decimal text); collections are tuples; label maps are immutable `Labels`.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Callable, ItemsView, Iterator, KeysView, Mapping, ValuesView
from dataclasses import dataclass
from typing import Any

from calico.common import protocols
from calico.common.datamodel_v1 import (
    ID_SEGMENT_RULE,
    POOL_ID_RE,
    HostEndpointKey,
    IPPoolKey,
    Key,
    PolicyKey,
    ProfileLabelsKey,
    ProfileRulesKey,
    ProfileTagsKey,
    TierMetadataKey,
    WorkloadEndpointKey,
    valid_id,
)
from calico.common.quoting import quoted
from calico.common.selectors import LABEL_NAME_RE, parse_selector

# A selector check: raises ValueError (e.g. selectors.BadSelector) for a bad expression.
SelectorValidator = Callable[[str], object]

INTERFACE_NAME_RE = re.compile(r"[a-zA-Z0-9_-]{1,15}")
_LOG_PREFIX_BAD_CHARS_RE = re.compile(r"[^a-zA-Z0-9_:-]")
_V4_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # 0-255, no leading zeros
_CANONICAL_V4_CIDR_RE = re.compile(rf"(?:{_V4_OCTET}\.){{3}}{_V4_OCTET}/(?:3[0-2]|[12]?[0-9])")
# "10/8", "10.1/16", "10.0.1/24": inet_aton's short forms, which Felix 1.4 accepted (it used
# netaddr) and this project refuses: a rule should say exactly which addresses it means.
_SHORTHAND_V4_RE = re.compile(r"\d{1,3}(?:\.\d{1,3}){0,2}(?:/\d{1,2})?")
_MAC_GROUPS_RE = re.compile(r"[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(?:\1[0-9a-fA-F]{2}){4}")
_MAC_BARE_RE = re.compile(r"[0-9a-fA-F]{12}")
_MAC_DOTTED_RE = re.compile(r"[0-9a-fA-F]{4}\.[0-9a-fA-F]{4}\.[0-9a-fA-F]{4}")

LOG_PREFIX_MAX_LEN = 27
ACTIONS = frozenset({"allow", "deny", "next-tier", "log"})
PROTOCOL_NAMES = frozenset(protocols.FELIX_PROTOCOL_NAMES.values())

_NEGATABLE_RULE_KEYS = (
    "protocol",
    "src_net",
    "src_tag",
    "src_selector",
    "src_ports",
    "dst_net",
    "dst_tag",
    "dst_selector",
    "dst_ports",
    "icmp_type",
    "icmp_code",
)
RULE_KEYS = frozenset(("action", "ip_version", "log_prefix", *_NEGATABLE_RULE_KEYS)).union(
    "!" + k for k in _NEGATABLE_RULE_KEYS
)

WORKLOAD_ONLY_FIELDS = (
    "ipv4_nets",
    "ipv6_nets",
    "ipv4_gateway",
    "ipv6_gateway",
    "ipv4_nat",
    "ipv6_nat",
    "state",
    "mac",
)
HOST_ONLY_FIELDS = ("expected_ipv4_addrs", "expected_ipv6_addrs")


class InvalidValue(ValueError):
    """A value that failed validation; `problems` lists every problem found."""

    def __init__(self, what: str, problems: list[str] | tuple[str, ...]) -> None:
        self.what = what
        self.problems = tuple(problems)
        # Problems quote the bad input; cap them so that one hostile value (a megabyte of
        # JSON, ten thousand bad rules) makes one readable log line.
        shown = [_cap(p, MAX_PROBLEM_LEN) for p in self.problems[:MAX_PROBLEMS_SHOWN]]
        if len(self.problems) > MAX_PROBLEMS_SHOWN:
            shown.append(f"... ({len(self.problems) - MAX_PROBLEMS_SHOWN} more)")
        super().__init__(f"invalid {_cap(what, MAX_PROBLEM_LEN)}: " + "; ".join(shown))


MAX_PROBLEM_LEN = 300
MAX_PROBLEMS_SHOWN = 25


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class Labels(Mapping[str, str]):
    """An immutable, hashable label map (name -> value)."""

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[str, str] | None = None) -> None:
        self._data: dict[str, str] = dict(data or {})
        self._hash: int | None = None

    def __getitem__(self, name: str) -> str:
        return self._data[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    # The Mapping mixins would run Python code per label; these use the dict's own methods
    # (the calc graph merges and indexes labels for every endpoint of a snapshot).
    def __contains__(self, name: object) -> bool:
        return name in self._data

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return self._data.get(name, default)

    def keys(self) -> KeysView[str]:
        return self._data.keys()

    def items(self) -> ItemsView[str, str]:
        return self._data.items()

    def values(self) -> ValuesView[str]:
        return self._data.values()

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Labels):
            return self._data == other._data
        if isinstance(other, Mapping):
            return self._data == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"Labels({self._data!r})"


EMPTY_LABELS = Labels()

# A port match entry: a single port, or a canonical "lo:hi" range string.
Port = int | str


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule (§2.6); `not_*` fields hold the `!`-negated matches. None = no match."""

    action: str = "allow"
    ip_version: int | None = None
    protocol: str | None = None
    not_protocol: str | None = None
    src_net: str | None = None
    not_src_net: str | None = None
    src_tag: str | None = None
    not_src_tag: str | None = None
    src_selector: str | None = None
    not_src_selector: str | None = None
    src_ports: tuple[Port, ...] | None = None
    not_src_ports: tuple[Port, ...] | None = None
    dst_net: str | None = None
    not_dst_net: str | None = None
    dst_tag: str | None = None
    not_dst_tag: str | None = None
    dst_selector: str | None = None
    not_dst_selector: str | None = None
    dst_ports: tuple[Port, ...] | None = None
    not_dst_ports: tuple[Port, ...] | None = None
    icmp_type: int | None = None
    not_icmp_type: int | None = None
    icmp_code: int | None = None
    not_icmp_code: int | None = None
    log_prefix: str | None = None


@dataclass(frozen=True, slots=True)
class NatMapping:
    int_ip: str
    ext_ip: str


@dataclass(frozen=True, slots=True)
class WorkloadEndpoint:
    state: str
    name: str
    mac: str | None = None
    profile_ids: tuple[str, ...] = ()
    ipv4_nets: tuple[str, ...] = ()
    ipv6_nets: tuple[str, ...] = ()
    ipv4_gateway: str | None = None
    ipv6_gateway: str | None = None
    ipv4_nat: tuple[NatMapping, ...] = ()
    ipv6_nat: tuple[NatMapping, ...] = ()
    labels: Labels = EMPTY_LABELS

    @property
    def active(self) -> bool:
        return self.state == "active"


@dataclass(frozen=True, slots=True)
class HostEndpoint:
    name: str | None = None
    expected_ipv4_addrs: tuple[str, ...] = ()
    expected_ipv6_addrs: tuple[str, ...] = ()
    profile_ids: tuple[str, ...] = ()
    labels: Labels = EMPTY_LABELS


@dataclass(frozen=True, slots=True)
class ProfileRules:
    inbound_rules: tuple[Rule, ...] = ()
    outbound_rules: tuple[Rule, ...] = ()


@dataclass(frozen=True, slots=True)
class TierMetadata:
    order: float | None = None  # None = +infinity ("default" or missing)


@dataclass(frozen=True, slots=True)
class Policy:
    selector: str
    order: float | None = None  # None = +infinity ("default" or missing)
    inbound_rules: tuple[Rule, ...] = ()
    outbound_rules: tuple[Rule, ...] = ()
    untracked: bool = False


@dataclass(frozen=True, slots=True)
class IPPool:
    cidr: str
    masquerade: bool = False


# --- Selector validation -----------------------------------------------------------------------


def validate_selector(text: str) -> object:
    """The default selector check: raises BadSelector (a ValueError) for a bad expression."""
    return parse_selector(text)


def _check_selector(text: str, validator: SelectorValidator | None) -> str | None:
    """A problem description for a bad selector, or None."""
    if validator is None:
        return None
    try:
        validator(text)
    except ValueError as exc:
        return f"invalid selector {quoted(text)}: {exc}"
    return None


# --- Small validators ----------------------------------------------------------------------------
#
# Each appends problem descriptions to `errs` and returns the canonical value (or None if invalid).


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _decode(raw_json: str, what: str) -> Any:
    try:
        return json.loads(raw_json)
    except (ValueError, TypeError) as exc:
        raise InvalidValue(what, [f"undecodable JSON: {exc}"]) from None
    except RecursionError:
        # json's C scanner recurses per nesting level: a value of thousands of "[" would
        # otherwise escape as RecursionError and stop whoever is reading the datastore.
        raise InvalidValue(what, ["undecodable JSON: nested too deeply"]) from None


def decode_object(raw_json: str, what: str) -> dict[str, Any]:
    """The JSON object in `raw_json`; InvalidValue (about `what`) if it is not one."""
    data = _decode(raw_json, what)
    if not isinstance(data, dict):
        raise InvalidValue(what, [f"expected a JSON object, got {type(data).__name__}"])
    return data


def check_id(value: object, field: str, errs: list[str]) -> str | None:
    """`value` if it is a valid ID, else None with a problem appended to `errs`."""
    if valid_id(value):
        return value  # type: ignore[return-value]
    errs.append(f"{field}: invalid ID {quoted(value)} (need {ID_SEGMENT_RULE})")
    return None


def _check_ids(value: object, field: str, errs: list[str]) -> tuple[str, ...]:
    if not isinstance(value, list):
        errs.append(f"{field}: expected a list, got {type(value).__name__}")
        return ()
    out = [check_id(item, f"{field}[{i}]", errs) for i, item in enumerate(value)]
    return tuple(item for item in out if item is not None)


def _check_interface_name(value: object, errs: list[str]) -> str | None:
    if isinstance(value, str) and INTERFACE_NAME_RE.fullmatch(value):
        return value
    errs.append(f"name: invalid interface name {quoted(value)} (need 1-15 chars of [a-zA-Z0-9_-])")
    return None


def canonicalise_mac(value: str) -> str | None:
    """Lower-case colon form of a MAC (colon, hyphen, bare or dotted), or None if invalid."""
    if _MAC_GROUPS_RE.fullmatch(value):
        digits = value.replace(value[2], "")
    elif _MAC_BARE_RE.fullmatch(value) or _MAC_DOTTED_RE.fullmatch(value):
        digits = value.replace(".", "")
    else:
        return None
    digits = digits.lower()
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def _check_labels(value: object, field: str, errs: list[str]) -> Labels:
    if not isinstance(value, dict):
        errs.append(f"{field}: expected an object, got {type(value).__name__}")
        return EMPTY_LABELS
    ok = True
    for name, label_value in value.items():
        if not LABEL_NAME_RE.fullmatch(name):
            errs.append(f"{field}: invalid label name {quoted(name)} (need [a-zA-Z0-9_./-]+)")
            ok = False
        if not isinstance(label_value, str):
            errs.append(
                f"{field}: value of label {quoted(name)} is not a string: {quoted(label_value)}"
            )
            ok = False
    return Labels(value) if ok else EMPTY_LABELS


def _scoped(value: object) -> bool:
    """Whether `value` carries an IPv6 scope ("fe80::1%eth0"): ipaddress accepts almost any text
    after the "%" and prints it back, newlines included, so no address with one is accepted."""
    return isinstance(value, str) and "%" in value


def _refuse_scoped(value: object, field: str, errs: list[str]) -> bool:
    if _scoped(value):
        errs.append(f"{field}: scoped address {quoted(value)} is not accepted (no IPv6 scopes)")
        return True
    return False


def check_ip(value: object, version: int, field: str, errs: list[str]) -> str | None:
    """`value` as a canonical IPv`version` address, else None with a problem in `errs`."""
    if _refuse_scoped(value, field, errs):
        return None
    if isinstance(value, str):
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            pass
        else:
            if addr.version == version:
                return str(addr)
    errs.append(f"{field}: invalid IPv{version} address {quoted(value)}")
    return None


def _check_ip_list(value: object, version: int, field: str, errs: list[str]) -> tuple[str, ...]:
    if not isinstance(value, list):
        errs.append(f"{field}: expected a list, got {type(value).__name__}")
        return ()
    out = [check_ip(item, version, f"{field}[{i}]", errs) for i, item in enumerate(value)]
    return tuple(item for item in out if item is not None)


def _endpoint_net(value: object, version: int, field: str, errs: list[str]) -> str | None:
    """An endpoint CIDR, canonicalised but keeping the address bits (the address is what's used)."""
    if _refuse_scoped(value, field, errs):
        return None
    if isinstance(value, str):
        if version == 4 and _CANONICAL_V4_CIDR_RE.fullmatch(value):
            # Already what ipaddress would print (Neutron writes this form); skipping ipaddress
            # matters in a snapshot of many thousands of endpoints.
            return value
        try:
            iface = ipaddress.ip_interface(value)
        except ValueError:
            pass
        else:
            if iface.version == version:
                return str(iface)
    errs.append(f"{field}: invalid IPv{version} CIDR {quoted(value)}")
    return None


def _rule_net(value: object, version: int | None, field: str, errs: list[str]) -> str | None:
    """A rule CIDR (or bare IP), canonicalised to the network; family checked if version set."""
    if _refuse_scoped(value, field, errs):
        return None
    if isinstance(value, str):
        try:
            net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            pass
        else:
            if version is not None and net.version != version:
                errs.append(f"{field}: {quoted(value)} is not IPv{version} (rule ip_version)")
                return None
            return str(net)
    if isinstance(value, str) and _SHORTHAND_V4_RE.fullmatch(value):
        errs.append(
            f"{field}: shorthand IPv4 form {quoted(value)} is not accepted (Felix 1.4 expanded "
            "it; write all four octets, e.g. 10.0.0.0/8)"
        )
        return None
    errs.append(f"{field}: invalid CIDR {quoted(value)}")
    return None


def _check_order(value: object, errs: list[str]) -> float | None:
    if value is None or value == "default":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return value
    errs.append(f"order: expected a number or 'default', got {quoted(value)}")
    return None


def _describe(kind: str, key: Key) -> str:
    try:
        return f"{kind} {key.path}"
    except ValueError:  # a hand-made key with an unformattable segment
        return f"{kind} {key!r}"


def _check_key_id(value: str, field: str, errs: list[str]) -> None:
    if not valid_id(value):
        errs.append(f"key {field} {quoted(value)} is invalid (need {ID_SEGMENT_RULE})")


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
    if ip_version is not None and (not _is_int(ip_version) or ip_version not in (4, 6)):
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
                fields[f"{attr}{end}_net"] = _rule_net(rule[key], ip_version, key, errs)
            key = f"{neg}{end}_tag"
            if key in rule:
                fields[f"{attr}{end}_tag"] = check_id(rule[key], key, errs)
            key = f"{neg}{end}_selector"
            if key in rule:
                text = rule[key]
                if not isinstance(text, str):
                    errs.append(f"{key}: expected a selector string, got {quoted(text)}")
                elif (problem := _check_selector(text, selector_validator)) is not None:
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


def _check_rules(
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


# --- Endpoints ---------------------------------------------------------------------------------


def _profile_ids(data: dict[str, Any], errs: list[str]) -> tuple[str, ...]:
    value = data.get("profile_ids")
    if value is None and data.get("profile_id") is not None:
        value = [data["profile_id"]]  # legacy single profile
    return () if value is None else _check_ids(value, "profile_ids", errs)


def _nat(
    value: object, version: int, nets: tuple[str, ...], field: str, errs: list[str]
) -> tuple[NatMapping, ...]:
    if not isinstance(value, list):
        errs.append(f"{field}: expected a list, got {type(value).__name__}")
        return ()
    host_len = 32 if version == 4 else 128
    out: list[NatMapping] = []
    for i, item in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            errs.append(f"{where}: expected an object with int_ip and ext_ip")
            continue
        if item.get("int_ip") is None or item.get("ext_ip") is None:
            errs.append(f"{where}: both int_ip and ext_ip are required")
            continue
        int_ip = check_ip(item["int_ip"], version, f"{where}.int_ip", errs)
        ext_ip = check_ip(item["ext_ip"], version, f"{where}.ext_ip", errs)
        if int_ip is not None and f"{int_ip}/{host_len}" not in nets:
            errs.append(f"{where}: int_ip {int_ip} is not in ipv{version}_nets as /{host_len}")
        elif int_ip is not None and ext_ip is not None:
            out.append(NatMapping(int_ip, ext_ip))
    return tuple(out)


def parse_workload_endpoint(raw_json: str, key: WorkloadEndpointKey) -> WorkloadEndpoint:
    """Validate a workload endpoint (§2.2). Unknown fields are ignored."""
    what = _describe("workload endpoint", key)
    data = decode_object(raw_json, what)
    errs: list[str] = []
    _check_key_id(key.endpoint, "endpoint ID", errs)

    state = data.get("state")
    if state not in ("active", "inactive"):
        errs.append(f"state: {'missing' if state is None else repr(state)} (need active/inactive)")
    name = data.get("name")
    if name is None:
        errs.append("name: missing")
    else:
        _check_interface_name(name, errs)
    mac = data.get("mac")
    if mac is not None:
        canonical = canonicalise_mac(mac) if isinstance(mac, str) else None
        if canonical is None:
            errs.append(f"mac: invalid MAC address {quoted(mac)}")
        mac = canonical
    profile_ids = _profile_ids(data, errs)

    nets: dict[int, tuple[str, ...]] = {}
    gateways: dict[int, str | None] = {}
    nats: dict[int, tuple[NatMapping, ...]] = {}
    for version in (4, 6):
        field = f"ipv{version}_nets"
        value = data.get(field)
        if value is None:
            nets[version] = ()
        elif not isinstance(value, list):
            errs.append(f"{field}: expected a list, got {type(value).__name__}")
            nets[version] = ()
        else:
            checked = [
                _endpoint_net(v, version, f"{field}[{i}]", errs) for i, v in enumerate(value)
            ]
            nets[version] = tuple(n for n in checked if n is not None)
        field = f"ipv{version}_gateway"
        gateways[version] = (
            None if data.get(field) is None else check_ip(data[field], version, field, errs)
        )
        field = f"ipv{version}_nat"
        nats[version] = (
            ()
            if data.get(field) is None
            else _nat(data[field], version, nets[version], field, errs)
        )
    for field in HOST_ONLY_FIELDS:
        if field in data:
            errs.append(f"{field}: not allowed on a workload endpoint")
    labels = (
        EMPTY_LABELS
        if data.get("labels") is None
        else _check_labels(data["labels"], "labels", errs)
    )

    if errs:
        raise InvalidValue(what, errs)
    return WorkloadEndpoint(
        state=str(state),
        name=str(name),
        mac=mac,
        profile_ids=profile_ids,
        ipv4_nets=nets[4],
        ipv6_nets=nets[6],
        ipv4_gateway=gateways[4],
        ipv6_gateway=gateways[6],
        ipv4_nat=nats[4],
        ipv6_nat=nats[6],
        labels=labels,
    )


def parse_host_endpoint(raw_json: str, key: HostEndpointKey) -> HostEndpoint:
    """Validate a host endpoint (§2.3). Unknown fields are ignored."""
    what = _describe("host endpoint", key)
    data = decode_object(raw_json, what)
    errs: list[str] = []
    _check_key_id(key.endpoint, "endpoint ID", errs)

    name = data.get("name")
    if name is not None:
        _check_interface_name(name, errs)
    expected: dict[int, tuple[str, ...]] = {}
    for version in (4, 6):
        field = f"expected_ipv{version}_addrs"
        expected[version] = (
            () if data.get(field) is None else _check_ip_list(data[field], version, field, errs)
        )
    if name is None and not data.get("expected_ipv4_addrs") and not data.get("expected_ipv6_addrs"):
        errs.append("need 'name' or at least one expected IP address")
    for field in WORKLOAD_ONLY_FIELDS:
        if field in data:
            errs.append(f"{field}: not allowed on a host endpoint")
    profile_ids = _profile_ids(data, errs)
    labels = (
        EMPTY_LABELS
        if data.get("labels") is None
        else _check_labels(data["labels"], "labels", errs)
    )

    if errs:
        raise InvalidValue(what, errs)
    return HostEndpoint(
        name=name,
        expected_ipv4_addrs=expected[4],
        expected_ipv6_addrs=expected[6],
        profile_ids=profile_ids,
        labels=labels,
    )


# --- Profiles, tiers, policies, pools ------------------------------------------------------------


def parse_profile_rules(
    raw_json: str,
    key: ProfileRulesKey,
    selector_validator: SelectorValidator | None = validate_selector,
) -> ProfileRules:
    """Validate a profile's rules; a missing list means no rules. Any bad rule fails it all."""
    what = _describe("profile rules", key)
    data = decode_object(raw_json, what)
    errs: list[str] = []
    _check_key_id(key.profile, "profile ID", errs)
    validator = selector_validator
    inbound = _check_rules(data, "inbound_rules", errs, validator)
    outbound = _check_rules(data, "outbound_rules", errs, validator)
    if errs:
        raise InvalidValue(what, errs)
    return ProfileRules(inbound, outbound)


def parse_profile_tags(raw_json: str, key: ProfileTagsKey) -> tuple[str, ...]:
    """Validate a profile's tags: a JSON list of tag names."""
    what = _describe("profile tags", key)
    data = _decode(raw_json, what)
    errs: list[str] = []
    _check_key_id(key.profile, "profile ID", errs)
    tags = _check_ids(data, "tags", errs)
    if errs:
        raise InvalidValue(what, errs)
    return tags


def parse_profile_labels(raw_json: str, key: ProfileLabelsKey) -> Labels:
    """Validate a profile's labels: a JSON object of label name -> string value."""
    what = _describe("profile labels", key)
    data = _decode(raw_json, what)
    errs: list[str] = []
    _check_key_id(key.profile, "profile ID", errs)
    labels = _check_labels(data, "labels", errs)
    if errs:
        raise InvalidValue(what, errs)
    return labels


def parse_tier_metadata(raw_json: str, key: TierMetadataKey) -> TierMetadata:
    what = _describe("tier metadata", key)
    data = decode_object(raw_json, what)
    errs: list[str] = []
    _check_key_id(key.tier, "tier name", errs)
    order = _check_order(data.get("order"), errs)
    if errs:
        raise InvalidValue(what, errs)
    return TierMetadata(order)


def parse_policy(
    raw_json: str, key: PolicyKey, selector_validator: SelectorValidator | None = validate_selector
) -> Policy:
    """Validate a policy (§2.5): selector required; any bad rule fails the whole policy."""
    what = _describe("policy", key)
    data = decode_object(raw_json, what)
    errs: list[str] = []
    _check_key_id(key.tier, "tier name", errs)
    _check_key_id(key.policy, "policy ID", errs)
    validator = selector_validator
    selector = data.get("selector")
    if selector is None:
        errs.append("selector: missing")
    elif not isinstance(selector, str):
        errs.append(f"selector: expected a string, got {quoted(selector)}")
    elif (problem := _check_selector(selector, validator)) is not None:
        errs.append(f"selector: {problem}")
    order = _check_order(data.get("order"), errs)
    inbound = _check_rules(data, "inbound_rules", errs, validator)
    outbound = _check_rules(data, "outbound_rules", errs, validator)
    untracked = data.get("untracked")
    if untracked is not None and not isinstance(untracked, bool):
        errs.append(f"untracked: expected a boolean, got {quoted(untracked)}")
    if errs:
        raise InvalidValue(what, errs)
    return Policy(str(selector), order, inbound, outbound, bool(untracked))


def parse_ip_pool(raw_json: str, key: IPPoolKey) -> IPPool:
    """Validate an IPAM pool (§2.7); only cidr and masquerade are kept."""
    what = _describe("IP pool", key)
    data = decode_object(raw_json, what)
    errs: list[str] = []
    if not valid_id(key.pool_id, POOL_ID_RE):
        errs.append(f"key pool ID {quoted(key.pool_id)} is invalid (need [0-9.:a-fA-F-]{{1,43}})")
    cidr: str | None = None
    if data.get("cidr") is None:
        errs.append("cidr: missing")
    else:
        cidr = _rule_net(data["cidr"], key.version, "cidr", errs)
    masquerade = data.get("masquerade", False)
    if masquerade is None:
        masquerade = False
    elif not isinstance(masquerade, bool):
        errs.append(f"masquerade: expected a boolean, got {quoted(masquerade)}")
    if errs:
        raise InvalidValue(what, errs)
    return IPPool(str(cidr), masquerade)
