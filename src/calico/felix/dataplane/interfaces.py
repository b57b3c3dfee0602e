"""Kernel settings for workload interfaces, and a netlink watcher for interface state.

API model
    * :func:`configure_global` and :func:`configure_interface` apply the sysctls of felix.md
      §5.11 through a :class:`SysctlWriter`. :class:`ProcSysctlWriter` writes ``/proc/sys``
      files of the namespace Felix runs in (production); :class:`RunnerSysctlWriter` runs
      ``sysctl`` through a command runner, e.g. inside a test namespace via ``ip netns exec``.
    * :class:`InterfaceWatcher` reports link changes to a :class:`InterfaceListener`:
      ``on_interface_update(name, up)``, ``on_interface_removed(name)`` and
      ``on_interface_addrs(name, addrs)``. :meth:`InterfaceWatcher.snapshot` lists every
      interface (and reports differences from what was known); :meth:`InterfaceWatcher.read_events`
      drains pending netlink events. :attr:`InterfaceWatcher.changes` counts the changes
      reported so far (the driver's periodic re-scan uses it to see whether a snapshot found
      something the events missed).

Design
    The watcher needs no thread: it exposes :meth:`InterfaceWatcher.fileno` so the dataplane
    loop can ``select()`` on it next to its other inputs and call ``read_events()`` when it is
    readable. It subscribes to netlink groups *before* the first dump so no change between the
    two is lost, and it reports only real changes (a flag flip that leaves "up" as it was is not
    an event). "Up" means oper-state UP (§5.11), or UNKNOWN with IFF_UP and IFF_RUNNING, which
    is what drivers that do not track carrier report.

Implementation
    Events arrive on a plain non-blocking ``AF_NETLINK`` socket that this module reads itself
    and decodes with pyroute2's rtnetlink message classes; dumps go through a pyroute2
    ``IPRoute``. pyroute2's own event API runs an asyncio loop per call, which does not mix well
    with an external ``select()``. If the kernel drops events (``ENOBUFS``), the watcher falls
    back to a full snapshot and reports the differences.

Thread safety
    None: one thread owns a watcher. The sysctl helpers are stateless.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns
from pyroute2.netlink import NETLINK_ROUTE
from pyroute2.netlink.rtnl import (
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_LINK,
)
from pyroute2.netlink.rtnl.ifinfmsg import IFF_RUNNING, IFF_UP
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from calico.felix.dataplane.commands import CommandRunner

_log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Sysctls
# ---------------------------------------------------------------------------------------------


class LooseRPFError(RuntimeError):
    """net.ipv4.conf.all.rp_filter is 2 (loose): anti-spoofing would not work (§5.11)."""


class SysctlWriter(Protocol):
    """Reads and writes sysctls named by their ``/proc/sys``-relative path (``net/ipv4/...``).

    Paths use ``/`` so interface names containing dots need no escaping.
    """

    def write(self, path: str, value: str) -> None: ...
    def read(self, path: str) -> str: ...


class ProcSysctlWriter:
    """Writes files under `root` (``/proc/sys``: the current process's network namespace)."""

    def __init__(self, root: Path = Path("/proc/sys")) -> None:
        self.root = root

    def _file(self, path: str) -> Path:
        if ".." in path.split("/"):
            raise ValueError(f"bad sysctl path {path!r}")
        return self.root / path

    def write(self, path: str, value: str) -> None:
        self._file(path).write_text(f"{value}\n")

    def read(self, path: str) -> str:
        return self._file(path).read_text().strip()


class RunnerSysctlWriter:
    """Runs ``sysctl`` through a command runner (with a NetnsRunner: inside that namespace)."""

    def __init__(self, runner: CommandRunner) -> None:
        self.runner = runner

    def write(self, path: str, value: str) -> None:
        proc = self.runner.run(["sysctl", "-q", "-w", f"{path}={value}"])
        if proc.returncode != 0:
            raise OSError(f"sysctl -w {path}={value}: {proc.stderr.strip()}")

    def read(self, path: str) -> str:
        proc = self.runner.run(["sysctl", "-n", path])
        if proc.returncode != 0:
            raise OSError(f"sysctl -n {path}: {proc.stderr.strip()}")
        return proc.stdout.strip()


def interface_sysctls(name: str, ip_version: int) -> dict[str, str]:
    """The per-workload-interface sysctls of §5.11, path -> value."""
    if ip_version == 4:
        return {
            # Strict reverse-path filtering is Felix's anti-spoofing for workloads.
            f"net/ipv4/conf/{name}/rp_filter": "1",
            # Lets workloads reach 127.0.0.1-DNATed services (e.g. the metadata proxy).
            f"net/ipv4/conf/{name}/route_localnet": "1",
            # Workloads have a default route to the interface; the host answers all ARP.
            f"net/ipv4/conf/{name}/proxy_arp": "1",
            # ... and answers at once rather than after a random delay.
            f"net/ipv4/neigh/{name}/proxy_delay": "0",
        }
    if ip_version == 6:
        # Lets the workload resolve its gateway, added as an `ip -6 neigh add proxy` entry.
        return {f"net/ipv6/conf/{name}/proxy_ndp": "1"}
    raise ValueError(f"ip_version must be 4 or 6, not {ip_version!r}")


def configure_interface(name: str, ip_version: int, writer: SysctlWriter) -> None:
    """Apply §5.11's per-interface sysctls. Raises OSError if the interface is gone."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"bad interface name {name!r}")
    for path, value in interface_sysctls(name, ip_version).items():
        writer.write(path, value)


def repair_interface(name: str, ip_version: int, writer: SysctlWriter) -> list[str]:
    """Check §5.11's per-interface sysctls and write back any another tool changed; return
    what was repaired ("path: was -> now"). Raises OSError if the interface is gone."""
    repaired = []
    for path, value in interface_sysctls(name, ip_version).items():
        found = writer.read(path)
        if found != value:
            writer.write(path, value)
            repaired.append(f"{path}: {found} -> {value}")
    return repaired


def configure_global(
    ip_version: int,
    writer: SysctlWriter,
    ignore_loose_rpf: bool = False,
    runner: CommandRunner | None = None,
) -> None:
    """Start-of-day kernel settings (§5.11). Felix deliberately leaves ip_forward alone.

    IPv4: refuse loose RPF unless `ignore_loose_rpf`; make new interfaces start with strict
    rp_filter; if `runner` is given, run a harmless ``conntrack -L`` so the kernel loads
    ``nf_conntrack_netlink`` before the first flush needs it. IPv6 needs nothing global.
    """
    if ip_version == 6:
        return
    if ip_version != 4:
        raise ValueError(f"ip_version must be 4 or 6, not {ip_version!r}")
    if writer.read("net/ipv4/conf/all/rp_filter") == "2" and not ignore_loose_rpf:
        raise LooseRPFError(
            "net.ipv4.conf.all.rp_filter is 2 (loose); Felix's anti-spoofing needs strict "
            "(1) or off (0). Set IgnoreLooseRPF to run anyway."
        )
    writer.write("net/ipv4/conf/default/rp_filter", "1")
    if runner is not None:
        runner.run(["conntrack", "-L", "-s", "169.254.45.169"])


# ---------------------------------------------------------------------------------------------
# Interface watcher
# ---------------------------------------------------------------------------------------------

WATCH_GROUPS: Final = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
RECV_BUFFER: Final = 1 << 20
RECV_SIZE: Final = 1 << 16


class InterfaceListener(Protocol):
    def on_interface_update(self, name: str, up: bool) -> None: ...
    def on_interface_removed(self, name: str) -> None: ...
    def on_interface_addrs(self, name: str, addrs: frozenset[str]) -> None: ...


@dataclass
class InterfaceState:
    name: str
    index: int
    up: bool
    addrs: set[str] = field(default_factory=set)


def _is_up(flags: int, operstate: str | None) -> bool:
    if operstate == "UP":
        return True
    return operstate == "UNKNOWN" and bool(flags & IFF_UP) and bool(flags & IFF_RUNNING)


def _open_event_socket(netns: str | None) -> socket.socket:
    """A non-blocking rtnetlink socket subscribed to WATCH_GROUPS, in `netns` if given."""
    if netns is None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    else:
        # Made by a short-lived child that enters the namespace; flags=0: never create it.
        sock = pyroute2_netns.create_socket(
            netns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE, flags=0
        )
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
        sock.bind((0, WATCH_GROUPS))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class InterfaceWatcher:
    """Reports interface up/down/removal and address changes from rtnetlink events."""

    def __init__(self, listener: InterfaceListener, netns: str | None = None) -> None:
        self._listener = listener
        self._sock = _open_event_socket(netns)  # subscribe before any dump
        try:
            self._ipr = IPRoute() if netns is None else IPRoute(netns=netns, flags=0)
        except BaseException:
            self._sock.close()
            raise
        self._marshal = MarshalRtnl()
        self._by_index: dict[int, InterfaceState] = {}
        # How many changes were reported to the listener so far: lets a caller of snapshot()
        # (the periodic re-scan) tell whether it found anything the events had not reported.
        self.changes = 0

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()
        self._ipr.close()

    def __enter__(self) -> InterfaceWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def interfaces(self) -> dict[str, InterfaceState]:
        """What the watcher currently believes, by name."""
        return {state.name: state for state in self._by_index.values()}

    # -- full listing -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, InterfaceState]:
        """Dump all links and addresses, report differences from what was known, return all."""
        fresh: dict[int, InterfaceState] = {}
        for link in self._ipr.get_links():
            index, name = link["index"], link.get("ifname")
            fresh[index] = InterfaceState(name, index, _is_up(link["flags"], link.get("operstate")))
        for addr in self._ipr.get_addr():
            state = fresh.get(addr["index"])
            if state is not None and addr.get("address"):
                state.addrs.add(f"{addr.get('address')}/{addr['prefixlen']}")
        for index in set(self._by_index) - set(fresh):
            self._remove(index)
        for state in fresh.values():
            self._update_link(state.index, state.name, state.up)
            self._set_addrs(state.index, state.addrs)
        return self.interfaces

    # -- events -----------------------------------------------------------------------------

    def read_events(self, timeout: float = 0.0) -> int:
        """Wait up to `timeout` s for events, then handle all pending ones; returns the count."""
        ready, _, _ = select.select([self._sock], [], [], timeout)
        if not ready:
            return 0
        handled = 0
        while True:
            try:
                data = self._sock.recv(RECV_SIZE)
            except BlockingIOError:
                return handled
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                # The kernel dropped events: only a full listing tells us where we are.
                _log.warning("netlink event queue overflowed; resyncing interfaces")
                self.snapshot()
                continue
            for msg in self._marshal.parse(data):
                handled += self._handle(msg)

    def _handle(self, msg: Any) -> int:
        kind = msg["header"]["type"]
        if kind == RTM_NEWLINK:
            up = _is_up(msg["flags"], msg.get("operstate"))
            self._update_link(msg["index"], msg.get("ifname"), up)
        elif kind == RTM_DELLINK:
            self._remove(msg["index"])
        elif kind in (RTM_NEWADDR, RTM_DELADDR):
            self._handle_addr(msg, kind == RTM_NEWADDR)
        else:
            return 0
        return 1

    def _handle_addr(self, msg: Any, added: bool) -> None:
        state = self._by_index.get(msg["index"])
        address = msg.get("address")
        if state is None or not address:
            return  # an address on a link we have not heard of yet: the link event follows
        cidr = f"{address}/{msg['prefixlen']}"
        addrs = state.addrs | {cidr} if added else state.addrs - {cidr}
        self._set_addrs(state.index, addrs)

    # -- state changes (each reports to the listener only when something changed) ------------

    def _update_link(self, index: int, name: str | None, up: bool) -> None:
        old = self._by_index.get(index)
        if name is None:
            return
        if old is not None and old.name != name:
            # A rename is, for Felix's purposes, one interface going and another coming.
            self._remove(index)
            old = None
        if old is None:
            self._by_index[index] = InterfaceState(name, index, up)
            self.changes += 1
            self._listener.on_interface_update(name, up)
        elif old.up != up:
            old.up = up
            self.changes += 1
            self._listener.on_interface_update(name, up)

    def _set_addrs(self, index: int, addrs: Iterable[str]) -> None:
        state = self._by_index.get(index)
        addrs = set(addrs)
        if state is not None and state.addrs != addrs:
            state.addrs = addrs
            self.changes += 1
            self._listener.on_interface_addrs(state.name, frozenset(addrs))

    def _remove(self, index: int) -> None:
        state = self._by_index.pop(index, None)
        if state is not None:
            self.changes += 1
            self._listener.on_interface_removed(state.name)


def read_operstate(name: str, sys_class_net: Path = Path("/sys/class/net")) -> bool:
    """Whether `name` is oper-up per sysfs, as Felix checks at endpoint creation (§5.11)."""
    try:
        state = (sys_class_net / name / "operstate").read_text().strip()
    except FileNotFoundError:
        return False
    return state == "up"


__all__ = [
    "InterfaceListener",
    "InterfaceState",
    "InterfaceWatcher",
    "LooseRPFError",
    "ProcSysctlWriter",
    "RunnerSysctlWriter",
    "SysctlWriter",
    "configure_global",
    "configure_interface",
    "interface_sysctls",
    "read_operstate",
]
