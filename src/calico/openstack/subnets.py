"""Neutron subnets -> the DHCP subnets the DHCP agent reads (reference: openstack.md §3).

Only subnets with DHCP enabled are written (the caller decides), at `/calico/dhcp/v1/subnet/<ID>`.
Pure, like all of the translation (calico.openstack.translation); every value written is one the
DHCP agent's own parser (calico.dhcp.model.parse_dhcp_subnet) accepts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from calico.common.datamodel_v1 import ID_SEGMENT_RULE, DhcpSubnetKey, valid_id
from calico.common.quoting import quoted
from calico.dhcp.model import parse_dhcp_subnet
from calico.openstack.translation import (
    Untranslatable,
    about,
    cidr_text,
    dumps,
    ip_text,
    warn_once,
)


def subnet_data(subnet: Mapping[str, Any]) -> dict[str, Any]:
    """The DHCP subnet JSON the DHCP agent reads; Untranslatable if the subnet cannot be
    served. A gateway outside the subnet, a DNS server or a host route that is invalid or of the
    other IP version is left out (logged once), as the DHCP agent would refuse the whole
    subnet for it."""
    where = f"subnet {quoted(subnet.get('id'))}"
    if not valid_id(subnet.get("network_id")):
        raise Untranslatable(f"{where}: invalid network ID {quoted(subnet.get('network_id'))}")
    with about(where):
        network = ipaddress.ip_network(cidr_text(subnet.get("cidr")))
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
    with about(f"subnet {quoted(subnet.get('id'))}"):
        parse_dhcp_subnet(dumps(data), key)
    return {key.path: dumps(data)}
