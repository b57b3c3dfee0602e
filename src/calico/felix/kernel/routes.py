"""Routes and static ARP entries to local workloads (felix.md §5.11), plus conntrack flushing.

API model
    :class:`RouteTable` is declarative. The caller says what it wants per workload interface
    with :meth:`RouteTable.set_routes` / :meth:`RouteTable.remove_interface`, then calls
    :meth:`RouteTable.apply`, which makes the kernel agree: one host route (/32 or /128, scope
    link) per workload IP via its interface, and for IPv4 a permanent neighbour (static ARP)
    entry per IP when the workload's MAC is known. One table per IP version.

Design
    * Felix owns only the interfaces whose names start with one of the configured prefixes
      (e.g. ``("tap",)``), and on those only the routes tagged with :data:`RTPROT_FELIX`.
      Routes with any other protocol number (the kernel's own ``fe80::/64``, an operator's
      static route) are never deleted, so a restart can safely sweep what it no longer wants.
    * Routes are installed with "replace", which wins over a route to the same IP that an
      earlier owner left on another interface (e.g. during a VM migration; §5.11).
    * Static ARP entries carry no protocol tag, so on our interfaces Felix treats every
      *permanent* IPv4 neighbour entry as its own: nothing else puts them on a workload TAP.
    * Desired state for interfaces that do not exist (or are admin-down, when the kernel
      refuses routes) is kept; the caller calls :meth:`RouteTable.apply` again on interface
      events and the routes then appear.
    * IPs an interface loses (or all its IPs, when it is removed) have their conntrack entries
      flushed on the next apply (§9 item 18, :mod:`conntrack`), if a command runner was given.

Implementation
    The first :meth:`RouteTable.apply` is a full resync: it lists links, our routes and
    permanent neighbours (with ``ip -j``, :mod:`ip_listing`, when it has a command runner, else
    pyroute2's netlink dumps) and computes the difference, which repairs anything another tool
    changed; with a command runner the changes go to the kernel as one ``ip -batch`` (pyroute2,
    one request per change, if a name is unfit for a batch line or the batch fails).
    ``apply(full=True)`` (the caller's periodic refresh) first checks cheaply whether a resync
    is needed at all: with a command runner it lists just our routes and the permanent
    neighbours with ``ip -j`` (iproute2 decodes and filters them in C, milliseconds) and
    compares them with its record; only a difference (or a failed listing) leads to the full
    resync. pyroute2 takes seconds of CPU to decode a dump of thousands of TAPs, which every
    refresh used to pay, blocking the single-threaded driver meanwhile. Every other apply
    trusts the table's record of what it programmed and touches only the interfaces whose
    desired state was set since (plus those still pending): one ``RTM_GETLINK`` each for the
    interface's index and state, then the route and neighbour changes. A full dump costs tens of
    milliseconds at 1,000 workloads (pyroute2 decodes every link and route), too much for every
    endpoint change. An interface with an index we have not programmed is new, so it has none of
    our routes yet.

Thread safety
    None: one thread (the dataplane loop) owns a RouteTable and its netlink socket.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP
from pyroute2.netlink.rtnl.ndmsg import NUD_PERMANENT

from calico.felix.kernel.commands import CommandRunner
from calico.felix.kernel.conntrack import flush_conntrack
from calico.felix.kernel.ip_listing import IpLister, ListedState

_log = logging.getLogger(__name__)

# Protocol number that tags every route Felix makes (shown as "proto 80" by `ip route`). 80 is
# unassigned in iproute2's rt_protos and is the number Calico's own Felix uses for its routes.
RTPROT_FELIX: Final = 80
RT_TABLE_MAIN: Final = 254


class IPRouteLike(Protocol):
    """The slice of pyroute2's ``IPRoute`` that RouteTable uses (tests pass fakes or netns)."""

    def get_links(self, *argv: Any, **kwarg: Any) -> Any: ...
    def get_routes(self, family: int = ..., match: Any = None, **kwarg: Any) -> Any: ...
    def get_neighbours(self, family: int = ..., match: Any = None, **kwarg: Any) -> Any: ...
    def route(self, command: str, **kwarg: Any) -> Any: ...
    def neigh(self, command: str, **kwarg: Any) -> Any: ...
    def link(self, command: str, **kwarg: Any) -> Any: ...


def open_netlink() -> IPRouteLike:
    """A netlink socket for this process's network namespace (pyroute2's IPRoute)."""
    from pyroute2 import IPRoute  # noqa: PLC0415 (only the driver process opens one)

    return IPRoute()  # type: ignore[no-any-return]


@dataclass(frozen=True)
class _Desired:
    ips: frozenset[str]  # canonical address strings, no prefix length
    mac: str | None

    def neighbours(self) -> dict[str, str]:
        """The static ARP/NDP entries wanted: each IP to the MAC, if the MAC is known."""
        return dict.fromkeys(self.ips, self.mac) if self.mac else {}


@dataclass(frozen=True)
class _Programmed:
    """What we last made the kernel hold on one interface (our routes and neighbours)."""

    index: int
    ips: frozenset[str]
    neigh: dict[str, str]


# What an interface name and a MAC may look like on an `ip -batch` line (the batch is split on
# blanks, and a kernel name may hold other characters: those go through netlink).
_BATCH_NAME_RE = re.compile(r"[A-Za-z0-9_.@+=-]{1,15}")
_BATCH_MAC_RE = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")

LinkLookup = Callable[[str], tuple[int, bool] | None]

# From this many interfaces changed in one apply, their changes go as one `ip -batch`: netlink
# costs about 0.5 ms per VM (a route and an ARP entry), starting `ip` about 1.6 ms.
INCREMENTAL_BATCH_MIN: Final = 4


def local_link_lookup(name: str) -> tuple[int, bool] | None:
    """(ifindex, admin up) of an interface of this process's own network namespace, or None if
    it does not exist: ``if_nametoindex`` and the flags in sysfs, about 30 microseconds where
    pyroute2 decodes a whole RTM_GETLINK reply in 0.35 ms (a burst of 500 new endpoints spent
    a quarter of the driver's time there). `name` is one of our validated interface names."""
    try:
        index = socket.if_nametoindex(name)
        flags = int(Path(f"/sys/class/net/{name}/flags").read_text(), 16)
    except (OSError, ValueError):
        return None  # gone (or going) now; the caller keeps it pending for its next event
    return index, bool(flags & IFF_UP)


def _canonical_ip(ip: str, ip_version: int) -> str:
    """Accept "10.0.0.1" or "10.0.0.1/32"; anything wider than a host route is a caller bug."""
    if "%" in ip:
        raise ValueError(f"not an IPv{ip_version} host address: {ip[:64]!r} (scoped)")
    net = ipaddress.ip_network(ip, strict=True)
    if net.version != ip_version or net.prefixlen != net.max_prefixlen:
        raise ValueError(f"not an IPv{ip_version} host address: {ip!r}")
    return str(net.network_address)


class RouteTable:
    """Declarative host routes (and static ARP) to workloads for one IP version."""

    def __init__(
        self,
        ip_version: int,
        ipr: IPRouteLike,
        prefixes: Iterable[str] = ("tap",),
        conntrack_runner: CommandRunner | None = None,
        link_lookup: LinkLookup | None = None,
    ) -> None:
        # conntrack_runner also runs the `ip -j` listings of a refresh's cheap check.
        # link_lookup: (ifindex, admin up) of one interface, e.g. local_link_lookup when `ipr`
        # is this process's own namespace; else one RTM_GETLINK through `ipr`.
        self._link_lookup = link_lookup
        if ip_version not in (4, 6):
            raise ValueError(f"ip_version must be 4 or 6, not {ip_version!r}")
        self.ip_version = ip_version
        self._family = socket.AF_INET if ip_version == 4 else socket.AF_INET6
        self._max_len = 32 if ip_version == 4 else 128
        self._ipr = ipr
        self._prefixes = tuple(prefixes)
        if not self._prefixes or "" in self._prefixes:
            # An empty prefix would make every interface on the host ours.
            raise ValueError("RouteTable needs non-empty interface name prefixes")
        self._conntrack_runner = conntrack_runner
        self._lister = (
            IpLister(conntrack_runner, ip_version, self.owns, RTPROT_FELIX)
            if conntrack_runner is not None else None
        )  # fmt: skip
        self._desired: dict[str, _Desired] = {}
        # Our record of the kernel, per interface, kept by every apply (None: never synced yet).
        self._programmed: dict[str, _Programmed] | None = None
        # Interfaces whose desired state was set or removed since the last apply.
        self._dirty: set[str] = set()
        self._lost_ips: set[str] = set()  # awaiting a conntrack flush
        # Desired interfaces that are missing or down, and per-interface errors, after apply().
        self.pending: set[str] = set()
        self.errors: dict[str, str] = {}

    # -- desired state ----------------------------------------------------------------------

    def owns(self, ifname: str) -> bool:
        return ifname.startswith(self._prefixes)

    def set_routes(self, interface_name: str, ips: Iterable[str], mac: str | None = None) -> None:
        """Want exactly `ips` routed via `interface_name` (and ARP entries if `mac`, IPv4)."""
        if not self.owns(interface_name):
            raise ValueError(f"{interface_name!r} does not start with one of {self._prefixes}")
        wanted = frozenset(_canonical_ip(ip, self.ip_version) for ip in ips)
        old = self._desired.get(interface_name)
        if old is not None:
            self._lost_ips |= old.ips - wanted
        mac = mac.lower() if mac and self.ip_version == 4 else None
        self._desired[interface_name] = _Desired(wanted, mac)
        # Marked even when unchanged: the caller re-sends on interface events (up, re-created).
        self._dirty.add(interface_name)

    def remove_interface(self, name: str) -> None:
        """Want no routes via `name`; its IPs get their conntrack entries flushed."""
        old = self._desired.pop(name, None)
        if old is not None:
            self._lost_ips |= old.ips
        self._dirty.add(name)

    def desired_ips(self, name: str) -> frozenset[str]:
        entry = self._desired.get(name)
        return entry.ips if entry else frozenset()

    # -- programming ------------------------------------------------------------------------

    def apply(self, full: bool = False) -> None:
        """Make the kernel match the desired state on our interfaces; flush lost conntrack.

        `full` (and the first apply) re-reads every route and neighbour on our interfaces and
        repairs any difference; otherwise only interfaces changed since the last apply, or still
        pending or in error, are looked at."""
        if self._programmed is None or (full and not self._kernel_matches_record()):
            self._apply_full()
        else:
            self._apply_incremental()
        self._flush_lost_conntrack()

    def _kernel_matches_record(self) -> bool:
        """Whether our routes and permanent neighbours in the kernel are exactly those we
        recorded programming (so a refresh has nothing to repair); False if unsure."""
        assert self._programmed is not None
        if self._lister is None:
            return False  # no way to list cheaply: always resync
        routes = self._lister.routes()
        if routes is None:
            return False
        want_routes = {(name, ip) for name, prog in self._programmed.items() for ip in prog.ips}
        if set(routes) != want_routes:
            _log.info("IPv%d routes differ from what was programmed; resyncing", self.ip_version)
            return False
        neighbours = self._lister.neighbours()
        if neighbours is None:
            return False
        want_neigh = {
            (name, ip): mac for name, prog in self._programmed.items()
            for ip, mac in prog.neigh.items()
        }  # fmt: skip
        if neighbours != want_neigh:
            _log.info("Static ARP entries differ from what was programmed; resyncing")
            return False
        return True

    def _apply_full(self) -> None:
        listed = self._lister.state() if self._lister else None
        if listed is not None and self._batchable(listed[0]):
            # Every change in one `ip -batch`: 2,000 route and ARP changes in tens of
            # milliseconds, where one pyroute2 request each took about 0.9 s at a cold start.
            batch: list[str] = []
            self._resync(listed, batch)
            if self._run_batch(batch):
                return
            # Part of the batch may have been applied: list again.
            listed = self._lister.state() if self._lister else None
        self._resync(listed or self._dumped_state(), None)

    def _resync(
        self,
        state: ListedState,
        batch: list[str] | None,
    ) -> None:
        """Record the desired state as programmed for every link, and program the differences
        through pyroute2 (batch None) or as `ip` batch lines appended to `batch`."""
        links, routes, neighbours = state
        self._programmed = {}
        self._dirty = set()
        self.pending = set()
        self.errors = {}
        for name, (index, is_up) in links.items():
            self._sync_and_record(name, index, is_up, routes, neighbours, batch)
        self.pending |= set(self._desired) - set(links)

    def _batchable(self, links: dict[str, tuple[int, bool]]) -> bool:
        """Whether every name and MAC can be written on an `ip -batch` line as is (names come
        from the kernel; anything unusual goes through netlink instead)."""
        macs = {entry.mac for entry in self._desired.values() if entry.mac}
        return all(_BATCH_NAME_RE.fullmatch(name) for name in links) and all(
            _BATCH_MAC_RE.fullmatch(mac) for mac in macs
        )

    def _run_batch(self, batch: list[str]) -> bool:
        if not batch:
            return True
        assert self._conntrack_runner is not None
        argv = ["ip", f"-{self.ip_version}", "-batch", "-"]
        proc = self._conntrack_runner.run(argv, input="\n".join(batch) + "\n")
        if proc.returncode == 0:
            return True
        _log.warning("ip -batch of %d route changes failed (%s); programming them one by one",
                     len(batch), proc.stderr.strip()[:500])  # fmt: skip
        return False

    def _apply_incremental(self) -> None:
        assert self._programmed is not None
        todo = self._dirty | self.pending | set(self.errors)
        self._dirty = set()
        self.pending -= todo
        for name in todo:
            self.errors.pop(name, None)
        links: dict[str, tuple[int, bool]] = {}
        for name in sorted(todo):
            known = self._programmed.get(name)
            if not self.desired_ips(name) and (known is None or not (known.ips or known.neigh)):
                # Nothing of ours to add or remove there (e.g. a VM without an address of this
                # IP version): the link need not be looked up (a burst of 500 new VMs looked up
                # every interface for both IP versions).
                if name not in self._desired:
                    self._programmed.pop(name, None)
                continue
            link = self._lookup_link(name)
            if link is None:
                self._programmed.pop(name, None)  # gone, and its routes with it
                if name in self._desired:
                    self.pending.add(name)
            else:
                links[name] = link
        # Many interfaces at once (a burst of new VMs): their changes in one `ip -batch`
        # rather than one netlink request each (two per VM, 40 % of the driver's time in a
        # burst of 500); one or a few go through netlink, cheaper than starting `ip`.
        batch: list[str] | None = None
        if len(links) >= INCREMENTAL_BATCH_MIN and self._lister and self._batchable(links):
            batch = []
        for name, (index, is_up) in links.items():
            known = self._programmed.get(name)
            if known is None or known.index != index:
                known = _Programmed(index, frozenset(), {})  # a new interface: none of ours
            routes = {index: set(known.ips)}
            neighbours = {index: dict(known.neigh)}
            self._sync_and_record(name, index, is_up, routes, neighbours, batch)
        if batch is not None and not self._run_batch(batch):
            self._apply_full()  # part of the batch may be in: list the kernel and resync

    def _sync_and_record(
        self,
        name: str,
        index: int,
        is_up: bool,
        routes: dict[int, set[str]],
        neighbours: dict[int, dict[str, str]],
        batch: list[str] | None = None,
    ) -> None:
        assert self._programmed is not None
        try:
            self._sync_interface(name, index, is_up, routes, neighbours, batch)
        except NetlinkError as exc:
            # E.g. the interface vanished mid-apply; retried on the next apply.
            _log.warning("programming routes on %s failed: %s", name, exc)
            self.errors[name] = str(exc)
            # Unknown now: treat it as new next time ("replace" makes re-adding harmless).
            self._programmed.pop(name, None)
            return
        desired = self._desired.get(name, _Desired(frozenset(), None))
        if is_up:
            self._programmed[name] = _Programmed(index, desired.ips, desired.neighbours())
        else:
            # Down: we removed what is not wanted; the kernel drops routes of a down device.
            self._programmed[name] = _Programmed(index, frozenset(), {})

    def _lookup_link(self, name: str) -> tuple[int, bool] | None:
        """(ifindex, admin up) of one interface with a single RTM_GETLINK; None if missing."""
        if self._link_lookup is not None:
            return self._link_lookup(name)
        try:
            reply = self._ipr.link("get", ifname=name)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise
        for link in reply:
            return link["index"], bool(link["flags"] & IFF_UP)
        return None

    def _sync_interface(
        self,
        name: str,
        index: int,
        is_up: bool,
        routes: dict[int, set[str]],
        neighbours: dict[int, dict[str, str]],
        batch: list[str] | None = None,
    ) -> None:
        """Make one interface's routes and ARP entries as desired: through pyroute2, or (batch
        given) as `ip -batch` lines in the same order."""
        desired = self._desired.get(name, _Desired(frozenset(), None))
        have_routes = routes.get(index, set())
        have_neigh = neighbours.get(index, {})
        want_neigh = desired.neighbours()
        route = f"proto {RTPROT_FELIX} scope link table main"
        # Removals first (ARP before route, as §5.11), so a moved IP never briefly has two.
        for ip in set(have_neigh) - set(want_neigh):
            if batch is None:
                self._ipr.neigh("del", dst=ip, ifindex=index)
            else:
                batch.append(f"neigh del {ip} dev {name}")
        for ip in have_routes - desired.ips:
            if batch is None:
                self._ipr.route("del", **self._route_spec(ip, index))
            else:
                batch.append(f"route del {ip}/{self._max_len} dev {name} {route}")
        if desired.ips and not is_up:
            # The kernel refuses routes via an admin-down device; retried on the up event.
            self.pending.add(name)
            return
        for ip, mac in want_neigh.items():
            if have_neigh.get(ip) == mac:
                continue
            if batch is None:
                self._ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=index, state=NUD_PERMANENT)
            else:
                batch.append(f"neigh replace {ip} lladdr {mac} dev {name} nud permanent")
        for ip in desired.ips - have_routes:
            if batch is None:
                self._ipr.route("replace", **self._route_spec(ip, index))
            else:
                batch.append(f"route replace {ip}/{self._max_len} dev {name} {route}")

    def _route_spec(self, ip: str, index: int) -> dict[str, Any]:
        return {
            "dst": f"{ip}/{self._max_len}",
            "oif": index,
            "scope": "link",
            "proto": RTPROT_FELIX,
            "table": RT_TABLE_MAIN,
            "family": self._family,
        }

    # -- reading the kernel -----------------------------------------------------------------

    def _dumped_state(self) -> ListedState:
        """The same from pyroute2's netlink dumps (no command runner, or `ip` failed)."""
        links = self._our_links()
        routes = self._our_routes(links)
        neighbours = self._our_neighbours(links) if self.ip_version == 4 else {}
        return links, routes, neighbours

    def _our_links(self) -> dict[str, tuple[int, bool]]:
        """name -> (ifindex, admin up) for the interfaces whose names carry our prefixes."""
        links = {}
        for link in self._ipr.get_links():
            name = link.get("ifname")
            if name and self.owns(name):
                links[name] = (link["index"], bool(link["flags"] & IFF_UP))
        return links

    def _our_routes(self, links: dict[str, tuple[int, bool]]) -> dict[int, set[str]]:
        """ifindex -> host-route IPs with our protocol, on our interfaces, in the main table."""
        indexes = {index for index, _ in links.values()}
        found: dict[int, set[str]] = {}
        for route in self._ipr.get_routes(family=self._family, table=RT_TABLE_MAIN):
            oif = route.get("oif")
            if route["proto"] != RTPROT_FELIX or oif not in indexes:
                continue
            if route["dst_len"] != self._max_len or not route.get("dst"):
                continue  # not a shape we create; leave it alone
            found.setdefault(oif, set()).add(route.get("dst"))
        return found

    def _our_neighbours(self, links: dict[str, tuple[int, bool]]) -> dict[int, dict[str, str]]:
        """ifindex -> {ip: mac} of permanent IPv4 neighbour entries on our interfaces."""
        indexes = {index for index, _ in links.values()}
        found: dict[int, dict[str, str]] = {}
        for entry in self._ipr.get_neighbours(family=socket.AF_INET):
            index = entry["ifindex"]
            if index in indexes and entry["state"] & NUD_PERMANENT and entry.get("dst"):
                mac = (entry.get("lladdr") or "").lower()
                found.setdefault(index, {})[entry.get("dst")] = mac
        return found

    # -- conntrack --------------------------------------------------------------------------

    def _flush_lost_conntrack(self) -> None:
        if not self._lost_ips:
            return  # the usual case; the check below looks at every interface's IPs
        # An IP that was moved to another interface is still in use: keep its flows.
        still_wanted = set().union(*(d.ips for d in self._desired.values()))
        lost, self._lost_ips = self._lost_ips - still_wanted, set()
        if self._conntrack_runner is None:
            return
        for ip in sorted(lost):
            flush_conntrack(self._conntrack_runner, ip, self.ip_version)
