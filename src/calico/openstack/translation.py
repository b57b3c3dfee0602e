"""Neutron objects -> the etcd JSON of the v1 data model (reference: openstack.md §3).

Pure functions over plain dicts as Neutron's API returns them, so that they are tested without
Neutron installed and the driver, the resync and the tests all produce byte-identical values
(the resync compares JSON text to decide whether a key differs).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from calico.common.datamodel_v1 import (
    DhcpSubnetKey,
    ProfileRulesKey,
    ProfileTagsKey,
    WorkloadEndpointKey,
)

ORCHESTRATOR = "openstack"
PROFILE_PREFIX = "openstack-sg-"
# Nova names a VM's TAP "tap" + the first 11 characters of the Neutron port ID.
TAP_PREFIX = "tap"
TAP_ID_CHARS = 11
# Only these ports are VM (or container) interfaces; router, DHCP and floating-IP ports are not.
ENDPOINT_OWNER_PREFIXES = ("compute:", "kuryr:container")

# Neutron protocol names Felix does not know by name, as IP protocol numbers.
_PROTOCOL_NUMBERS = {
    "ah": 51,
    "dccp": 33,
    "egp": 8,
    "esp": 50,
    "gre": 47,
    "igmp": 2,
    "ipip": 4,
    "ipv6-encap": 41,
    "ipv6-frag": 44,
    "ipv6-nonxt": 59,
    "ipv6-opts": 60,
    "ipv6-route": 43,
    "ospf": 89,
    "pgm": 113,
    "rsvp": 46,
    "vrrp": 112,
}
_FELIX_PROTOCOL_NAMES = frozenset({"tcp", "udp", "icmp", "icmpv6", "sctp", "udplite"})
# Neutron spells ICMPv6 three ways (and 58 by number); Felix wants "icmpv6".
_ICMPV6_ALIASES = frozenset({"icmpv6", "ipv6-icmp", "58"})
_ICMP_ALIASES = frozenset({"icmp", "1"})


def dumps(value: object) -> str:
    """The one JSON encoding for everything written, so equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def is_endpoint_port(port: Mapping[str, Any]) -> bool:
    owner = port.get("device_owner") or ""
    return owner.startswith(ENDPOINT_OWNER_PREFIXES)


def tap_name(port_id: str) -> str:
    return TAP_PREFIX + port_id[:TAP_ID_CHARS]


def profile_id(sg_id: str) -> str:
    return PROFILE_PREFIX + sg_id


def sg_id_from_profile(profile: str) -> str | None:
    """The SG ID of a profile this driver owns, else None (another orchestrator's profile)."""
    return profile[len(PROFILE_PREFIX) :] if profile.startswith(PROFILE_PREFIX) else None


def endpoint_key(port: Mapping[str, Any]) -> WorkloadEndpointKey:
    """Where a bound port's endpoint lives: under its binding host, workload = the VM ID."""
    return WorkloadEndpointKey(
        port["binding:host_id"], ORCHESTRATOR, port["device_id"] or port["id"], port["id"]
    )


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
    """The endpoint JSON for a port.

    subnets: the port's subnets by ID (for gateways). security_group_ids and floating_ips are
    passed separately because the driver reads them from the DB rather than trusting the
    (possibly stale) port dict.
    """
    nets: dict[int, list[str]] = {4: [], 6: []}
    subnet_ids: dict[int, list[str]] = {4: [], 6: []}
    gateways: dict[int, str] = {}
    for fixed in port.get("fixed_ips") or ():
        address = ipaddress.ip_address(fixed["ip_address"])
        version = address.version
        nets[version].append(f"{address}/{address.max_prefixlen}")
        subnet_ids[version].append(fixed["subnet_id"])
        subnet = subnets.get(fixed["subnet_id"])
        if subnet is not None and subnet.get("gateway_ip"):
            gateways[version] = str(ipaddress.ip_address(subnet["gateway_ip"]))
    data: dict[str, Any] = {
        "state": "active" if port.get("admin_state_up", True) else "inactive",
        "name": tap_name(port["id"]),
        "mac": port["mac_address"],
        "profile_ids": [profile_id(sg) for sg in sorted(set(security_group_ids))],
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
    for fip in sorted(floating_ips, key=lambda f: (f.fixed_ip, f.floating_ip)):
        version = ipaddress.ip_address(fip.fixed_ip).version
        nat[version].append({"int_ip": fip.fixed_ip, "ext_ip": fip.floating_ip})
    for version in (4, 6):
        if nat[version]:
            data[f"ipv{version}_nat"] = nat[version]
    return data


def _fqdn(port: Mapping[str, Any]) -> str | None:
    assignment = port.get("dns_assignment") or []
    if assignment and assignment[0].get("fqdn"):
        return str(assignment[0]["fqdn"]).rstrip(".") or None
    return None


# --- Security groups ---------------------------------------------------------------------------


def _protocol(protocol: object, ip_version: int) -> str | int | None:
    """Felix's protocol for a Neutron one: a name Felix knows, else the number."""
    if protocol is None:
        return None
    text = str(protocol).lower()
    if text in ("", "any", "-1", "0"):
        return None  # Neutron's "any protocol"
    if text in _ICMPV6_ALIASES or (text in _ICMP_ALIASES and ip_version == 6):
        return "icmpv6" if ip_version == 6 else 58
    if text in _ICMP_ALIASES:
        return "icmp"
    if text in _FELIX_PROTOCOL_NAMES:
        return text
    if text in _PROTOCOL_NUMBERS:
        return _PROTOCOL_NUMBERS[text]
    if text.isdigit():
        return int(text)
    raise ValueError(f"unknown protocol {protocol!r}")


def rule_data(rule: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """("inbound" or "outbound", the Calico rule) for one Neutron security-group rule.

    No "action": Felix's default is allow, which is what an SG rule means.
    """
    ip_version = 6 if rule.get("ethertype") == "IPv6" else 4
    ingress = rule.get("direction") == "ingress"
    end = "src" if ingress else "dst"
    out: dict[str, Any] = {"ip_version": ip_version}
    protocol = _protocol(rule.get("protocol"), ip_version)
    if protocol is not None:
        out["protocol"] = protocol
    remote_group = rule.get("remote_group_id")
    remote_prefix = rule.get("remote_ip_prefix")
    if remote_group:
        # Every port in the remote group carries its profile, whose tag is the SG ID.
        out[f"{end}_tag"] = remote_group
    if remote_prefix:
        out[f"{end}_net"] = str(ipaddress.ip_network(remote_prefix, strict=False))
    elif not remote_group:
        out[f"{end}_net"] = "::/0" if ip_version == 6 else "0.0.0.0/0"
    low, high = rule.get("port_range_min"), rule.get("port_range_max")
    if protocol in ("icmp", "icmpv6", 58):
        # Neutron reuses the port range fields as ICMP type and code.
        if low is not None and low >= 0:
            out["icmp_type"] = low
            if high is not None and high >= 0:
                out["icmp_code"] = high
    elif low is not None:
        if low == -1:
            out["dst_ports"] = ["1:65535"]
        elif high is None or low == high:
            out["dst_ports"] = [low]
        else:
            out["dst_ports"] = [f"{low}:{high}"]
    return ("inbound" if ingress else "outbound"), out


def profile_rules_data(rules: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The profile's rules JSON for all the rules of one SG, in a stable order."""
    inbound: list[dict[str, Any]] = []
    outbound: list[dict[str, Any]] = []
    for rule in sorted(rules, key=lambda r: str(r.get("id", ""))):
        direction, data = rule_data(rule)
        (inbound if direction == "inbound" else outbound).append(data)
    return {"inbound_rules": inbound, "outbound_rules": outbound}


def profile_tags_data(sg_id: str) -> list[str]:
    return [sg_id]


def profile_values(sg_id: str, rules: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Both keys of one SG's profile: {path: JSON}."""
    pid = profile_id(sg_id)
    return {
        ProfileRulesKey(pid).path: dumps(profile_rules_data(rules)),
        ProfileTagsKey(pid).path: dumps(profile_tags_data(sg_id)),
    }


# --- Subnets -----------------------------------------------------------------------------------


def subnet_data(subnet: Mapping[str, Any]) -> dict[str, Any]:
    """The DHCP subnet JSON the DHCP agent reads."""
    data: dict[str, Any] = {
        "network_id": subnet["network_id"],
        "cidr": str(ipaddress.ip_network(subnet["cidr"], strict=False)),
        "host_routes": list(subnet.get("host_routes") or []),
        "gateway_ip": subnet.get("gateway_ip"),
    }
    if subnet.get("dns_nameservers"):
        data["dns_servers"] = list(subnet["dns_nameservers"])
    return data


def subnet_key(subnet_id: str) -> DhcpSubnetKey:
    return DhcpSubnetKey(subnet_id)


# --- Felix configuration -----------------------------------------------------------------------


def interface_prefix_with_tap(current: str | None) -> str | None:
    """The InterfacePrefix value to write so that it contains "tap", or None if it already
    does (other orchestrators' prefixes are kept)."""
    prefixes = [p.strip() for p in (current or "").split(",") if p.strip()]
    if TAP_PREFIX in prefixes:
        return None
    return ",".join([*prefixes, TAP_PREFIX])
