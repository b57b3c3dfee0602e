"""dnsmasq for routed TAPs: what to run (pure) and running it (one child process, by PID).

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
TAPs (felix#15). Changing its interfaces or ranges needs a restart; a new host entry or changed
options only a SIGHUP (dnsmasq re-reads the hosts and options files). A host entry that goes away
or changes also restarts dnsmasq: leases live only in its memory (`--leasefile-ro`), so a restart
forgets the old owner's lease and the address can go to its new owner at once (felix#233).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from calico.dhcp.model import DhcpEndpoint, DhcpSubnet

log = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 86400  # Neutron's dhcp_lease_duration default
DEVICE_PREFIX = "ns-"
STOP_TIMEOUT = 5.0


def device_name(network_id: str) -> str:
    """The DHCP interface of a network: Neutron's `ns-` + the first 11 characters of the ID
    (14 characters: Linux allows 15)."""
    return DEVICE_PREFIX + network_id[:11]


def subnet_tag(subnet_id: str) -> str:
    return f"subnet-{subnet_id}"


@dataclass(frozen=True, slots=True)
class DhcpInterface:
    name: str
    addresses: tuple[str, ...]  # gateway address / subnet prefix length, e.g. 10.65.0.1/24
    taps: tuple[str, ...]  # sorted


@dataclass(frozen=True, slots=True)
class DnsmasqConfig:
    """Everything dnsmasq is told. Interfaces and ranges go on the command line; hosts and
    options are the lines of the files it re-reads on SIGHUP."""

    interfaces: tuple[DhcpInterface, ...] = ()
    ranges: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    enable_ra: bool = False

    @property
    def empty(self) -> bool:
        return not self.interfaces


EMPTY_CONFIG = DnsmasqConfig()


def _served(
    endpoint: DhcpEndpoint, version: int, subnets: Mapping[str, DhcpSubnet]
) -> list[tuple[str, DhcpSubnet]]:
    """(address, subnet) for each address of the endpoint that a usable subnet covers.

    The subnet is the one the orchestrator named (Neutron gives the IDs); without IDs, the first
    known subnet containing the address (other orchestrators).
    """
    addrs = endpoint.ipv4_addrs if version == 4 else endpoint.ipv6_addrs
    ids = endpoint.ipv4_subnet_ids if version == 4 else endpoint.ipv6_subnet_ids
    candidates = sorted(
        (s for s in subnets.values() if s.version == version and s.gateway_ip),
        key=lambda s: s.subnet_id,
    )
    served = []
    for i, addr in enumerate(addrs):
        ip = ipaddress.ip_address(addr)
        if ids:
            subnet = subnets.get(ids[i]) if i < len(ids) else None
            matches = [subnet] if subnet is not None and subnet in candidates else []
        else:
            matches = candidates
        for subnet in matches:
            if ip in subnet.network:
                served.append((addr, subnet))
                break
    return served


def build_config(
    endpoints: Iterable[DhcpEndpoint],
    subnets: Mapping[str, DhcpSubnet],
    lease_seconds: int = DEFAULT_LEASE_SECONDS,
) -> DnsmasqConfig:
    """The dnsmasq configuration serving these endpoints (this host's) from these subnets.

    Subnets without a gateway are skipped (routed DHCP answers as the gateway). An endpoint is
    served on the network of its first served address; a TAP can only be an alias of one
    interface, and a Neutron port belongs to one network anyway.
    """
    taps_by_network: dict[str, set[str]] = {}
    hosts: list[str] = []
    for endpoint in sorted(endpoints, key=lambda e: (e.name, e.endpoint_id)):
        v4 = _served(endpoint, 4, subnets)
        v6 = _served(endpoint, 6, subnets)
        if not v4 and not v6:
            continue
        network_id = (v4 or v6)[0][1].network_id
        v4 = [(a, s) for a, s in v4 if s.network_id == network_id]
        v6 = [(a, s) for a, s in v6 if s.network_id == network_id]
        taps_by_network.setdefault(network_id, set()).add(endpoint.name)
        # dhcp-host: MAC, at most one IPv4 address (a DHCPv4 client gets one), any number of
        # bracketed IPv6 addresses, the host name.
        fields = [endpoint.mac]
        fields += [v4[0][0]] if v4 else []
        fields += [f"[{addr}]" for addr, _ in v6]
        fields.append(endpoint.hostname)
        hosts.append(",".join(fields))

    interfaces: list[DhcpInterface] = []
    ranges: list[str] = []
    options: list[str] = []
    has_ipv6 = False
    lease = "infinite" if lease_seconds < 0 else f"{lease_seconds}s"  # Neutron's -1: infinite
    for network_id in sorted(taps_by_network):
        network_subnets = sorted(
            (s for s in subnets.values() if s.network_id == network_id and s.gateway_ip),
            key=lambda s: (s.version, s.subnet_id),
        )
        addresses = []
        for subnet in network_subnets:
            net = subnet.network
            addresses.append(f"{subnet.gateway_ip}/{net.prefixlen}")
            tag = subnet_tag(subnet.subnet_id)
            if net.version == 4:
                ranges.append(f"set:{tag},{net.network_address},static,{net.netmask},{lease}")
            else:
                has_ipv6 = True
                # off-link: the RA must not make the VM treat the /64 as on-link; everything,
                # neighbours in the same subnet included, goes via the router (the host).
                ranges.append(
                    f"set:{tag},{net.network_address},static,off-link,{net.prefixlen},{lease}"
                )
            options.extend(_subnet_options(subnet, tag))
        interfaces.append(
            DhcpInterface(
                name=device_name(network_id),
                addresses=tuple(addresses),
                taps=tuple(sorted(taps_by_network[network_id])),
            )
        )
    return DnsmasqConfig(
        interfaces=tuple(interfaces),
        ranges=tuple(ranges),
        hosts=tuple(hosts),
        options=tuple(options),
        enable_ra=has_ipv6,
    )


def _subnet_options(subnet: DhcpSubnet, tag: str) -> list[str]:
    """dhcp-optsfile lines for one subnet."""
    if subnet.version == 6:
        if not subnet.dns_servers:
            return []
        servers = ",".join(f"[{s}]" for s in subnet.dns_servers)
        return [f"tag:{tag},option6:dns-server,{servers}"]
    lines = [f"tag:{tag},option:router,{subnet.gateway_ip}"]
    if subnet.dns_servers:
        lines.append(f"tag:{tag},option:dns-server,{','.join(subnet.dns_servers)}")
    if subnet.host_routes:
        # A client that gets classless routes ignores option 3, so the default route is
        # repeated in the list (RFC 3442).
        routes = [f"{r.destination},{r.nexthop}" for r in subnet.host_routes]
        routes.append(f"0.0.0.0/0,{subnet.gateway_ip}")
        lines.append(f"tag:{tag},option:classless-static-route,{','.join(routes)}")
    return lines


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


class Action(StrEnum):
    NONE = "none"
    START = "start"
    RESTART = "restart"
    RELOAD = "reload"  # SIGHUP: re-read the hosts and options files
    STOP = "stop"


def plan(running: DnsmasqConfig | None, wanted: DnsmasqConfig) -> Action:
    """What to do to get from the running configuration (None: not running) to the wanted one."""
    if wanted.empty:
        return Action.NONE if running is None else Action.STOP
    if running is None:
        return Action.START
    if (running.interfaces, running.ranges, running.enable_ra) != (
        wanted.interfaces,
        wanted.ranges,
        wanted.enable_ra,
    ):
        return Action.RESTART
    if set(running.hosts) - set(wanted.hosts):
        return Action.RESTART  # forget the removed or changed entry's lease (module docstring)
    if (running.hosts, running.options) != (wanted.hosts, wanted.options):
        return Action.RELOAD
    return Action.NONE


def _write_atomically(path: Path, lines: Iterable[str]) -> None:
    """Write via a temporary file and rename, so dnsmasq never reads half a file. World-readable:
    dnsmasq re-reads it after dropping root privileges."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{line}\n" for line in lines))
    tmp.chmod(0o644)
    tmp.replace(path)


class Dnsmasq:
    """The one dnsmasq child process of the agent."""

    def __init__(self, state_dir: Path, binary: str = "dnsmasq", log_dhcp: bool = False):
        self.files = DnsmasqFiles(state_dir)
        self.binary = binary
        self.log_dhcp = log_dhcp
        self.running: DnsmasqConfig | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def apply(self, wanted: DnsmasqConfig) -> Action:
        """Bring dnsmasq to `wanted`; returns what was done."""
        if self.running is not None and not self.alive():
            log.warning("dnsmasq (PID %s) died; starting it again", self.pid)
            self._reap()
        action = plan(self.running, wanted)
        if action is Action.NONE:
            return action
        log.info("dnsmasq: %s", action)
        if action is Action.STOP:
            self.stop()
            return action
        _write_atomically(self.files.hosts, wanted.hosts)
        _write_atomically(self.files.options, wanted.options)
        if action is Action.RELOAD:
            assert self._proc is not None
            self._proc.send_signal(signal.SIGHUP)
        else:
            self.stop()
            self._start(wanted)
        self.running = wanted
        return action

    def _start(self, config: DnsmasqConfig) -> None:
        argv = command_line(config, self.files, self.binary, self.log_dhcp)
        log.info("Starting %s", " ".join(argv))
        # Its log lines go to our stderr, next to ours.
        self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        self.running = config
        self.starts += 1

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.poll()
        self._proc = None
        self.running = None

    def stop(self) -> None:
        """SIGTERM our dnsmasq (by PID), SIGKILL after STOP_TIMEOUT."""
        proc, self._proc, self.running = self._proc, None, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.files.pid.unlink(missing_ok=True)


def prepare_state_dir(state_dir: Path) -> None:
    """Create the state directory, traversable by the unprivileged user dnsmasq runs as."""
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o755)  # noqa: S103 - nothing secret in it; dnsmasq must read it
