"""dnsmasq for routed TAPs, what to run (pure): this host's endpoints and the DHCP subnets -> the
dnsmasq command line and the lines of its hosts and options files. Running it is
calico.dhcp.dnsmasq_process.

The model (openstack.md §6.1, neutron-testing.md §7 Recipe E): per Neutron network with local
TAPs, one port-less `ns-<network id[:11]>` interface holds the gateway address of each of the
network's DHCP subnets (without the on-link route: the host routes each VM's /32 or /128 to its
TAP). dnsmasq serves that interface's DHCP contexts and treats every TAP of the network as an
alias of it (`--bridge-interface=ns-X,tap1,tap2`): a request arriving on a TAP is answered from
ns-X's contexts and the reply leaves through the TAP. Addresses are static only: one host entry
per endpoint maps its MAC to its IPs and host name. IPv6 subnets get `static,off-link` ranges and
`--enable-ra`, so VMs learn the router (and that the prefix is not on-link) by RA and their
address by DHCPv6.

One dnsmasq serves all networks of the host, which avoids several dnsmasq racing for the same
TAPs (felix#15). Interfaces and ranges go on its command line, host entries and options in the
files it re-reads on SIGHUP; what a change of each needs (a restart or a reload) is decided by
calico.dhcp.dnsmasq_process.plan.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from calico.common.datamodel_v1 import valid_id
from calico.common.quoting import quoted
from calico.common.resources import INTERFACE_NAME_RE
from calico.dhcp.model import MIN_IPV6_PREFIX, DhcpEndpoint, DhcpSubnet, dhcp_host_name

DEFAULT_LEASE_SECONDS = 86400  # Neutron's dhcp_lease_duration default
DEVICE_PREFIX = "ns-"


def device_name(network_id: str) -> str:
    """The DHCP interface of a network: Neutron's `ns-` + the first 11 characters of the ID
    (14 characters: Linux allows 15)."""
    return DEVICE_PREFIX + network_id[:11]


def subnet_tag(subnet_id: str) -> str:
    return f"subnet-{subnet_id}"


# --- What may reach dnsmasq ------------------------------------------------------------------
#
# The model validates every value from etcd (calico.dhcp.model); the renderer checks each field
# again as it writes it, so that no gap in validation can make a value into an extra field,
# entry or directive. dnsmasq's syntax gives meaning to ',' (field separator), newline (a new
# entry in a file), '#' (a comment), '"' and '\\' (quoting in files), whitespace, '=' (option
# syntax) and NUL (end of a C string); no field may contain any of them, and a line may not
# exceed MAX_LINE: dnsmasq reads its files with a 1 KiB line buffer and treats the rest of a
# longer line as a line of its own (seen with dnsmasq 2.90), which would be an injected entry.
MAX_LINE = 1000
_MAC_RE = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_TAG_RE = re.compile(r"subnet-[a-zA-Z0-9_.-]{1,255}")


class UnsafeValue(ValueError):
    """A value that must not be written to dnsmasq (a gap in validation, or a bug)."""


def _mac(value: str) -> str:
    if not _MAC_RE.fullmatch(value):
        raise UnsafeValue(f"MAC {quoted(value)} is not canonical")
    return value


_Parsed = (
    ipaddress.IPv4Address | ipaddress.IPv6Address | ipaddress.IPv4Network | ipaddress.IPv6Network
)


def _canonical(value: str, version: int, parse: Callable[[str], _Parsed], what: str) -> str:
    """`value` if it is of IP `version`, without a scope, and exactly as ipaddress prints it."""
    try:
        parsed: _Parsed | None = parse(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.version != version or str(parsed) != value or "%" in value:
        raise UnsafeValue(f"IPv{version} {what} {quoted(value)} is not canonical")
    return value


def _ip(value: str, version: int) -> str:
    return _canonical(value, version, ipaddress.ip_address, "address")


def _cidr(value: str, version: int) -> str:
    """A network (no host bits), canonical."""
    return _canonical(value, version, ipaddress.ip_network, "CIDR")


def _hostname(value: str) -> str:
    if not dhcp_host_name(value):
        raise UnsafeValue(f"host name {quoted(value)} is not a usable DNS label")
    return value


def _tag(subnet_id: str) -> str:
    tag = subnet_tag(subnet_id)
    if not _TAG_RE.fullmatch(tag) or not valid_id(subnet_id):
        raise UnsafeValue(f"subnet ID {quoted(subnet_id)} is not a valid ID")
    return tag


def _interface(value: str) -> str:
    if not INTERFACE_NAME_RE.fullmatch(value):
        raise UnsafeValue(f"interface name {quoted(value)} is not valid")
    return value


def _line(fields: Iterable[str]) -> str:
    line = ",".join(fields)
    if len(line) > MAX_LINE:
        raise UnsafeValue(f"line of {len(line)} characters (dnsmasq reads at most {MAX_LINE})")
    return line


@dataclass(frozen=True, slots=True)
class Refusal:
    """An endpoint or subnet left out of the configuration, and why."""

    key: str  # its etcd key
    reason: str


@dataclass(frozen=True, slots=True)
class DhcpInterface:
    name: str
    addresses: tuple[str, ...]  # gateway address / subnet prefix length, e.g. 10.65.0.1/24
    taps: tuple[str, ...]  # sorted


@dataclass(frozen=True, slots=True)
class DnsmasqConfig:
    """Everything dnsmasq is told. Interfaces and ranges go on the command line; hosts and
    options are the lines of the files it re-reads on SIGHUP. `refused` lists the objects left
    out (not part of the comparison: it is not something dnsmasq is told)."""

    interfaces: tuple[DhcpInterface, ...] = ()
    ranges: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    enable_ra: bool = False
    refused: tuple[Refusal, ...] = field(default=(), compare=False)

    @property
    def empty(self) -> bool:
        return not self.interfaces


EMPTY_CONFIG = DnsmasqConfig()


@dataclass(frozen=True, slots=True)
class _RenderedSubnet:
    subnet: DhcpSubnet
    address: str  # gateway/prefix length, for the ns- device
    range: str
    options: tuple[str, ...]


def _render_subnet(subnet: DhcpSubnet, lease: str) -> _RenderedSubnet:
    """The ns- address, dhcp-range and option lines of one subnet with a gateway."""
    net = subnet.network
    version = net.version
    assert subnet.gateway_ip is not None
    gateway = _ip(subnet.gateway_ip, version)
    tag = _tag(subnet.subnet_id)
    network_address = _ip(str(net.network_address), version)
    if version == 4:
        dhcp_range = _line((f"set:{tag}", network_address, "static", str(net.netmask), lease))
    else:
        if net.prefixlen < MIN_IPV6_PREFIX:
            raise UnsafeValue(
                f"prefix /{net.prefixlen}: dnsmasq needs /{MIN_IPV6_PREFIX} or longer"
            )
        # off-link: the RA must not make the VM treat the /64 as on-link; everything,
        # neighbours in the same subnet included, goes via the router (the host).
        dhcp_range = _line(
            (f"set:{tag}", network_address, "static", "off-link", str(net.prefixlen), lease)
        )
    return _RenderedSubnet(
        subnet=subnet,
        address=f"{gateway}/{net.prefixlen}",
        range=dhcp_range,
        options=tuple(_subnet_options(subnet, tag, gateway)),
    )


def _subnet_options(subnet: DhcpSubnet, tag: str, gateway: str) -> list[str]:
    """dhcp-optsfile lines for one subnet."""
    if subnet.version == 6:
        if not subnet.dns_servers:
            return []
        servers = [f"[{_ip(s, 6)}]" for s in subnet.dns_servers]
        return [_line((f"tag:{tag}", "option6:dns-server", *servers))]
    lines = [_line((f"tag:{tag}", "option:router", gateway))]
    if subnet.dns_servers:
        servers = [_ip(s, 4) for s in subnet.dns_servers]
        lines.append(_line((f"tag:{tag}", "option:dns-server", *servers)))
    if subnet.host_routes:
        # A client that gets classless routes ignores option 3, so the default route is
        # repeated in the list (RFC 3442).
        routes = [
            f for r in subnet.host_routes for f in (_cidr(r.destination, 4), _ip(r.nexthop, 4))
        ]
        routes += ["0.0.0.0/0", gateway]
        lines.append(_line((f"tag:{tag}", "option:classless-static-route", *routes)))
    return lines


def _served(
    endpoint: DhcpEndpoint, version: int, subnets: Mapping[str, DhcpSubnet]
) -> list[tuple[str, DhcpSubnet]]:
    """(address, subnet) for each address of the endpoint that a usable subnet covers.

    `subnets` holds the usable ones only. The subnet is the one the orchestrator named (Neutron
    gives the IDs); without IDs, the first known subnet containing the address (other
    orchestrators).
    """
    addrs = endpoint.ipv4_addrs if version == 4 else endpoint.ipv6_addrs
    ids = endpoint.ipv4_subnet_ids if version == 4 else endpoint.ipv6_subnet_ids
    candidates = sorted(
        (s for s in subnets.values() if s.version == version), key=lambda s: s.subnet_id
    )
    served = []
    for i, addr in enumerate(addrs):
        ip = ipaddress.ip_address(addr)
        if ids:
            subnet = subnets.get(ids[i]) if i < len(ids) else None
            matches = [subnet] if subnet is not None and subnet.version == version else []
        else:
            matches = candidates
        for subnet in matches:
            if ip in subnet.network:
                served.append((addr, subnet))
                break
    return served


@dataclass(frozen=True, slots=True)
class _HostEntry:
    endpoint: DhcpEndpoint
    network_id: str
    line: str
    claims: tuple[str, ...]  # the MAC and addresses no other entry may have


def _host_entry(endpoint: DhcpEndpoint, subnets: Mapping[str, DhcpSubnet]) -> _HostEntry | None:
    """The endpoint's dhcp-host line, or None if no usable subnet covers it. An endpoint is
    served on the network of its first served address; a TAP can only be an alias of one
    interface, and a Neutron port belongs to one network anyway."""
    v4 = _served(endpoint, 4, subnets)
    v6 = _served(endpoint, 6, subnets)
    if not v4 and not v6:
        return None
    network_id = (v4 or v6)[0][1].network_id
    v4 = [(a, s) for a, s in v4 if s.network_id == network_id]
    v6 = [(a, s) for a, s in v6 if s.network_id == network_id]
    _interface(endpoint.name)
    # dhcp-host: MAC, at most one IPv4 address (a DHCPv4 client gets one), any number of
    # bracketed IPv6 addresses, the host name.
    fields = [_mac(endpoint.mac)]
    fields += [_ip(v4[0][0], 4)] if v4 else []
    fields += [f"[{_ip(addr, 6)}]" for addr, _ in v6]
    fields.append(_hostname(endpoint.hostname))
    claims = (endpoint.mac, *(a for a, _ in v4[:1]), *(a for a, _ in v6))
    return _HostEntry(endpoint, network_id, _line(fields), claims)


def build_config(
    endpoints: Iterable[DhcpEndpoint],
    subnets: Mapping[str, DhcpSubnet],
    lease_seconds: int = DEFAULT_LEASE_SECONDS,
    skip_devices: frozenset[str] = frozenset(),
) -> DnsmasqConfig:
    """The dnsmasq configuration serving these endpoints (this host's) from these subnets.
    `skip_devices`: ns- devices that could not be set up; their subnets are left out.

    Subnets without a gateway are skipped (routed DHCP answers as the gateway). Each subnet and
    each endpoint is rendered on its own: one that cannot be (a value that fails the output
    checks, a conflict with another object, or any error at all) is left out and listed in
    `refused`, and everything else is still served. Conflicts are resolved the same way every
    time: subnets by ID, endpoints by (TAP name, key); the first one keeps what it claims.
    """
    refused: list[Refusal] = []
    lease = "infinite" if lease_seconds < 0 else f"{lease_seconds}s"  # Neutron's -1: infinite

    rendered: dict[str, _RenderedSubnet] = {}
    device_owner: dict[str, str] = {}  # ns- device name -> network ID
    for subnet in sorted(subnets.values(), key=lambda s: s.subnet_id):
        if not subnet.gateway_ip:
            continue
        try:
            device = _interface(device_name(subnet.network_id))
            if device in skip_devices:
                raise UnsafeValue(f"its DHCP interface {device} could not be set up")
            owner = device_owner.setdefault(device, subnet.network_id)
            if owner != subnet.network_id:
                raise UnsafeValue(
                    f"network {quoted(subnet.network_id)} would share the DHCP interface "
                    f"{device} with network {quoted(owner)}"
                )
            rendered[subnet.subnet_id] = _render_subnet(subnet, lease)
        except Exception as exc:
            refused.append(Refusal(subnet.key, _reason(exc)))
    usable = {sid: r.subnet for sid, r in rendered.items()}

    entries: list[_HostEntry] = []
    claimed: dict[str, DhcpEndpoint] = {}  # MAC or address -> the endpoint that has it
    tap_network: dict[str, str] = {}
    for endpoint in sorted(endpoints, key=lambda e: (e.name, e.key, e.endpoint_id)):
        try:
            entry = _host_entry(endpoint, usable)
            if entry is None:
                continue
            owners = sorted({claimed[c].label for c in entry.claims if c in claimed})
            if owners:
                raise UnsafeValue(f"MAC or address already served for {', '.join(owners)}")
            if tap_network.setdefault(endpoint.name, entry.network_id) != entry.network_id:
                raise UnsafeValue(f"TAP {endpoint.name} already served on another network")
        except Exception as exc:
            refused.append(Refusal(endpoint.label, _reason(exc)))
            continue
        claimed.update(dict.fromkeys(entry.claims, endpoint))
        entries.append(entry)

    interfaces: list[DhcpInterface] = []
    ranges: list[str] = []
    options: list[str] = []
    has_ipv6 = False
    taps_by_network: dict[str, set[str]] = {}
    for entry in entries:
        taps_by_network.setdefault(entry.network_id, set()).add(entry.endpoint.name)
    for network_id in sorted(taps_by_network):
        network_subnets = sorted(
            (r for r in rendered.values() if r.subnet.network_id == network_id),
            key=lambda r: (r.subnet.version, r.subnet.subnet_id),
        )
        for r in network_subnets:
            has_ipv6 |= r.subnet.version == 6
            ranges.append(r.range)
            options.extend(r.options)
        interfaces.append(
            DhcpInterface(
                name=device_name(network_id),
                addresses=tuple(r.address for r in network_subnets),
                taps=tuple(sorted(taps_by_network[network_id])),
            )
        )
    return DnsmasqConfig(
        interfaces=tuple(interfaces),
        ranges=tuple(ranges),
        hosts=tuple(entry.line for entry in entries),
        options=tuple(options),
        enable_ra=has_ipv6,
        refused=tuple(refused),
    )


def _reason(exc: Exception) -> str:
    """A refusal's reason: the message of our own checks, the type too for anything else."""
    return str(exc) if isinstance(exc, UnsafeValue) else f"{type(exc).__name__}: {quoted(str(exc))}"


@dataclass(frozen=True, slots=True)
class DnsmasqFiles:
    state_dir: Path

    @property
    def hosts(self) -> Path:
        return self.state_dir / "hosts"

    @property
    def options(self) -> Path:
        return self.state_dir / "opts"

    @property
    def pid(self) -> Path:
        return self.state_dir / "dnsmasq.pid"


def command_line(
    config: DnsmasqConfig, files: DnsmasqFiles, binary: str = "dnsmasq", log_dhcp: bool = False
) -> list[str]:
    """The dnsmasq argv for a non-empty configuration."""
    argv = [
        binary,
        # A child of the agent, stopped by its PID: never daemonise.
        "--keep-in-foreground",
        "--log-facility=-",
        # Nothing from the host's dnsmasq set-up, and no DNS service (port 0): DHCP only.
        "--conf-file=/dev/null",
        "--no-hosts",
        "--no-resolv",
        "--port=0",
        f"--pid-file={files.pid}",
        # Leases in memory only: addresses are static, and a restart must forget the leases
        # of removed endpoints. Authoritative, so a renewal after a restart is ACKed, not NAKed.
        "--leasefile-ro",
        "--dhcp-authoritative",
        # TAPs come and go (Nova creates them after the endpoint appears): bind_dynamic picks
        # them up without a restart.
        "--bind-dynamic",
        "--except-interface=lo",
    ]
    for iface in config.interfaces:
        argv.append(f"--interface={iface.name}")
        argv.extend(f"--interface={tap}" for tap in iface.taps)
        argv.append(f"--bridge-interface={','.join((iface.name, *iface.taps))}")
    argv.extend(f"--dhcp-range={r}" for r in config.ranges)
    argv.append(f"--dhcp-hostsfile={files.hosts}")
    argv.append(f"--dhcp-optsfile={files.options}")
    if config.enable_ra:
        argv.append("--enable-ra")
    if log_dhcp:
        argv.append("--log-dhcp")
    return argv
