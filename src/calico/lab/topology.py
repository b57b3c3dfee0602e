"""A lab compute host and its VMs, as network namespaces.

Layout (every box is a network namespace this module creates and always deletes)::

    +-- VM A ------------+        +-- compute host (Felix runs here) ---------------+
    | eth0 10.65.0.2/32  |--veth--| tap<port id[:11]>    (no addresses)            |
    |      fd00:65::2/128|        | tap<...>  (one per VM)                          |
    | default via        |        | uplink0 (dead end) or ext0 -> external host     |
    |   169.254.1.1 onlink        | default route via the uplink; forwarding on     |
    |   fe80::1 (v6)     |        | 127.0.0.1:<etcd port> relayed to the root etcd  |
    +--------------------+        +-------------------------------------------------+

:class:`ComputeHost` is the compute host: one namespace, an etcd :class:`LoopbackRelay`
(when given an etcd), helpers to run ``calico-felix`` inside it, and its workloads.
:class:`Workload` is one VM joined to the host by a veth pair whose host end is named the
way Nova names a TAP (``tap`` + the first 11 characters of the Neutron port id).
:class:`ExternalHost` is an optional machine on the host's uplink (198.18.0.0/15).

What the host side needs for a VM to talk to anything (Felix's job, felix.md §5.11; the
topology self-test does it by hand with :meth:`ComputeHost.program_by_hand`):

* IPv4: the VM's only route is ``default via 169.254.1.1 dev eth0 onlink``, so it ARPs for
  169.254.1.1 on eth0. The host answers with the TAP's own MAC by **proxy ARP**:
  ``net.ipv4.conf.<tap>.proxy_arp=1`` (and ``neigh.<tap>.proxy_delay=0`` so the answer is
  immediate). The kernel only proxies for an address it can route out of *another*
  interface, which is why the host always has a default route via its uplink. Traffic to
  the VM needs a host route ``<ip>/32 dev <tap>`` (and Felix adds a static ARP entry for the
  VM's MAC).
* IPv6: the VM's default route is ``via fe80::1 dev eth0``; the host answers the neighbour
  solicitation for fe80::1 by **proxy NDP**: ``net.ipv6.conf.<tap>.proxy_ndp=1`` plus
  ``ip -6 neigh add proxy fe80::1 dev <tap>`` (Felix does this when the endpoint has
  ``ipv6_gateway``, which :meth:`Workload.endpoint_json` sets), and a host route
  ``<ip6>/128 dev <tap>``.
* Forwarding (``net.ipv4.ip_forward``, ``net.ipv6.conf.all.forwarding``) is the compute
  host's own configuration, not Felix's (§5.11 "Felix does not set ip_forward"):
  ComputeHost turns it on unless told not to. Proxy ARP and proxy NDP also need it.

Probes between the namespaces (ping, TCP, UDP) are in :mod:`calico.lab.probes`.

Safety: every command here runs inside a namespace this module created (``ip -n`` or
``ip netns exec``); the root network namespace is never changed. Addresses: 10.65.0.0/16,
fd00:65::/64, 198.18.0.0/15.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import tempfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from calico.common.datamodel_v1 import WorkloadEndpointKey
from calico.lab.felix import FelixProcess
from calico.lab.felix import felix_env as _base_felix_env
from calico.lab.netns import PREFIX, NetNS
from calico.lab.probes import Node
from calico.lab.relay import LoopbackRelay

GATEWAY_V4 = "169.254.1.1"
GATEWAY_V6 = "fe80::1"
WORKLOAD_NET_V4 = "10.65.0."
WORKLOAD_NET_V6 = "fd00:65::"
ORCHESTRATOR = "openstack"


def _ip(*args: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def _new_ns(prefix: str) -> NetNS:
    """A created NetNS named ``calt-<prefix>-<random>`` (the calt- prefix keeps the sweep)."""
    tag = prefix.removeprefix(PREFIX).strip("-")
    name = f"{PREFIX}{tag}-{secrets.token_hex(3)}" if tag else None
    return NetNS(name).create()


def _random_mac() -> str:
    """A locally administered unicast MAC (first octet 0x02), the kind veth itself picks."""
    octets = secrets.token_bytes(5)
    return "02:" + ":".join(f"{b:02x}" for b in octets)


def etcd_ports(etcd: Any) -> list[int]:
    """The loopback ports a lab namespace must relay for ``etcd``: a cluster's ``ports``, or a
    single server's ``port``."""
    ports = getattr(etcd, "ports", None)
    return list(ports) if ports else [etcd.port]


def etcd_endpoints(etcd: Any) -> str:
    """``etcd``'s client URLs as Felix's EtcdEndpoints: every member of a cluster."""
    urls = getattr(etcd, "client_urls", None)
    return ",".join(urls) if urls else str(etcd.client_url)


# -- the compute host ------------------------------------------------------------------------


class ComputeHost:
    """A compute host namespace (where Felix runs) with its VMs.

    ``etcd``: an :class:`~calico.lab.etcd_server.EtcdServer` (or anything with ``port`` and
    ``client_url``); when given, 127.0.0.1:<port> inside the host reaches it. An
    :class:`~calico.lab.etcd_cluster.EtcdCluster` (anything with ``ports`` and
    ``client_urls``): every member's port is relayed and Felix is given every member's URL
    (``FELIX_ETCDENDPOINTS``). ``forwarding``:
    turn on IPv4/IPv6 forwarding (a compute host's own setup; Felix does not do it).
    ``external``: also create an :class:`ExternalHost` on the uplink (else the uplink is a
    dead-end veth, there only so the host has a default route for proxy ARP to work).
    """

    def __init__(
        self,
        etcd: Any = None,
        hostname: str = "felix-host-1",
        name_prefix: str = "host",
        work_dir: Path | None = None,
        forwarding: bool = True,
        external: bool = False,
    ):
        self.hostname = hostname
        self.etcd = etcd
        self.workloads: list[Workload] = []
        self.external: ExternalHost | None = None
        self.felixes: list[FelixProcess] = []
        self.relay: LoopbackRelay | None = None  # the first of etcd_relays
        self.etcd_relays: list[LoopbackRelay] = []
        self._own_tmp: tempfile.TemporaryDirectory[str] | None = None
        if work_dir is None:
            self._own_tmp = tempfile.TemporaryDirectory(prefix="calico-lab-")
            work_dir = Path(self._own_tmp.name)
        self.work_dir = work_dir
        self.ns = _new_ns(name_prefix)
        try:
            if etcd is not None:
                for port in etcd_ports(etcd):
                    self.etcd_relays.append(LoopbackRelay(self.ns.name, port))
                self.relay = self.etcd_relays[0]
            if forwarding:
                self.sysctl("net.ipv4.ip_forward", "1")
                self.sysctl("net.ipv6.conf.all.forwarding", "1")
            if external:
                self.external = ExternalHost(self)
            else:
                # A dead-end uplink (no dummy driver everywhere): a veth whose peer, also
                # here, stays down, so what is routed to it is dropped.
                _ip(
                    "-n", self.ns.name, "link", "add", "uplink0", "type", "veth",
                    "peer", "name", "uplink0p",
                )  # fmt: skip
                self.ns.set_up("uplink0")
                _ip("-n", self.ns.name, "route", "add", "default", "dev", "uplink0")
                _ip("-n", self.ns.name, "-6", "route", "add", "default", "dev", "uplink0")
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"ComputeHost({self.hostname!r}, ns={self.ns.name!r})"

    @property
    def name(self) -> str:
        return self.ns.name

    # -- inside the host namespace -----------------------------------------------------------

    def run(self, argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[Any]:
        return self.ns.run(argv, check=check)

    def sysctl(self, name: str, value: str) -> None:
        self.ns.run(["sysctl", "-q", "-w", f"{name}={value}"])

    def read_sysctl(self, name: str) -> str:
        return self.ns.run(["sysctl", "-n", name]).stdout.strip()

    def routes(self, v6: bool = False) -> dict[str, str]:
        """The host namespace's main-table routes: destination -> device."""
        out = _ip("-n", self.ns.name, "-j", "-6" if v6 else "-4", "route", "show")
        result = {}
        for route in json.loads(out or "[]"):
            dst = route.get("dst", "")
            if dst and "dev" in route:
                result[dst] = route["dev"]
        return result

    def route_to(self, ip: str) -> str | None:
        """The device of the host route to exactly ``ip`` (/32 or /128), or None."""
        routes = self.routes(v6=":" in ip)
        return routes.get(ip) or routes.get(f"{ip}/{128 if ':' in ip else 32}")

    def iptables(self, *args: str, v6: bool = False, check: bool = True) -> str:
        tool = "ip6tables" if v6 else "iptables"
        return self.ns.run([tool, "-w", *args], check=check).stdout

    def program_by_hand(self, workload: Workload, routes: bool = True) -> None:
        """What Felix does on the host side for a workload (felix.md §5.11), by hand.

        For the topology self-test only: proxy ARP/NDP on the TAP and, if ``routes``, the
        host routes to the VM's addresses.
        """
        tap = workload.tap
        self.sysctl(f"net.ipv4.conf.{tap}.proxy_arp", "1")
        self.sysctl(f"net.ipv4.neigh.{tap}.proxy_delay", "0")
        if workload.ip6:
            self.sysctl(f"net.ipv6.conf.{tap}.proxy_ndp", "1")
            _ip("-n", self.ns.name, "-6", "neigh", "replace", "proxy", GATEWAY_V6, "dev", tap)
        if routes:
            self.add_routes(workload)

    def add_routes(self, workload: Workload) -> None:
        _ip("-n", self.ns.name, "route", "replace", f"{workload.ip}/32", "dev", workload.tap)
        if workload.ip6:
            _ip(
                "-n", self.ns.name, "-6", "route", "replace", f"{workload.ip6}/128",
                "dev", workload.tap,
            )  # fmt: skip

    def del_routes(self, workload: Workload) -> None:
        _ip("-n", self.ns.name, "route", "del", f"{workload.ip}/32", "dev", workload.tap)
        if workload.ip6:
            _ip("-n", self.ns.name, "-6", "route", "del", f"{workload.ip6}/128")

    # -- workloads -----------------------------------------------------------------------------

    def add_workload(
        self,
        ip: str,
        ip6: str | None = None,
        port_id: str | None = None,
        workload_id: str | None = None,
        label: str = "vm",
        plugged: bool = True,
    ) -> Workload:
        """A new VM namespace wired to this host (deleted by :meth:`close`); with
        ``plugged=False`` its TAP appears only when :meth:`Workload.plug` is called."""
        workload = Workload(
            self, ip, ip6, port_id=port_id, workload_id=workload_id, label=label, plugged=plugged
        )
        self.workloads.append(workload)
        return workload

    # -- Felix -----------------------------------------------------------------------------------

    def felix_env(self, extra: Mapping[str, str] | None = None, **more: str) -> dict[str, str]:
        """Environment for a calico-felix in this host: its etcd (through the relay), its
        hostname, TAP interfaces, a short iptables refresh, the etcd v2 datastore, INFO logs
        on the screen (captured by :meth:`start_felix`) and in a file in the work dir."""
        if self.etcd is None:
            raise RuntimeError("this ComputeHost was made without an etcd")
        env = {
            "FELIX_DATAPLANEDRIVER": "etcdv2",
            "FELIX_INTERFACEPREFIX": "tap",
            "FELIX_IPTABLESREFRESHINTERVAL": "5",
            "FELIX_LOGFILEPATH": str(self.work_dir / "felix-file.log"),
            "FELIX_LOGSEVERITYFILE": "DEBUG",
        }
        env.update(extra or {})
        env.update(more)
        return _base_felix_env(etcd_endpoints(self.etcd), self.hostname, env)

    def start_felix(
        self, extra: Mapping[str, str] | None = None, args: Sequence[str] | None = None, **more: str
    ) -> FelixProcess:
        """Start calico-felix inside the host namespace; stopped by :meth:`close`."""
        output = self.work_dir / f"felix-{len(self.felixes)}.log"
        argv = tuple(args) if args is not None else ("-c", str(self.work_dir / "absent.cfg"))
        felix = FelixProcess(self.ns, self.felix_env(extra, **more), output, argv)
        self.felixes.append(felix)
        return felix

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop Felix, close the relay, delete every namespace; keep going on errors."""
        errors: list[BaseException] = []

        def attempt(fn: Any) -> None:
            try:
                fn()
            except Exception as exc:
                errors.append(exc)

        for felix in self.felixes:
            attempt(felix.stop)
        for relay in self.etcd_relays:
            attempt(relay.close)
        for workload in self.workloads:
            attempt(workload.close)
        if self.external is not None:
            attempt(self.external.close)
        attempt(self.ns.delete)
        if self._own_tmp is not None:
            attempt(self._own_tmp.cleanup)
        if errors:
            raise errors[0]

    def __enter__(self) -> ComputeHost:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- VMs -------------------------------------------------------------------------------------


class Workload(Node):
    """A VM: its own namespace whose ``eth0`` is a veth peer of ``tap<port_id[:11]>`` on the
    host. eth0 holds ``ip``/32 (and ``ip6``/128); the default routes go via 169.254.1.1
    (onlink) and fe80::1, which the host must answer by proxy ARP / proxy NDP.

    ``plugged=False`` makes only the VM's namespace: the veth pair appears when :meth:`plug` is
    called (as when Neutron writes the port before Nova creates the TAP). The MAC is chosen up
    front then, so the endpoint can name it before the interface exists."""

    def __init__(
        self,
        host: ComputeHost,
        ip: str,
        ip6: str | None = None,
        port_id: str | None = None,
        workload_id: str | None = None,
        label: str = "vm",
        plugged: bool = True,
    ):
        self.host = host
        self.ip = ip
        self.ip6 = ip6
        self.port_id = port_id or str(uuid.uuid4())
        self.workload_id = workload_id or str(uuid.uuid4())
        self.tap = "tap" + self.port_id[:11]
        self.mac: str = "" if plugged else _random_mac()  # (plug() reads it back from eth0)
        self.ns = _new_ns(label)
        try:
            if plugged:
                self.plug()
        except BaseException:
            self.ns.delete()
            raise

    def plug(self) -> None:
        """Create the veth pair and configure the VM's side (addresses, default routes)."""
        host, vm = self.host, self.ns.name
        host.ns.add_veth_to(self.ns, self.tap, "eth0")
        if self.mac:
            _ip("-n", vm, "link", "set", "eth0", "address", self.mac)
        # No DAD on the VM side: its addresses are usable at once.
        self.ns.run(["sysctl", "-q", "-w", "net.ipv6.conf.eth0.accept_dad=0"])
        self.ns.set_up("eth0")
        host.ns.set_up(self.tap)  # Nova/libvirt brings the TAP up when the VM runs
        self.ns.add_addr("eth0", f"{self.ip}/32")
        _ip("-n", vm, "route", "add", "default", "via", GATEWAY_V4, "dev", "eth0", "onlink")
        if self.ip6:
            _ip("-n", vm, "-6", "addr", "add", f"{self.ip6}/128", "dev", "eth0", "nodad")
            _ip("-n", vm, "-6", "route", "add", "default", "via", GATEWAY_V6, "dev", "eth0")
        link = json.loads(_ip("-n", vm, "-j", "link", "show", "eth0"))
        self.mac = link[0]["address"]

    def unplug(self) -> None:
        """Delete the veth pair (both ends), as when the VM stops; :meth:`plug` makes it again,
        with the same MAC."""
        _ip("-n", self.host.ns.name, "link", "del", self.tap)

    def __repr__(self) -> str:
        return f"Workload({self.ip}, tap={self.tap!r}, ns={self.ns.name!r})"

    def endpoint_key(self, host: str | None = None) -> str:
        host = host or self.host.hostname
        return WorkloadEndpointKey(host, ORCHESTRATOR, self.workload_id, self.port_id).path

    def endpoint_json(
        self,
        profile_ids: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        state: str = "active",
    ) -> str:
        data: dict[str, Any] = {
            "state": state,
            "name": self.tap,
            "mac": self.mac,
            "profile_ids": list(profile_ids),
            "ipv4_nets": [f"{self.ip}/32"],
            "ipv4_gateway": GATEWAY_V4,
        }
        if self.ip6:
            data["ipv6_nets"] = [f"{self.ip6}/128"]
            data["ipv6_gateway"] = GATEWAY_V6
        if labels:
            data["labels"] = dict(labels)
        return json.dumps(data)

    def gateway_resolved(self, v6: bool = False) -> bool:
        """True if the VM has a MAC for its gateway (i.e. proxy ARP/NDP answered)."""
        gw = GATEWAY_V6 if v6 else GATEWAY_V4
        out = _ip("-n", self.ns.name, "-j", "-6" if v6 else "-4", "neigh", "show", gw)
        return any(
            "lladdr" in n and not {"FAILED", "INCOMPLETE"} & set(n.get("state", []))
            for n in json.loads(out or "[]")
        )

    def close(self) -> None:
        self.ns.delete()  # the veth pair goes with it


class ExternalHost(Node):
    """A machine on the compute host's uplink: ``eth0`` 198.18.0.2/24 here, ``ext0``
    198.18.0.1/24 on the host, which routes by default to it (and it to the host)."""

    def __init__(self, host: ComputeHost, ip: str = "198.18.0.2", host_ip: str = "198.18.0.1"):
        self.host = host
        self.ip = ip
        self.ip6 = None
        self.host_ip = host_ip
        self.ns = _new_ns("ext")
        try:
            host.ns.add_veth_to(self.ns, "ext0", "eth0")
            host.ns.set_up("ext0")
            self.ns.set_up("eth0")
            host.ns.add_addr("ext0", f"{host_ip}/24")
            self.ns.add_addr("eth0", f"{ip}/24")
            _ip("-n", self.ns.name, "route", "add", "default", "via", host_ip)
            _ip("-n", host.ns.name, "route", "replace", "default", "via", ip, "dev", "ext0")
        except BaseException:
            self.ns.delete()
            raise

    def __repr__(self) -> str:
        return f"ExternalHost({self.ip}, ns={self.ns.name!r})"

    def close(self) -> None:
        self.ns.delete()
