"""What the DHCP agent reads from etcd, validated: DHCP subnets and this host's endpoints.

Reference: openstack.md §3. A DHCP subnet (`/calico/dhcp/v1/subnet/<id>`) is
`{"network_id", "cidr", "gateway_ip", "host_routes", "dns_servers"?}`; a workload endpoint is the
v1 endpoint JSON plus the Neutron driver's extras `ipv4_subnet_ids` / `ipv6_subnet_ids` (parallel
to `ipv4_nets` / `ipv6_nets`) and an optional `fqdn`.

Everything that ends up on dnsmasq's command line or in its files is checked here (IDs, names,
addresses), so a bad value in etcd cannot inject dnsmasq options: like every other reader of the
data model, the agent treats an invalid value as if the key were absent. The rules (and why each
one matters to dnsmasq) are listed in docs/dhcp.md, "What is validated"; in short every value is
one of: an ID of [a-zA-Z0-9_.-], an interface name of [a-zA-Z0-9_-], a canonical MAC, an IP
address or CIDR printed by `ipaddress` without an IPv6 scope ("%..."), or a DNS name. The
renderer (calico.dhcp.dnsmasq) checks its output again, so a gap here cannot become a directive.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import NoReturn

from calico.common.datamodel_v1 import DHCP_SUBNET_DIR, DhcpSubnetKey, WorkloadEndpointKey
from calico.common.quoting import quoted
from calico.common.resources import (
    InvalidValue,
    check_id,
    check_ip,
    decode_object,
    parse_workload_endpoint,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# dnsmasq refuses an IPv6 DHCP range with a shorter prefix, and a refused range on the command
# line would stop DHCP for every VM of the host: such a subnet is refused alone instead.
MIN_IPV6_PREFIX = 64
# Neutron's defaults are 5 DNS servers and 20 host routes per subnet; more than this is refused
# rather than rendered into an options line that dnsmasq would cut (docs/dhcp.md).
MAX_DNS_SERVERS = 16
MAX_HOST_ROUTES = 32
# An endpoint has one or two addresses per IP version (Neutron: one per subnet).
MAX_ADDRESSES = 16

# One DNS label (RFC 1123): what dnsmasq accepts as a DHCP host name.
_LABEL_RE = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")
# In a dhcp-host entry dnsmasq reads a bare number, a number with a unit (s, m, h, d, w),
# "infinite" and "ignore" as a lease time or a directive, not as a host name: a VM named "ignore"
# or "12h" would otherwise get no address or a different lease time. Such labels are not used.
_DNSMASQ_WORD_RE = re.compile(r"[0-9]+[smhdwSMHDW]?|infinite|ignore", re.IGNORECASE)
MAX_FQDN_LEN = 253  # RFC 1035, without the trailing dot


def valid_fqdn(value: object) -> bool:
    """Whether `value` is a DNS name: dot-separated RFC 1123 labels, at most 253 characters
    (one trailing dot allowed)."""
    if not isinstance(value, str):
        return False
    name = value.removesuffix(".")
    return 0 < len(name) <= MAX_FQDN_LEN and all(
        _LABEL_RE.fullmatch(label) for label in name.split(".")
    )


def dhcp_host_name(label: str) -> bool:
    """Whether `label` can be a host name in a dhcp-host entry: one DNS label that dnsmasq does
    not read as something else (_DNSMASQ_WORD_RE)."""
    return _LABEL_RE.fullmatch(label) is not None and not _DNSMASQ_WORD_RE.fullmatch(label)


def check_plain_ip(value: object, version: int, field: str, errs: list[str]) -> str | None:
    """`value` as a canonical IPv`version` address without an IPv6 scope, else None with a
    problem in `errs`. Python's ipaddress accepts a scope ("fd00::1%<anything but / and %>") and
    prints it back, newlines and commas included: never let one through to dnsmasq."""
    if isinstance(value, str) and "%" in value:
        errs.append(f"{field}: scoped address {quoted(value)} not allowed")
        return None
    return check_ip(value, version, field, errs)


def _check_cidr(value: object, field: str, errs: list[str]) -> IPNetwork | None:
    """A CIDR (host bits allowed, masked off), without an IPv6 scope."""
    if isinstance(value, str) and "%" not in value:
        try:
            return ipaddress.ip_network(value, strict=False)
        except ValueError:
            pass
    errs.append(f"{field}: invalid CIDR {quoted(value)}")
    return None


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
    def network(self) -> IPNetwork:
        return ipaddress.ip_network(self.cidr)

    @property
    def version(self) -> int:
        return self.network.version

    @property
    def key(self) -> str:
        """The etcd key, for messages."""
        return f"{DHCP_SUBNET_DIR}/{self.subnet_id}"


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
    key: str = ""  # the etcd key, for messages (empty for hand-made endpoints)

    @property
    def hostname(self) -> str:
        """The name dnsmasq hands out: the first label of the FQDN, or Neutron's default
        `host-<address with dashes>` when that label is not a usable dhcp-host name."""
        if self.fqdn:
            label = self.fqdn.split(".", 1)[0]
            if dhcp_host_name(label):
                return label
        first = (self.ipv4_addrs or self.ipv6_addrs or ("unknown",))[0]
        # An IPv6 address may end in "::"; a DNS label may not end in "-".
        return ("host-" + first.replace(".", "-").replace(":", "-")).rstrip("-")

    @property
    def label(self) -> str:
        """How messages name the endpoint: its key, else its ID."""
        return self.key or f"endpoint {self.endpoint_id}"


def parse_dhcp_subnet(raw_json: str, key: DhcpSubnetKey) -> DhcpSubnet:
    """Validate a DHCP subnet value; raises InvalidValue listing every problem."""
    what = f"DHCP subnet {quoted(key_path(key))}"
    data = decode_object(raw_json, what)
    errs: list[str] = []
    check_id(key.subnet_id, "subnet ID (key)", errs)
    network_id = check_id(data.get("network_id"), "network_id", errs)

    network = _check_cidr(data.get("cidr"), "cidr", errs)
    if network is None:
        _fail(what, errs)
    version = network.version
    if version == 6 and network.prefixlen < MIN_IPV6_PREFIX:
        errs.append(
            f"cidr: {network} is shorter than /{MIN_IPV6_PREFIX}, which dnsmasq cannot serve"
        )

    gateway: str | None = None
    if data.get("gateway_ip") is not None:
        gateway = check_plain_ip(data["gateway_ip"], version, "gateway_ip", errs)
        # Routed DHCP puts the gateway on the ns- interface with the subnet's prefix length,
        # which only makes sense (and only gives dnsmasq a DHCP context) inside the subnet.
        if gateway is not None and ipaddress.ip_address(gateway) not in network:
            errs.append(f"gateway_ip: {gateway} is outside {network}")
            gateway = None

    dns: list[str] = []
    raw_dns = data.get("dns_servers", [])
    if not isinstance(raw_dns, list):
        errs.append(f"dns_servers: expected a list, got {type(raw_dns).__name__}")
    elif len(raw_dns) > MAX_DNS_SERVERS:
        errs.append(f"dns_servers: {len(raw_dns)} servers (at most {MAX_DNS_SERVERS})")
    else:
        for i, item in enumerate(raw_dns):
            server = check_plain_ip(item, version, f"dns_servers[{i}]", errs)
            if server is not None:
                dns.append(server)

    routes: list[HostRoute] = []
    raw_routes = data.get("host_routes") or []
    if not isinstance(raw_routes, list):
        errs.append(f"host_routes: expected a list, got {type(raw_routes).__name__}")
        raw_routes = []
    elif len(raw_routes) > MAX_HOST_ROUTES:
        errs.append(f"host_routes: {len(raw_routes)} routes (at most {MAX_HOST_ROUTES})")
        raw_routes = []
    for i, route in enumerate(raw_routes):
        field = f"host_routes[{i}]"
        if not isinstance(route, dict):
            errs.append(f"{field}: expected an object")
            continue
        dest = _check_cidr(route.get("destination"), f"{field}.destination", errs)
        nexthop = check_plain_ip(route.get("nexthop"), version, f"{field}.nexthop", errs)
        if dest is None:
            continue
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


def key_path(key: WorkloadEndpointKey | DhcpSubnetKey) -> str:
    """The key's etcd path, or its repr for a hand-made key with an invalid segment (which
    cannot be formatted as a path)."""
    try:
        return key.path
    except ValueError:
        return repr(key)


def _fail(what: str, errs: list[str]) -> NoReturn:
    raise InvalidValue(what, errs)


def parse_dhcp_endpoint(raw_json: str, key: WorkloadEndpointKey) -> DhcpEndpoint:
    """Validate a workload endpoint for DHCP; raises InvalidValue listing every problem.

    The common fields are validated exactly as Felix does (`parse_workload_endpoint`); on top,
    DHCP needs a MAC, refuses scoped IPv6 addresses (the common parser keeps the scope) and
    checks the subnet-ID lists and the FQDN.
    """
    endpoint = parse_workload_endpoint(raw_json, key)
    path = key_path(key)
    data = decode_object(raw_json, f"workload endpoint {quoted(path)}")
    what = f"workload endpoint {quoted(path)} (for DHCP)"
    errs: list[str] = []
    if endpoint.mac is None:
        errs.append("mac: missing (DHCP hands out addresses by MAC)")
    for version, nets in ((4, endpoint.ipv4_nets), (6, endpoint.ipv6_nets)):
        if len(nets) > MAX_ADDRESSES:
            errs.append(f"ipv{version}_nets: {len(nets)} addresses (at most {MAX_ADDRESSES})")
        for net in nets:
            if "%" in net:
                errs.append(f"ipv{version}_nets: scoped address {quoted(net)} not allowed")
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
        if len(raw) != len(addrs[version]):
            errs.append(f"{field}: {len(raw)} IDs for {len(addrs[version])} addresses")
            continue
        checked = [check_id(item, f"{field}[{i}]", errs) for i, item in enumerate(raw)]
        subnet_ids[version] = tuple(item for item in checked if item is not None)
    fqdn = data.get("fqdn")
    if fqdn is not None and not valid_fqdn(fqdn):
        errs.append(
            f"fqdn: {quoted(fqdn)} is not a DNS name (dot-separated labels of [a-zA-Z0-9-], "
            f"at most {MAX_FQDN_LEN} characters)"
        )
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
        key=path,
    )
