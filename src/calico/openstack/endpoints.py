"""Neutron ports -> Calico workload endpoints (reference: openstack.md §3).

Which ports are endpoints (VM and container ports, bound to a host), where a port's endpoint
lives (its key: host, orchestrator `openstack`, the VM, the port) and what it holds (TAP name,
MAC, addresses, gateways, profiles, DNS name, floating-IP NAT). Pure, like all of the
translation (calico.openstack.translation): a port whose own data cannot make a valid endpoint
raises Untranslatable, and gets no endpoint (fail closed).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from calico.common.datamodel_v1 import ID_SEGMENT_RULE, WorkloadEndpointKey, valid_id
from calico.common.quoting import quoted
from calico.common.resources import INTERFACE_NAME_RE, canonicalise_mac, parse_workload_endpoint
from calico.dhcp.model import valid_fqdn
from calico.openstack.constants import (
    BINDING_HOST,
    BINDING_VIF_TYPE,
    ENDPOINT_OWNER_PREFIXES,
    ORCHESTRATOR,
    TAP_ID_CHARS,
    TAP_PREFIX,
    VIF_TYPE_BINDING_FAILED,
    VIF_TYPE_UNBOUND,
)
from calico.openstack.security_groups import profile_id
from calico.openstack.translation import Untranslatable, about, dumps, ip_text, warn_once

_UNBOUND_VIF_TYPES = frozenset({VIF_TYPE_UNBOUND, VIF_TYPE_BINDING_FAILED})


def is_endpoint_port(port: Mapping[str, Any]) -> bool:
    owner = port.get("device_owner") or ""
    return isinstance(owner, str) and owner.startswith(ENDPOINT_OWNER_PREFIXES)


def is_bound(port: Mapping[str, Any]) -> bool:
    """Whether ML2 bound the port to a host (a binding that failed is not one)."""
    return bool(port.get(BINDING_HOST)) and (
        port.get(BINDING_VIF_TYPE) not in (None, *_UNBOUND_VIF_TYPES)
    )


def is_bound_endpoint(port: Mapping[str, Any]) -> bool:
    """A port that has an endpoint in etcd: an endpoint port bound to a host."""
    return is_endpoint_port(port) and is_bound(port)


def tap_name(port_id: str) -> str:
    return TAP_PREFIX + port_id[:TAP_ID_CHARS]


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


def _fqdn(port: Mapping[str, Any]) -> str | None:
    """The port's DNS name if it is a valid host name (else None, logged): the DHCP agent hands
    its first label to the VM, and checks it with the same rule (calico.dhcp.model)."""
    assignment = port.get("dns_assignment") or []
    if not isinstance(assignment, list) or not assignment or not isinstance(assignment[0], dict):
        return None
    fqdn = assignment[0].get("fqdn")
    if not fqdn:
        return None
    text = fqdn.rstrip(".") if isinstance(fqdn, str) else None
    if not text:
        return None
    if valid_fqdn(text):
        return text
    warn_once(f"port {quoted(port.get('id'))}: DNS name {quoted(fqdn)} left out (not a host name)")
    return None


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
        with about(f"{where}: fixed IP"):
            address = ipaddress.ip_address(ip_text(fixed.get("ip_address")))
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
    data: dict[str, Any] = {
        "state": "active" if port.get("admin_state_up", True) else "inactive",
        "name": tap_name(port["id"]),
        "mac": mac,
        "profile_ids": _profile_ids(where, security_group_ids),
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
    nat = _nat(where, floating_ips, nets)
    for version in (4, 6):
        if nat[version]:
            data[f"ipv{version}_nat"] = nat[version]
    with about(where):
        parse_workload_endpoint(dumps(data), key)
    return data


def _profile_ids(where: str, security_group_ids: Iterable[str]) -> list[str]:
    """The profiles of the port's security groups, sorted; an invalid SG ID is left out (fewer
    rules admit less)."""
    profile_ids = []
    for sg_id in sorted({str(g) for g in security_group_ids if isinstance(g, str)}):
        if valid_id(sg_id) and valid_id(profile_id(sg_id)):
            profile_ids.append(profile_id(sg_id))
        else:
            warn_once(f"{where}: security group {quoted(sg_id)} left out (invalid ID)")
    for sg_id in security_group_ids:
        if not isinstance(sg_id, str):
            warn_once(f"{where}: security group {quoted(sg_id)} left out (invalid ID)")
    return profile_ids


def _nat(
    where: str, floating_ips: Sequence[FloatingIP], nets: Mapping[int, list[str]]
) -> dict[int, list[dict[str, str]]]:
    """The 1:1 NAT entries of the port's floating IPs by IP version; one whose fixed IP is not
    an address of the port, or that is invalid, is left out."""
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
    return nat
