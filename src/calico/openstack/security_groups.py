"""Neutron security groups and their rules -> Calico profiles (reference: openstack.md §3).

A security group becomes the profile `openstack-sg-<SG ID>`: its rules key holds the SG's rules
(ingress -> inbound, egress -> outbound, no action: Felix's default, allow, is what an SG rule
means) and its tags key the SG ID, which is how a rule whose remote is another SG matches that
SG's ports. Pure, like all of the translation (calico.openstack.translation): a rule that cannot
be translated in full is left out, so the group admits less, never more.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from calico.common import protocols
from calico.common.datamodel_v1 import ID_SEGMENT_RULE, ProfileRulesKey, ProfileTagsKey, valid_id
from calico.common.quoting import quoted
from calico.common.resources import parse_rule
from calico.openstack.constants import PROFILE_PREFIX
from calico.openstack.translation import Untranslatable, about, cidr_text, dumps, warn_once


def profile_id(sg_id: str) -> str:
    return PROFILE_PREFIX + sg_id


def sg_id_from_profile(profile: str) -> str | None:
    """The SG ID of a profile this driver owns, else None (another orchestrator's profile)."""
    return profile[len(PROFILE_PREFIX) :] if profile.startswith(PROFILE_PREFIX) else None


# --- IP protocols (the names and numbers are calico.common.protocols') -----------------------

# Neutron's "any protocol" spellings (the API turns "any" into None; older data may hold either).
_ANY_PROTOCOL = frozenset({"", "any"})
_MAX_PROTOCOL = 255
_MAX_PORT = 65535
_MAX_ICMP_TYPE = 254  # the kernel refuses type 255 (resources.parse_rule)
_MAX_ICMP_CODE = 255


def protocol_number(protocol: object, ip_version: int) -> int | None:
    """The IP protocol number a Neutron rule's protocol means, None for any protocol.

    0 (Neutron's `ip` and `hopopt`) is "any protocol", as in Neutron's own iptables driver,
    which leaves out `-p` for it. ICMP (1) in an IPv6 rule is ICMPv6, as Neutron has it.
    """
    if protocol is None:
        return None
    if isinstance(protocol, bool) or not isinstance(protocol, str | int):
        raise Untranslatable(f"protocol {quoted(protocol)} is not a name or a number")
    text = str(protocol).strip().lower()
    if text in _ANY_PROTOCOL:
        return None
    number = protocols.number(text)
    if number is None:
        raise Untranslatable(f"unknown protocol {quoted(protocol)}")
    if number > _MAX_PROTOCOL:
        raise Untranslatable(f"protocol {quoted(protocol)} is not 0-{_MAX_PROTOCOL}")
    if number == 0:
        return None
    if number == protocols.ICMP and ip_version == 6:
        return protocols.ICMPV6
    if number == protocols.ICMPV6 and ip_version == 4:
        raise Untranslatable(f"protocol {quoted(protocol)} (ICMPv6) in an IPv4 rule")
    return number


def _felix_protocol(number: int, given: object) -> str | int:
    """How the rule JSON spells a protocol: Felix's name if the rule gave that name or the
    protocol needs it (ICMP, for the type and code matches), else the number."""
    name = protocols.FELIX_PROTOCOL_NAMES.get(number)
    icmp = number in (protocols.ICMP, protocols.ICMPV6)
    if name is not None and (icmp or str(given).strip().lower() == name):
        return name
    return number


# --- Rules -----------------------------------------------------------------------------------

_DIRECTIONS = {"ingress": "inbound", "egress": "outbound"}
_ETHERTYPES = {"ipv4": 4, "ipv6": 6}
_REMOTE_FIELDS = ("remote_ip_prefix", "remote_group_id", "remote_address_group_id")
# Every field of a Neutron SG rule that the translation understands: what a rule matches, plus
# bookkeeping that does not change what it matches. A rule with any other field set (a new
# Neutron extension's "remote_something", say) is left out rather than read as wider than it is.
_RULE_MATCH_FIELDS = frozenset(
    {"direction", "ethertype", "protocol", "port_range_min", "port_range_max", *_REMOTE_FIELDS}
)
_RULE_INFO_FIELDS = frozenset(
    {
        "id",
        "project_id",
        "tenant_id",
        "security_group_id",
        "description",
        "normalized_cidr",
        "standard_attr_id",
        "belongs_to_default_sg",
        "created_at",
        "updated_at",
        "revision_number",
        "tags",
    }
)


def address_group_ids(rules: Iterable[Mapping[str, Any]]) -> set[str]:
    """The remote address groups the rules refer to."""
    return {
        r["remote_address_group_id"]
        for r in rules
        if isinstance(r.get("remote_address_group_id"), str) and r["remote_address_group_id"]
    }


def _port_range(low: object, high: object) -> list[int | str]:
    for value in (low, high):
        if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_PORT):
            raise Untranslatable(
                f"port range {quoted(low)}-{quoted(high)}: need both ends in 0-{_MAX_PORT}"
            )
    assert isinstance(low, int) and isinstance(high, int)
    if low > high:
        raise Untranslatable(f"port range {low}-{high} is empty")
    return [low] if low == high else [f"{low}:{high}"]


def _icmp_match(low: object, high: object) -> dict[str, int]:
    """Neutron reuses the port range fields as ICMP type (min) and code (max)."""
    if low is None:
        if high is not None:
            raise Untranslatable(f"ICMP code {quoted(high)} without a type")
        return {}
    if not (isinstance(low, int) and not isinstance(low, bool) and 0 <= low <= _MAX_ICMP_TYPE):
        raise Untranslatable(f"ICMP type {quoted(low)}: need 0-{_MAX_ICMP_TYPE}")
    match = {"icmp_type": low}
    if high is not None:
        if not (isinstance(high, int) and not isinstance(high, bool)):
            raise Untranslatable(f"ICMP code {quoted(high)}: need 0-{_MAX_ICMP_CODE}")
        if not 0 <= high <= _MAX_ICMP_CODE:
            raise Untranslatable(f"ICMP code {quoted(high)}: need 0-{_MAX_ICMP_CODE}")
        match["icmp_code"] = high
    return match


def rule_data(
    rule: Mapping[str, Any], address_groups: Mapping[str, Sequence[str]] | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """("inbound" or "outbound", the Calico rules) for one Neutron security-group rule.

    Usually one Calico rule; a rule whose remote is an address group gives one rule per CIDR of
    the group in the rule's IP version, which may be none (an empty group matches nothing).
    address_groups: CIDRs by address group ID; a group not in it is treated as empty.
    No "action": Felix's default is allow, which is what an SG rule means. Untranslatable for a
    rule whose fields the translation does not understand in full: it is then left out.
    """
    with about(f"security group rule {quoted(rule.get('id'))}"):
        return _rule_data(rule, address_groups or {})


def _rule_data(
    rule: Mapping[str, Any], address_groups: Mapping[str, Sequence[str]]
) -> tuple[str, list[dict[str, Any]]]:
    unknown = sorted(
        str(k)
        for k, v in rule.items()
        if k not in _RULE_MATCH_FIELDS and k not in _RULE_INFO_FIELDS and v not in (None, "", [])
    )
    if unknown:
        raise Untranslatable(f"unknown fields {quoted(unknown)}")
    raw_direction = rule.get("direction")
    direction = _DIRECTIONS.get(raw_direction) if isinstance(raw_direction, str) else None
    if direction is None:
        raise Untranslatable(f"unknown direction {quoted(rule.get('direction'))}")
    ethertype = rule.get("ethertype")
    ip_version = _ETHERTYPES.get(ethertype.lower()) if isinstance(ethertype, str) else None
    if ip_version is None:
        raise Untranslatable(f"unknown ethertype {quoted(ethertype)}")
    end = "src" if direction == "inbound" else "dst"

    out: dict[str, Any] = {"ip_version": ip_version}
    number = protocol_number(rule.get("protocol"), ip_version)
    if number is not None:
        out["protocol"] = _felix_protocol(number, rule.get("protocol"))
    low, high = rule.get("port_range_min"), rule.get("port_range_max")
    if number in (protocols.ICMP, protocols.ICMPV6):
        out.update(_icmp_match(low, high))
    elif low is not None or high is not None:
        if number not in protocols.PORT_PROTOCOL_NUMBERS:
            raise Untranslatable(f"a port range with protocol {quoted(rule.get('protocol'))}")
        out["dst_ports"] = _port_range(low, high)

    remotes = [f for f in _REMOTE_FIELDS if rule.get(f) not in (None, "")]
    if len(remotes) > 1:
        raise Untranslatable(f"more than one remote ({', '.join(remotes)})")
    remote = remotes[0] if remotes else None
    candidates: list[dict[str, Any]]
    if remote is None:
        candidates = [{**out, f"{end}_net": "::/0" if ip_version == 6 else "0.0.0.0/0"}]
    elif remote == "remote_ip_prefix":
        candidates = [{**out, f"{end}_net": cidr_text(rule[remote], ip_version)}]
    elif remote == "remote_group_id":
        # Every port in the remote group carries its profile, whose tag is the SG ID.
        if not valid_id(rule[remote]):
            raise Untranslatable(f"invalid remote group {quoted(rule[remote])}")
        candidates = [{**out, f"{end}_tag": rule[remote]}]
    else:
        candidates = [
            {**out, f"{end}_net": cidr}
            for cidr in _group_cidrs(rule[remote], address_groups, ip_version)
        ]
    for candidate in candidates:
        _, problems = parse_rule(candidate, None)
        if problems:
            raise Untranslatable("; ".join(problems))
    return direction, candidates


def _group_cidrs(
    group_id: object, address_groups: Mapping[str, Sequence[str]], ip_version: int
) -> list[str]:
    """The address group's CIDRs of one IP version, canonical, sorted, without duplicates.
    A missing group is empty (it was deleted, or not read): no rule, nothing admitted."""
    if not isinstance(group_id, str) or group_id not in address_groups:
        warn_once(f"address group {quoted(group_id)} not found: its rules admit nothing")
        return []
    cidrs: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
    for address in address_groups[group_id]:
        try:
            cidrs.add(ipaddress.ip_network(cidr_text(address)))
        except Untranslatable as e:
            warn_once(f"address group {quoted(group_id)}: address left out: {e}")
    return [str(c) for c in sorted((c for c in cidrs if c.version == ip_version), key=_net_order)]


def _net_order(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, int, int]:
    return net.version, int(net.network_address), net.prefixlen


# --- Profiles --------------------------------------------------------------------------------


def profile_rules_data(
    rules: Iterable[Mapping[str, Any]],
    address_groups: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """The profile's rules JSON for all the rules of one SG, in a stable order. A rule that
    cannot be translated is left out (logged once): the group then admits less, never more."""
    inbound: list[dict[str, Any]] = []
    outbound: list[dict[str, Any]] = []
    for rule in sorted(rules, key=lambda r: str(r.get("id", ""))):
        try:
            direction, data = rule_data(rule, address_groups)
        except Untranslatable as e:
            warn_once(f"{e}: rule left out (it admits nothing)")
            continue
        (inbound if direction == "inbound" else outbound).extend(data)
    return {"inbound_rules": inbound, "outbound_rules": outbound}


def profile_tags_data(sg_id: str) -> list[str]:
    return [sg_id]


def profile_values(
    sg_id: str,
    rules: Iterable[Mapping[str, Any]],
    address_groups: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, str]:
    """Both keys of one SG's profile: {path: JSON}. Untranslatable for an invalid SG ID."""
    pid = profile_id(sg_id) if isinstance(sg_id, str) else None
    if pid is None or not valid_id(pid) or not valid_id(sg_id):
        raise Untranslatable(f"security group {quoted(sg_id)}: invalid ID ({ID_SEGMENT_RULE})")
    return {
        ProfileRulesKey(pid).path: dumps(profile_rules_data(rules, address_groups)),
        ProfileTagsKey(pid).path: dumps(profile_tags_data(sg_id)),
    }
