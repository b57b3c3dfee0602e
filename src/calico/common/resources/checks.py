"""Small validators shared by the parsers: JSON decoding, IDs, interface names, MACs, labels,
addresses and CIDRs (no IPv6 scopes), orders, selectors. Each appends its problems to a list
and returns the canonical value or None. Pure."""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Any

import msgspec

from calico.common.datamodel_v1 import (
    ID_SEGMENT_RULE,
    Key,
    valid_id,
)
from calico.common.quoting import quoted
from calico.common.resources.values import (
    EMPTY_LABELS,
    INTERFACE_NAME_RE,
    InvalidValue,
    Labels,
    SelectorValidator,
)
from calico.common.selectors import LABEL_NAME_RE, parse_selector

# "10/8", "10.1/16", "10.0.1/24": inet_aton's short forms, which Felix 1.4 accepted (it used
# netaddr) and this project refuses: a rule should say exactly which addresses it means.
_SHORTHAND_V4_RE = re.compile(r"\d{1,3}(?:\.\d{1,3}){0,2}(?:/\d{1,2})?")
_V4_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # 0-255, no leading zeros
_CANONICAL_V4_CIDR_RE = re.compile(rf"(?:{_V4_OCTET}\.){{3}}{_V4_OCTET}/(?:3[0-2]|[12]?[0-9])")
_MAC_GROUPS_RE = re.compile(r"[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(?:\1[0-9a-fA-F]{2}){4}")
_MAC_BARE_RE = re.compile(r"[0-9a-fA-F]{12}")
_MAC_DOTTED_RE = re.compile(r"[0-9a-fA-F]{4}\.[0-9a-fA-F]{4}\.[0-9a-fA-F]{4}")


# --- Selector validation -----------------------------------------------------------------------


def validate_selector(text: str) -> object:
    """The default selector check: raises BadSelector (a ValueError) for a bad expression."""
    return parse_selector(text)


def check_selector(text: str, validator: SelectorValidator | None) -> str | None:
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


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def decode_json(raw_json: str, what: str) -> Any:
    """msgspec rather than the json module: a third of the time per value (100,000 of them in a
    big cloud's snapshot), and stricter where strictness is safer: NaN, Infinity, numbers out
    of a float's range and lone surrogates (which no UTF-8 encoder takes) are refused."""
    try:
        return msgspec.json.decode(raw_json)
    except (ValueError, TypeError) as exc:
        raise InvalidValue(what, [f"undecodable JSON: {exc}"]) from None
    except RecursionError:
        # The decoder recurses per nesting level: a value of thousands of "[" would otherwise
        # escape as RecursionError and stop whoever is reading the datastore.
        raise InvalidValue(what, ["undecodable JSON: nested too deeply"]) from None


def decode_object(raw_json: str, what: str) -> dict[str, Any]:
    """The JSON object in `raw_json`; InvalidValue (about `what`) if it is not one."""
    data = decode_json(raw_json, what)
    if not isinstance(data, dict):
        raise InvalidValue(what, [f"expected a JSON object, got {type(data).__name__}"])
    return data


def check_id(value: object, field: str, errs: list[str]) -> str | None:
    """`value` if it is a valid ID, else None with a problem appended to `errs`."""
    if valid_id(value):
        return value  # type: ignore[return-value]
    errs.append(f"{field}: invalid ID {quoted(value)} (need {ID_SEGMENT_RULE})")
    return None


def check_ids(value: object, field: str, errs: list[str]) -> tuple[str, ...]:
    if not isinstance(value, list):
        errs.append(f"{field}: expected a list, got {type(value).__name__}")
        return ()
    out = [check_id(item, f"{field}[{i}]", errs) for i, item in enumerate(value)]
    return tuple(item for item in out if item is not None)


def check_interface_name(value: object, errs: list[str]) -> str | None:
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


def check_labels(value: object, field: str, errs: list[str]) -> Labels:
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


def check_ip_list(value: object, version: int, field: str, errs: list[str]) -> tuple[str, ...]:
    if not isinstance(value, list):
        errs.append(f"{field}: expected a list, got {type(value).__name__}")
        return ()
    out = [check_ip(item, version, f"{field}[{i}]", errs) for i, item in enumerate(value)]
    return tuple(item for item in out if item is not None)


def endpoint_net(value: object, version: int, field: str, errs: list[str]) -> str | None:
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


def rule_net(value: object, version: int | None, field: str, errs: list[str]) -> str | None:
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


def check_order(value: object, errs: list[str]) -> float | None:
    if value is None or value == "default":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return value
    errs.append(f"order: expected a number or 'default', got {quoted(value)}")
    return None


def describe(kind: str, key: Key) -> str:
    try:
        return f"{kind} {key.path}"
    except ValueError:  # a hand-made key with an unformattable segment
        return f"{kind} {key!r}"


def check_key_id(value: str, field: str, errs: list[str]) -> None:
    if not valid_id(value):
        errs.append(f"key {field} {quoted(value)} is invalid (need {ID_SEGMENT_RULE})")
