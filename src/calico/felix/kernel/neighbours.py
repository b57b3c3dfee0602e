"""Proxy NDP entries for workloads' IPv6 gateways (felix.md §5.11).

A workload on a routed TAP sends everything to its IPv6 gateway, an address no interface on the
host holds; the host answers the neighbour solicitation for it because the TAP has
``proxy_ndp=1`` and a proxy entry ``<gateway> dev <tap>`` (``ip -6 neigh add proxy``).

API model
    :class:`ProxyNdpTable` is declarative, like :class:`calico.felix.kernel.routes.RouteTable`.
    The caller says which gateways it wants proxied on each workload interface with
    :meth:`ProxyNdpTable.set_proxies` / :meth:`ProxyNdpTable.remove_interface`, then calls
    :meth:`ProxyNdpTable.apply`, which makes the kernel agree. IPv6 only: there is one table.

Design
    * Felix owns only the proxy entries on interfaces whose names start with one of its
      workload prefixes; entries on any other interface are never read as ours, never deleted.
      On our interfaces, every proxy entry is Felix's (nothing else puts them on a TAP), so one
      Felix no longer wants (a previous run's, a moved gateway's) is deleted.
    * The first :meth:`ProxyNdpTable.apply` and ``apply(full=True)`` (the caller's periodic
      refresh) list the kernel's proxy entries (``ip -6 -j neigh show proxy``, one command) and
      repair every difference on our interfaces, both ways: missing entries are added, unwanted
      ones deleted. A refresh that finds nothing to repair runs nothing else.
    * Every other apply touches only the interfaces whose desired state was set since (or that
      are pending or failed), trusting the record of what it programmed for deletions but
      writing every wanted entry again with ``replace`` (idempotent): the kernel drops an
      interface's proxy entries when the interface goes down or is deleted, and the caller sets
      the interface's proxies again on those events.
    * An interface that does not exist (the TAP is not there yet) stays pending and is tried
      again at the next apply; the caller also sets it again when the interface appears.
    * A failure is logged and recorded in :attr:`ProxyNdpTable.errors` (the caller reports the
      endpoint's status as "error"), and the interface is tried again at the next apply; it
      never raises out of :meth:`ProxyNdpTable.apply`, so one interface cannot stop the others.

Implementation
    Commands go through a :class:`~calico.felix.kernel.commands.CommandRunner` (``ip -6 neigh
    replace|del proxy <gateway> dev <interface>``): one per changed entry, typically one per
    workload, and only when its interface or gateway changes.

Thread safety
    None: one thread (the dataplane loop) owns a ProxyNdpTable.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from typing import Final

from calico.common.quoting import quoted
from calico.felix.kernel.commands import CommandRunner
from calico.felix.kernel.ip_listing import host_entries, list_json

_log = logging.getLogger(__name__)

LIST_ARGV: Final = ("ip", "-6", "-j", "neigh", "show", "proxy")
# What `ip` prints when the interface does not exist (iproute2's ll_name_to_index failure).
_NO_DEVICE: Final = "Cannot find device"
# What the kernel answers when deleting an entry that is not there.
_NO_ENTRY: Final = "No such file or directory"


def _gateway(address: str) -> str:
    """The canonical form of one IPv6 address; anything else is a caller bug."""
    if "%" in address:
        raise ValueError(f"not an IPv6 address: {address[:64]!r} (scoped)")
    ip = ipaddress.ip_address(address)
    if ip.version != 6:
        raise ValueError(f"not an IPv6 address: {address!r}")
    return str(ip)


class ProxyNdpTable:
    """Declarative proxy NDP entries (``ip -6 neigh ... proxy``) on workload interfaces."""

    def __init__(self, runner: CommandRunner, prefixes: Iterable[str] = ("tap",)) -> None:
        self._runner = runner
        self._prefixes = tuple(prefixes)
        if not self._prefixes or "" in self._prefixes:
            # An empty prefix would make every interface on the host ours.
            raise ValueError("ProxyNdpTable needs non-empty interface name prefixes")
        self._desired: dict[str, frozenset[str]] = {}  # interface -> gateways
        # What we believe the kernel holds on our interfaces (kept by every apply).
        self._programmed: dict[str, frozenset[str]] = {}
        self._listed = False  # whether an apply has listed the kernel's entries yet
        self._dirty: set[str] = set()  # set or removed since the last apply
        # After apply(): interfaces that are wanted but missing, and per-interface errors.
        self.pending: set[str] = set()
        self.errors: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"ProxyNdpTable(prefixes={self._prefixes!r})"

    # -- desired state ----------------------------------------------------------------------

    def owns(self, interface: str) -> bool:
        return interface.startswith(self._prefixes)

    def set_proxies(self, interface: str, gateways: Iterable[str]) -> None:
        """Want exactly `gateways` (IPv6 addresses) proxied on `interface`."""
        if not self.owns(interface):
            raise ValueError(f"{interface!r} does not start with one of {self._prefixes}")
        wanted = frozenset(_gateway(g) for g in gateways)
        if wanted:
            self._desired[interface] = wanted
        else:
            self._desired.pop(interface, None)
        # Marked even when unchanged: the caller sets it again on interface events (up,
        # re-created), after which the kernel no longer holds the entries.
        self._dirty.add(interface)

    def remove_interface(self, interface: str) -> None:
        """Want no proxy entries on `interface`."""
        self._desired.pop(interface, None)
        self._dirty.add(interface)

    def desired(self, interface: str) -> frozenset[str]:
        return self._desired.get(interface, frozenset())

    # -- programming ------------------------------------------------------------------------

    def apply(self, full: bool = False) -> None:
        """Make the kernel's proxy entries on our interfaces match the desired state.

        `full` (and the first apply) lists every proxy entry and repairs any difference on our
        interfaces; otherwise only interfaces set since the last apply, or still pending or
        in error, are written. Never raises for a failing command: see `errors`."""
        kernel = None
        if full or not self._listed:
            kernel = self._list()
            self._listed = kernel is not None  # a failed listing (logged) is tried next apply
        if kernel is not None:
            todo = set(kernel) | set(self._desired) | set(self._programmed) | self._dirty
        else:
            # Incremental, or the listing failed: write what is known to be needed.
            todo = self._dirty | self.pending | set(self.errors)
        self._dirty = set()
        self.pending -= todo
        for name in todo:
            self.errors.pop(name, None)
        for name in sorted(todo):
            have = kernel.get(name, frozenset()) if kernel is not None else None
            self._sync(name, have)

    def _list(self) -> dict[str, frozenset[str]] | None:
        """interface -> proxied IPv6 addresses, for our interfaces; None if listing failed."""
        entries = list_json(self._runner, list(LIST_ARGV))
        if entries is None:
            return None
        found: dict[str, set[str]] = {}
        for dev, address in host_entries(entries, self.owns, 6):
            found.setdefault(dev, set()).add(address)
        return {dev: frozenset(addresses) for dev, addresses in found.items()}

    def _sync(self, name: str, have: frozenset[str] | None) -> None:
        """Make `name` hold exactly its wanted entries. `have`: what the kernel listed there, or
        None to trust the record (then every wanted entry is written again)."""
        want = self._desired.get(name, frozenset())
        known = self._programmed.get(name, frozenset()) if have is None else have
        adds = want if have is None else want - have
        problems: list[str] = []
        missing = False
        for gateway in sorted(known - want):
            error = self._neigh("del", gateway, name)
            if error is not None and _NO_ENTRY not in error and _NO_DEVICE not in error:
                problems.append(f"cannot delete {gateway}: {error}")
        for gateway in sorted(adds):
            error = self._neigh("replace", gateway, name)
            if error is not None and _NO_DEVICE in error:
                missing = True  # the interface is not there (yet): nothing else to do now
                break
            if error is not None:
                problems.append(f"cannot add {gateway}: {error}")
        if missing:
            # The interface is gone, and its entries with it.
            self._programmed.pop(name, None)
            if want:
                self.pending.add(name)
                _log.debug("Interface %s not found; its proxy NDP entries wait", quoted(name))
            return
        if problems:
            message = "; ".join(problems)
            _log.warning("Proxy NDP on %s: %s; will retry", quoted(name), message)
            self.errors[name] = message
            # Unsure what the kernel holds: remember all of it, so the retry deletes leftovers.
            recorded = known | want
        else:
            recorded = want
        if recorded:
            self._programmed[name] = recorded
        else:
            self._programmed.pop(name, None)

    def _neigh(self, command: str, gateway: str, interface: str) -> str | None:
        """Run one ``ip -6 neigh <command> proxy``; None on success, else its error text."""
        argv = ["ip", "-6", "neigh", command, "proxy", gateway, "dev", interface]
        proc = self._runner.run(argv)
        if proc.returncode == 0:
            return None
        return proc.stderr.strip() or f"exit status {proc.returncode}"


__all__ = ["LIST_ARGV", "ProxyNdpTable"]
