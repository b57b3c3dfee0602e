"""A netlink watcher for interface state (names, oper state, addresses).

API model
    :class:`InterfaceWatcher` reports link changes to a :class:`InterfaceListener`:
    ``on_interface_update(name, up)``, ``on_interface_removed(name)`` and
    ``on_interface_addrs(name, addrs)``. :meth:`InterfaceWatcher.snapshot` lists every
    interface (and reports differences from what was known); :meth:`InterfaceWatcher.read_events`
    drains pending netlink events. :attr:`InterfaceWatcher.changes` counts the changes
    reported so far (the driver's periodic re-scan uses it to see whether a snapshot found
    something the events missed). Names come from the kernel: the listener must treat them as
    untrusted input (docs/design/security.md).

Design
    The watcher needs no thread: it exposes :meth:`InterfaceWatcher.fileno` so the dataplane
    loop can ``select()`` on it next to its other inputs and call ``read_events()`` when it is
    readable. It subscribes to netlink groups *before* the first dump so no change between the
    two is lost, and it reports only real changes (a flag flip that leaves "up" as it was is not
    an event). "Up" means oper-state UP (§5.11), or UNKNOWN with IFF_UP and IFF_RUNNING, which
    is what drivers that do not track carrier report.

Implementation
    Events arrive on a plain non-blocking ``AF_NETLINK`` socket that this module reads itself
    and decodes with pyroute2's rtnetlink message classes; a snapshot is one ``ip -j addr show``
    (pyroute2's ``IPRoute`` dumps if ``ip`` fails: they cost ~30 times as much CPU).
    pyroute2's own event API runs an asyncio loop per call, which does not mix well with an
    external ``select()``. If the kernel drops events (``ENOBUFS``), the watcher falls
    back to a full snapshot and reports the differences.

Thread safety
    None: one thread owns a watcher.
"""

from __future__ import annotations

import errno
import json
import logging
import select
import socket
import subprocess
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

_log = logging.getLogger(__name__)

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
        self._netns = netns
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
        """List all links and addresses, report differences from what was known, return all."""
        fresh = self._listed() or self._dumped()
        for index in set(self._by_index) - set(fresh):
            self._remove(index)
        for state in fresh.values():
            self._update_link(state.index, state.name, state.up)
            self._set_addrs(state.index, state.addrs)
        return self.interfaces

    def _listed(self) -> dict[int, InterfaceState] | None:
        """Links and addresses from one `ip -j addr show` (iproute2 decodes the dump in C:
        about 40 ms for 2,000 links where pyroute2's two dumps take over a second); None if
        it failed (then pyroute2's dumps are used)."""
        argv = ["ip", "-j", "addr", "show"] if self._netns is None else [
            "ip", "-n", self._netns, "-j", "addr", "show"]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        try:
            listed = json.loads(proc.stdout) if proc.returncode == 0 else None
        except ValueError:
            listed = None
        if not isinstance(listed, list):
            _log.warning("%s failed (%s); dumping with pyroute2", " ".join(argv), proc.stderr)
            return None
        fresh: dict[int, InterfaceState] = {}
        for link in listed:
            index, name, flags = link.get("ifindex"), link.get("ifname"), link.get("flags")
            if not isinstance(index, int) or not isinstance(name, str):
                continue
            admin_up = isinstance(flags, list) and "UP" in flags
            # iproute2 hides IFF_RUNNING; the kernel sets it when admin up with oper state UP
            # or UNKNOWN, so UNKNOWN counts as up exactly when admin up, as in _is_up.
            operstate = link.get("operstate")
            up = operstate == "UP" or (operstate == "UNKNOWN" and admin_up)
            state = InterfaceState(name, index, up)
            for addr in link.get("addr_info") or ():
                # pyroute2's "address" is IFA_ADDRESS: iproute2 prints it as "address" when
                # it differs from IFA_LOCAL (a peer), else only "local".
                address = addr.get("address") or addr.get("local")
                if isinstance(address, str) and isinstance(addr.get("prefixlen"), int):
                    state.addrs.add(f"{address}/{addr['prefixlen']}")
            fresh[index] = state
        return fresh

    def _dumped(self) -> dict[int, InterfaceState]:
        """The same from pyroute2's netlink dumps."""
        fresh: dict[int, InterfaceState] = {}
        for link in self._ipr.get_links():
            index, name = link["index"], link.get("ifname")
            fresh[index] = InterfaceState(name, index, _is_up(link["flags"], link.get("operstate")))
        for addr in self._ipr.get_addr():
            state = fresh.get(addr["index"])
            if state is not None and addr.get("address"):
                state.addrs.add(f"{addr.get('address')}/{addr['prefixlen']}")
        return fresh

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
    "read_operstate",
]
