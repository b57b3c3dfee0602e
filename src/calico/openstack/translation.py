"""Neutron objects -> the etcd JSON of the v1 data model (reference: openstack.md §3).

Pure functions over plain dicts as Neutron's API returns them, so that they are tested without
Neutron installed and the driver, the resync and the tests all produce byte-identical values
(the resync compares JSON text to decide whether a key differs).

Every value here comes from a tenant (through the Neutron API) and is hostile until checked
(docs/openstack.md, "What is refused"). Each translation either returns values that Felix's and
the DHCP agent's own parsers accept, or raises `Untranslatable` for the one object, which the
caller then leaves out of etcd: no endpoint, no rule, no subnet. Leaving an object out always
fails closed: a missing endpoint has no connectivity, a missing rule admits nothing, and nothing
is ever widened to make it fit (an address-group rule is never "from anywhere").
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from calico.common.datamodel_v1 import (
    ID_SEGMENT_RULE,
    DhcpSubnetKey,
    ProfileRulesKey,
    ProfileTagsKey,
    WorkloadEndpointKey,
    valid_id,
)
from calico.common.quoting import quoted
from calico.common.resources import (
    INTERFACE_NAME_RE,
    InvalidValue,
    canonicalise_mac,
    parse_rule,
    parse_workload_endpoint,
)
from calico.dhcp.model import parse_dhcp_subnet

log = logging.getLogger(__name__)

ORCHESTRATOR = "openstack"
PROFILE_PREFIX = "openstack-sg-"
# Nova names a VM's TAP "tap" + the first 11 characters of the Neutron port ID.
TAP_PREFIX = "tap"
TAP_ID_CHARS = 11
# Only these ports are VM (or container) interfaces; router, DHCP and floating-IP ports are not.
ENDPOINT_OWNER_PREFIXES = ("compute:", "kuryr:container")
BINDING_HOST = "binding:host_id"


class Untranslatable(ValueError):
    """One Neutron object that cannot be written faithfully. Its message names the object and
    quotes (length-capped) the offending value; the caller logs it once and leaves the object
    out, which fails closed."""


# --- Logging each problem once ---------------------------------------------------------------

_WARNED_MAX = 10_000
_warned: dict[str, None] = {}
_warned_lock = threading.Lock()


def warn_once(message: str, exc_info: BaseException | None = None) -> bool:
    """Log `message` as a warning (with exc_info's traceback, if given) the first time it is
    seen in this process; True if it was logged now.

    The resync translates every object every 60 s: a bad object is reported when first met
    (and again only after 10,000 other problems have been seen), not on every pass. Messages
    must therefore be deterministic: the object's ID, the field and the quoted value.
    """
    with _warned_lock:
        if message in _warned:
            return False
        if len(_warned) >= _WARNED_MAX:
            _warned.clear()
        _warned[message] = None
    log.warning("%s", message, exc_info=exc_info)
    return True


# --- IP protocols ------------------------------------------------------------------------------

# Neutron's protocol names and their numbers: neutron_lib.constants.IP_PROTOCOL_MAP, copied so
# that this module imports without Neutron (a unit test checks that the two agree).
IP_PROTOCOL_NUMBERS: Mapping[str, int] = {
    "ah": 51,
    "dccp": 33,
    "egp": 8,
    "esp": 50,
    "gre": 47,
    "hopopt": 0,
    "icmp": 1,
    "igmp": 2,
    "ip": 0,
    "ipip": 4,
    "ipv6-encap": 41,
    "ipv6-frag": 44,
    "ipv6-icmp": 58,
    "icmpv6": 58,
    "ipv6-nonxt": 59,
    "ipv6-opts": 60,
    "ipv6-route": 43,
    "ospf": 89,
    "pgm": 113,
    "rsvp": 46,
    "sctp": 132,
    "tcp": 6,
    "udp": 17,
    "udplite": 136,
    "vrrp": 112,
}
# Neutron's "any protocol" spellings (the API turns "any" into None; older data may hold either).
_ANY_PROTOCOL = frozenset({"", "any"})
# Protocol numbers Felix knows by name; every other protocol is written as its number.
_FELIX_PROTOCOL_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", 132: "sctp", 136: "udplite"}
# Protocols with ports (Neutron's SG_PORT_PROTO_NUMS): tcp, udp, udplite, sctp, dccp.
_PORT_PROTOCOLS = frozenset({6, 17, 136, 132, 33})
_ICMP, _ICMPV6 = 1, 58
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
    if text.isascii() and text.isdigit():
        number = int(text)
        if number > 255:
            raise Untranslatable(f"protocol {quoted(protocol)} is not 0-255")
    elif text in IP_PROTOCOL_NUMBERS:
        number = IP_PROTOCOL_NUMBERS[text]
    else:
        raise Untranslatable(f"unknown protocol {quoted(protocol)}")
    if number == 0:
        return None
    if number == _ICMP and ip_version == 6:
        return _ICMPV6
    if number == _ICMPV6 and ip_version == 4:
        raise Untranslatable(f"protocol {quoted(protocol)} (ICMPv6) in an IPv4 rule")
    return number


def _felix_protocol(number: int, given: object) -> str | int:
    """How the rule JSON spells a protocol: Felix's name if the rule gave that name or the
    protocol needs it (ICMP, for the type and code matches), else the number."""
    name = _FELIX_PROTOCOL_NAMES.get(number)
    if name is not None and (number in (_ICMP, _ICMPV6) or str(given).strip().lower() == name):
        return name
    return number


# --- Addresses -------------------------------------------------------------------------------

# One DNS label (RFC 1123), as the DHCP agent hands out host names.
_DNS_LABEL_RE = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")
_MAX_FQDN = 253


def ip_text(value: object, version: int | None = None) -> str:
    """An IP address as canonical text (no IPv6 zone), of `version` if given."""
    if not isinstance(value, str):
        raise Untranslatable(f"IP address {quoted(value)} is not a string")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise Untranslatable(f"invalid IP address {quoted(value)}") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise Untranslatable(f"IP address {quoted(value)} has a zone")
    if version is not None and address.version != version:
        raise Untranslatable(f"IP address {quoted(value)} is not IPv{version}")
    return str(address)


def cidr_text(value: object, version: int | None = None) -> str:
    """A CIDR (or a bare address) as canonical network text, of `version` if given."""
    if not isinstance(value, str):
        raise Untranslatable(f"CIDR {quoted(value)} is not a string")
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise Untranslatable(f"invalid CIDR {quoted(value)}") from None
    if "%" in str(network):
        raise Untranslatable(f"CIDR {quoted(value)} has a zone")
    if version is not None and network.version != version:
        raise Untranslatable(f"CIDR {quoted(value)} is not IPv{version}")
    return str(network)


def _fqdn(port: Mapping[str, Any]) -> str | None:
    """The port's DNS name if it is a valid host name (else None, logged): the DHCP agent hands
    its first label to the VM."""
    assignment = port.get("dns_assignment") or []
    if not isinstance(assignment, list) or not assignment or not isinstance(assignment[0], dict):
        return None
    fqdn = assignment[0].get("fqdn")
    if not fqdn:
        return None
    text = fqdn.rstrip(".") if isinstance(fqdn, str) else None
    if not text:
        return None
    if len(text) <= _MAX_FQDN and all(_DNS_LABEL_RE.fullmatch(x) for x in text.split(".")):
        return text
    warn_once(f"port {quoted(port.get('id'))}: DNS name {quoted(fqdn)} left out (not a host name)")
    return None


# --- Ports -------------------------------------------------------------------------------------


def dumps(value: object) -> str:
    """The one JSON encoding for everything written, so equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def is_endpoint_port(port: Mapping[str, Any]) -> bool:
    owner = port.get("device_owner") or ""
    return isinstance(owner, str) and owner.startswith(ENDPOINT_OWNER_PREFIXES)


def tap_name(port_id: str) -> str:
    return TAP_PREFIX + port_id[:TAP_ID_CHARS]


def profile_id(sg_id: str) -> str:
    return PROFILE_PREFIX + sg_id


def sg_id_from_profile(profile: str) -> str | None:
    """The SG ID of a profile this driver owns, else None (another orchestrator's profile)."""
    return profile[len(PROFILE_PREFIX) :] if profile.startswith(PROFILE_PREFIX) else None


def workload_id(port: Mapping[str, Any]) -> object:
    """The workload segment of a port's endpoint key: the VM (device_id), else the port ID."""
    return port.get("device_id") or port.get("id")


def key_problems(port: Mapping[str, Any]) -> list[str]:
    """Why the port's endpoint key cannot be formed: each segment (device_id or port ID as the
    workload, the port ID, the binding host when set) must be a valid Calico ID."""
    segments = [("device_id", workload_id(port)), ("port ID", port.get("id"))]
    if port.get(BINDING_HOST):
        segments.append((BINDING_HOST, port[BINDING_HOST]))
    return [
        f"{field} {quoted(value)} is not a valid Calico ID ({ID_SEGMENT_RULE})"
        for field, value in segments
        if not valid_id(value)
    ]


def port_problems(port: Mapping[str, Any]) -> list[str]:
    """Why an endpoint port cannot become a Calico endpoint from its own data, [] if it can
    (and for any port that is not an endpoint port).

    This is what the driver refuses at the API (create and update precommit): the segments of
    the endpoint key, the TAP name and the MAC. Everything else about a port is either checked
    by Neutron or canonicalised by endpoint_data.
    """
    if not is_endpoint_port(port):
        return []
    problems = key_problems(port)
    port_id = port.get("id")
    if valid_id(port_id) and not INTERFACE_NAME_RE.fullmatch(tap_name(str(port_id))):
        problems.append(f"port ID {quoted(port_id)} does not give a valid TAP interface name")
    mac = port.get("mac_address")
    if mac is not None and (not isinstance(mac, str) or canonicalise_mac(mac) is None):
        problems.append(f"mac_address {quoted(mac)} is not a MAC address")
    return problems


def endpoint_key(port: Mapping[str, Any]) -> WorkloadEndpointKey:
    """Where a bound port's endpoint lives: under its binding host, workload = the VM ID.
    Untranslatable if any segment is not a valid ID (a hostile device_id, say)."""
    problems = key_problems(port)
    if not port.get(BINDING_HOST):
        problems.append("no binding host")
    if problems:
        raise Untranslatable(f"port {quoted(port.get('id'))}: " + "; ".join(problems))
    return WorkloadEndpointKey(port[BINDING_HOST], ORCHESTRATOR, str(workload_id(port)), port["id"])


@dataclass(frozen=True)
class FloatingIP:
    fixed_ip: str
    floating_ip: str


def endpoint_data(
    port: Mapping[str, Any],
    subnets: Mapping[str, Mapping[str, Any]],
    security_group_ids: Iterable[str],
    floating_ips: Sequence[FloatingIP] = (),
) -> dict[str, Any]:
    """The endpoint JSON for a port; Untranslatable if the port's own data cannot make a valid
    endpoint (the caller then writes none, and deletes any old one: fail closed).

    subnets: the port's subnets by ID (for gateways). security_group_ids and floating_ips are
    passed separately because the driver reads them from the DB rather than trusting the
    (possibly stale) port dict. Optional parts that are invalid are left out and logged once:
    a gateway, the DNS name, a security group (fewer rules admit less), a floating IP.
    """
    key = endpoint_key(port)
    where = f"port {quoted(port.get('id'))}"
    raw_mac = port.get("mac_address")
    mac = canonicalise_mac(raw_mac) if isinstance(raw_mac, str) else None
    if mac is None:
        raise Untranslatable(f"{where}: invalid or missing MAC {quoted(port.get('mac_address'))}")
    nets: dict[int, list[str]] = {4: [], 6: []}
    subnet_ids: dict[int, list[str]] = {4: [], 6: []}
    gateways: dict[int, str] = {}
    fixed_ips = port.get("fixed_ips") or []
    if not isinstance(fixed_ips, list):
        raise Untranslatable(f"{where}: fixed_ips {quoted(fixed_ips)} is not a list")
    for fixed in fixed_ips:
        if not isinstance(fixed, dict) or not valid_id(fixed.get("subnet_id")):
            raise Untranslatable(f"{where}: invalid fixed IP {quoted(fixed)}")
        try:
            address = ipaddress.ip_address(ip_text(fixed.get("ip_address")))
        except Untranslatable as e:
            raise Untranslatable(f"{where}: fixed IP: {e}") from None
        version = address.version
        nets[version].append(f"{address}/{address.max_prefixlen}")
        subnet_ids[version].append(fixed["subnet_id"])
        subnet = subnets.get(fixed["subnet_id"])
        gateway = subnet.get("gateway_ip") if subnet is not None else None
        if gateway and version not in gateways:
            try:
                gateways[version] = ip_text(gateway, version)
            except Untranslatable as e:
                warn_once(f"{where}: gateway of subnet {quoted(fixed['subnet_id'])} left out: {e}")
    profile_ids = []
    for sg_id in sorted({str(g) for g in security_group_ids if isinstance(g, str)}):
        if valid_id(sg_id) and valid_id(profile_id(sg_id)):
            profile_ids.append(profile_id(sg_id))
        else:
            warn_once(f"{where}: security group {quoted(sg_id)} left out (invalid ID)")
    for sg_id in security_group_ids:
        if not isinstance(sg_id, str):
            warn_once(f"{where}: security group {quoted(sg_id)} left out (invalid ID)")
    data: dict[str, Any] = {
        "state": "active" if port.get("admin_state_up", True) else "inactive",
        "name": tap_name(port["id"]),
        "mac": mac,
        "profile_ids": profile_ids,
        "ipv4_nets": nets[4],
        "ipv6_nets": nets[6],
        "ipv4_subnet_ids": subnet_ids[4],
        "ipv6_subnet_ids": subnet_ids[6],
    }
    for version in (4, 6):
        if version in gateways:
            data[f"ipv{version}_gateway"] = gateways[version]
    fqdn = _fqdn(port)
    if fqdn:
        data["fqdn"] = fqdn
    nat: dict[int, list[dict[str, str]]] = {4: [], 6: []}
    for fip in sorted(floating_ips, key=lambda f: (str(f.fixed_ip), str(f.floating_ip))):
        try:
            internal = ip_text(fip.fixed_ip)
            version = ipaddress.ip_address(internal).version
            external = ip_text(fip.floating_ip, version)
            host_len = 32 if version == 4 else 128
            if f"{internal}/{host_len}" not in nets[version]:
                raise Untranslatable(f"{quoted(internal)} is not an address of the port")
        except Untranslatable as e:
            warn_once(f"{where}: floating IP {quoted(fip.floating_ip)} left out: {e}")
            continue
        nat[version].append({"int_ip": internal, "ext_ip": external})
    for version in (4, 6):
        if nat[version]:
            data[f"ipv{version}_nat"] = nat[version]
    try:
        parse_workload_endpoint(dumps(data), key)
    except InvalidValue as e:
        raise Untranslatable(f"{where}: {e}") from None
    return data


# --- Security groups ---------------------------------------------------------------------------

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
    where = f"security group rule {quoted(rule.get('id'))}"
    try:
        return _rule_data(rule, address_groups or {})
    except Untranslatable as e:
        raise Untranslatable(f"{where}: {e}") from None


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
    if number in (_ICMP, _ICMPV6):
        out.update(_icmp_match(low, high))
    elif low is not None or high is not None:
        if number not in _PORT_PROTOCOLS:
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


# --- Subnets -----------------------------------------------------------------------------------


def subnet_data(subnet: Mapping[str, Any]) -> dict[str, Any]:
    """The DHCP subnet JSON the DHCP agent reads; Untranslatable if the subnet cannot be
    served. A gateway outside the subnet, a DNS server or a host route that is invalid or of the
    other IP version is left out (logged once), as the DHCP agent would refuse the whole
    subnet for it."""
    where = f"subnet {quoted(subnet.get('id'))}"
    if not valid_id(subnet.get("network_id")):
        raise Untranslatable(f"{where}: invalid network ID {quoted(subnet.get('network_id'))}")
    try:
        network = ipaddress.ip_network(cidr_text(subnet.get("cidr")))
    except Untranslatable as e:
        raise Untranslatable(f"{where}: {e}") from None
    version = network.version
    gateway: str | None = None
    if subnet.get("gateway_ip"):
        try:
            gateway = ip_text(subnet["gateway_ip"], version)
            if ipaddress.ip_address(gateway) not in network:
                raise Untranslatable(f"{quoted(gateway)} is outside {network}")
        except Untranslatable as e:
            warn_once(f"{where}: gateway left out (no DHCP router option): {e}")
            gateway = None
    routes: list[dict[str, str]] = []
    raw_routes = subnet.get("host_routes") or []
    for route in raw_routes if isinstance(raw_routes, list) else [raw_routes]:
        try:
            if not isinstance(route, dict):
                raise Untranslatable(f"{quoted(route)} is not a route")
            routes.append(
                {
                    "destination": cidr_text(route.get("destination"), version),
                    "nexthop": ip_text(route.get("nexthop"), version),
                }
            )
        except Untranslatable as e:
            warn_once(f"{where}: host route left out: {e}")
    dns: list[str] = []
    raw_dns = subnet.get("dns_nameservers") or []
    for server in raw_dns if isinstance(raw_dns, list) else [raw_dns]:
        try:
            dns.append(ip_text(server, version))
        except Untranslatable as e:
            warn_once(f"{where}: DNS server left out: {e}")
    data: dict[str, Any] = {
        "network_id": subnet["network_id"],
        "cidr": str(network),
        "host_routes": routes,
        "gateway_ip": gateway,
    }
    if dns:
        data["dns_servers"] = dns
    return data


def subnet_key(subnet_id: object) -> DhcpSubnetKey:
    if not valid_id(subnet_id):
        raise Untranslatable(f"subnet {quoted(subnet_id)}: invalid ID ({ID_SEGMENT_RULE})")
    assert isinstance(subnet_id, str)
    return DhcpSubnetKey(subnet_id)


def subnet_values(subnet: Mapping[str, Any]) -> dict[str, str]:
    """{path: JSON} of one DHCP subnet; Untranslatable if it cannot be served."""
    key = subnet_key(subnet.get("id"))
    data = subnet_data(subnet)
    try:
        parse_dhcp_subnet(dumps(data), key)
    except InvalidValue as e:
        raise Untranslatable(f"subnet {quoted(subnet.get('id'))}: {e}") from None
    return {key.path: dumps(data)}


# --- Felix configuration -----------------------------------------------------------------------


def interface_prefix_with_tap(current: str | None) -> str | None:
    """The InterfacePrefix value to write so that it contains "tap", or None if it already
    does (other orchestrators' prefixes are kept)."""
    prefixes = [p.strip() for p in (current or "").split(",") if p.strip()]
    if TAP_PREFIX in prefixes:
        return None
    return ",".join([*prefixes, TAP_PREFIX])
