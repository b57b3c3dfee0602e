"""What the DHCP agent reads from etcd, validated: DHCP subnets and this host's endpoints.

Reference: openstack.md §3. A DHCP subnet (`/calico/dhcp/v1/subnet/<id>`) is
`{"network_id", "cidr", "gateway_ip", "host_routes", "dns_servers"?}`; a workload endpoint is the
v1 endpoint JSON plus the Neutron driver's extras `ipv4_subnet_ids` / `ipv6_subnet_ids` (parallel
to `ipv4_nets` / `ipv6_nets`) and an optional `fqdn`.

Everything that ends up on dnsmasq's command line or in its files is checked here (IDs, names,
addresses), so a bad value in etcd cannot inject dnsmasq options: like every other reader of the
data model, the agent treats an invalid value as if the key were absent.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import NoReturn

from calico.common.datamodel_v1 import DhcpSubnetKey, WorkloadEndpointKey
from calico.common.resources import (
    InvalidValue,
    check_id,
    check_ip,
    decode_object,
    parse_workload_endpoint,
)

# One DNS label (RFC 1123): what dnsmasq accepts as a DHCP host name.
_LABEL_RE = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")


@dataclass(frozen=True, slots=True)
class HostRoute:
    destination: str  # a CIDR, masked to the network
    nexthop: str


@dataclass(frozen=True, slots=True)
class DhcpSubnet:
    subnet_id: str
    network_id: str
    cidr: str  # masked to the network, ipaddress text
    gateway_ip: str | None
    dns_servers: tuple[str, ...] = ()
    host_routes: tuple[HostRoute, ...] = ()

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.cidr)

    @property
    def version(self) -> int:
        return self.network.version


@dataclass(frozen=True, slots=True)
class DhcpEndpoint:
    """The parts of a workload endpoint that DHCP needs."""

    endpoint_id: str
    name: str  # the TAP interface
    mac: str  # canonical lower-case colon form
    ipv4_addrs: tuple[str, ...] = ()
    ipv6_addrs: tuple[str, ...] = ()
    # Parallel to the address tuples when the orchestrator gave them (Neutron does), else ().
    ipv4_subnet_ids: tuple[str, ...] = ()
    ipv6_subnet_ids: tuple[str, ...] = ()
    fqdn: str | None = None

    @property
    def hostname(self) -> str:
        """The name dnsmasq hands out: the first label of the FQDN, or Neutron's default
        `host-<address with dashes>`."""
        if self.fqdn:
            label = self.fqdn.split(".", 1)[0]
            if _LABEL_RE.fullmatch(label):
                return label
        first = (self.ipv4_addrs or self.ipv6_addrs or ("unknown",))[0]
        return "host-" + first.replace(".", "-").replace(":", "-")


def parse_dhcp_subnet(raw_json: str, key: DhcpSubnetKey) -> DhcpSubnet:
    """Validate a DHCP subnet value; raises InvalidValue listing every problem."""
    what = f"DHCP subnet {key.subnet_id!r}"
    data = decode_object(raw_json, what)
    errs: list[str] = []
    check_id(key.subnet_id, "subnet ID (key)", errs)
    network_id = check_id(data.get("network_id"), "network_id", errs)

    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    cidr = data.get("cidr")
    try:
        network = ipaddress.ip_network(cidr, strict=False) if isinstance(cidr, str) else None
    except ValueError:
        network = None
    if network is None:
        errs.append(f"cidr: invalid CIDR {cidr!r}")
        _fail(what, errs)
    version = network.version

    gateway: str | None = None
    if data.get("gateway_ip") is not None:
        gateway = check_ip(data["gateway_ip"], version, "gateway_ip", errs)
        # Routed DHCP puts the gateway on the ns- interface with the subnet's prefix length,
        # which only makes sense (and only gives dnsmasq a DHCP context) inside the subnet.
        if gateway is not None and ipaddress.ip_address(gateway) not in network:
            errs.append(f"gateway_ip: {gateway} is outside {network}")
            gateway = None

    dns: list[str] = []
    raw_dns = data.get("dns_servers", [])
    if not isinstance(raw_dns, list):
        errs.append(f"dns_servers: expected a list, got {type(raw_dns).__name__}")
    else:
        for i, item in enumerate(raw_dns):
            server = check_ip(item, version, f"dns_servers[{i}]", errs)
            if server is not None:
                dns.append(server)

    routes: list[HostRoute] = []
    raw_routes = data.get("host_routes") or []
    if not isinstance(raw_routes, list):
        errs.append(f"host_routes: expected a list, got {type(raw_routes).__name__}")
        raw_routes = []
    for i, route in enumerate(raw_routes):
        field = f"host_routes[{i}]"
        if not isinstance(route, dict):
            errs.append(f"{field}: expected an object")
            continue
        try:
            dest = ipaddress.ip_network(str(route.get("destination")), strict=False)
        except ValueError:
            errs.append(f"{field}.destination: invalid CIDR {route.get('destination')!r}")
            continue
        nexthop = check_ip(route.get("nexthop"), version, f"{field}.nexthop", errs)
        if dest.version != version:
            errs.append(f"{field}.destination: not IPv{version}")
        elif nexthop is not None:
            routes.append(HostRoute(str(dest), nexthop))

    if errs or network_id is None:
        _fail(what, errs)
    return DhcpSubnet(
        subnet_id=key.subnet_id,
        network_id=network_id,
        cidr=str(network),
        gateway_ip=gateway,
        dns_servers=tuple(dns),
        host_routes=tuple(routes),
    )


def _fail(what: str, errs: list[str]) -> NoReturn:
    raise InvalidValue(what, errs)


def parse_dhcp_endpoint(raw_json: str, key: WorkloadEndpointKey) -> DhcpEndpoint:
    """Validate a workload endpoint for DHCP; raises InvalidValue listing every problem.

    The common fields are validated exactly as Felix does (`parse_workload_endpoint`); on top,
    DHCP needs a MAC and checks the subnet-ID lists and the FQDN.
    """
    endpoint = parse_workload_endpoint(raw_json, key)
    data = decode_object(raw_json, f"workload endpoint {key.endpoint!r}")
    what = f"workload endpoint {key.endpoint!r} (for DHCP)"
    errs: list[str] = []
    if endpoint.mac is None:
        errs.append("mac: missing (DHCP hands out addresses by MAC)")
    addrs = {
        4: tuple(str(ipaddress.ip_interface(n).ip) for n in endpoint.ipv4_nets),
        6: tuple(str(ipaddress.ip_interface(n).ip) for n in endpoint.ipv6_nets),
    }
    subnet_ids: dict[int, tuple[str, ...]] = {4: (), 6: ()}
    for version in (4, 6):
        field = f"ipv{version}_subnet_ids"
        raw = data.get(field)
        if raw is None:
            continue
        if not isinstance(raw, list):
            errs.append(f"{field}: expected a list, got {type(raw).__name__}")
            continue
        checked = [check_id(item, f"{field}[{i}]", errs) for i, item in enumerate(raw)]
        if len(checked) != len(addrs[version]):
            errs.append(f"{field}: {len(checked)} IDs for {len(addrs[version])} addresses")
        subnet_ids[version] = tuple(item for item in checked if item is not None)
    fqdn = data.get("fqdn")
    if fqdn is not None and not isinstance(fqdn, str):
        errs.append(f"fqdn: expected a string, got {type(fqdn).__name__}")
        fqdn = None
    if errs or endpoint.mac is None:
        raise InvalidValue(what, errs)
    return DhcpEndpoint(
        endpoint_id=key.endpoint,
        name=endpoint.name,
        mac=endpoint.mac,
        ipv4_addrs=addrs[4],
        ipv6_addrs=addrs[6],
        ipv4_subnet_ids=subnet_ids[4],
        ipv6_subnet_ids=subnet_ids[6],
        fqdn=fqdn or None,
    )
