"""This host's workload endpoints, and which endpoint owns each interface and IP.

Kernel state belongs to interfaces, not keys: an interface's chains, routes, ARP entries and
sysctls are rendered from the one endpoint that owns it, the first of its claimants in key order
(`claims.Claims`), so that a re-keyed endpoint or a stale duplicate never takes them away from
the live one, and every host resolves a conflict alike. An IP claimed by two local endpoints is
routed to the first of them that owns its interface. Pure bookkeeping: the manager asks what
changed and programs it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from calico.common.datamodel_v1 import WorkloadEndpointKey
from calico.felix.calc import messages as m
from calico.felix.dataplane.claims import Claims

log = logging.getLogger(__name__)


@dataclass
class Changes:
    """What one endpoint change means for the kernel: interfaces whose chains must be rendered
    again, and interfaces whose routes must be set again."""

    chains: set[str] = field(default_factory=set)
    routes: set[str] = field(default_factory=set)


class Workloads:
    def __init__(self) -> None:
        self._by_key: dict[WorkloadEndpointKey, m.WorkloadEndpointUpdate] = {}
        self._claims = Claims[WorkloadEndpointKey](_rank)  # interface -> endpoints naming it
        self._ip_claims = Claims[WorkloadEndpointKey](_rank)  # IP -> active endpoints with it

    def items(self) -> Iterator[tuple[WorkloadEndpointKey, m.WorkloadEndpointUpdate]]:
        return iter(list(self._by_key.items()))

    def update(self, message: m.WorkloadEndpointUpdate) -> Changes | None:
        """Record an endpoint; None if it is unchanged (re-sent)."""
        old = self._by_key.get(message.id)
        if old == message:
            return None
        self._by_key[message.id] = message
        return self._changed(message.id, old, message)

    def remove(self, key: WorkloadEndpointKey) -> Changes | None:
        old = self._by_key.pop(key, None)
        return self._changed(key, old, None) if old is not None else None

    def claimed(self, name: str) -> bool:
        return bool(self._claims.claimants(name))

    def owns(self, key: WorkloadEndpointKey, name: str) -> bool:
        return self._claims.owner(name) == key

    def owner(self, name: str) -> m.WorkloadEndpointUpdate | None:
        """The endpoint whose chains and routes interface `name` carries, if any."""
        key = self._claims.owner(name)
        return self._by_key[key] if key is not None else None

    def owners(self) -> Iterator[m.WorkloadEndpointUpdate]:
        for name in self._claims.resources():
            owner = self.owner(name)
            if owner is not None:
                yield owner

    def _changed(
        self,
        key: WorkloadEndpointKey,
        old: m.WorkloadEndpointUpdate | None,
        new: m.WorkloadEndpointUpdate | None,
    ) -> Changes:
        """Update the interface and IP claims of `key`; say what must be programmed again."""
        changes = Changes()
        old_name = old.endpoint.name if old is not None else None
        new_name = new.endpoint.name if new is not None else None
        if old_name != new_name:
            if old_name is not None:
                self._claims.release(old_name, key)
                changes.routes.add(old_name)
            if new_name is not None:
                self._claims.claim(new_name, key)
                changes.routes.add(new_name)
        for name in (old_name, new_name):
            if name is not None:
                changes.chains.add(name)
                if len(self._claims.claimants(name)) > 1:
                    log.warning(
                        "Conflict: endpoints %s all name interface %s; %s owns it (the first "
                        "in key order, on every host)",
                        sorted(repr(k) for k in self._claims.claimants(name)),
                        name,
                        self._claims.owner(name),
                    )
        if old is None or new is None or _route_inputs(old) != _route_inputs(new):
            if new_name is not None:
                changes.routes.add(new_name)
            old_ips, new_ips = _routed_ips(old), _routed_ips(new)
            for ip in old_ips - new_ips:
                self._ip_claims.release(ip, key)
            for ip in new_ips - old_ips:
                self._ip_claims.claim(ip, key)
            # Every interface sharing one of these IPs may win or lose it now.
            for ip in old_ips | new_ips:
                for other in self._ip_claims.claimants(ip):
                    changes.routes.add(self._by_key[other].endpoint.name)
        return changes

    def routed_ips_of(self, update: m.WorkloadEndpointUpdate, ip_version: int) -> list[str]:
        """The IPs of `update` (owner of its interface) to route there: all of its IPs of that
        version, but an IP that another local endpoint also claims goes to the first of them
        in key order (among those owning their interface), with a warning."""
        routed = []
        for ip in sorted(_routed_ips(update)):
            if (":" in ip) != (ip_version == 6):
                continue
            claimants = self._ip_claims.claimants(ip)
            if len(claimants) > 1:
                owning = [k for k in claimants if self._claims.owner(
                    self._by_key[k].endpoint.name) == k]  # fmt: skip
                winner = min(owning, key=_rank)
                if winner != update.id:
                    log.warning(
                        "Conflict: endpoints %s all claim IP %s; it is routed to %s",
                        sorted(repr(k) for k in claimants),
                        ip,
                        winner,
                    )
                    continue
            routed.append(ip)
        return routed


def _rank(key: WorkloadEndpointKey) -> tuple[str, str, str, str]:
    """The order that decides conflicts, the same on every host."""
    return (key.orchestrator, key.workload, key.endpoint, key.hostname)


def _routed_ips(update: m.WorkloadEndpointUpdate | None) -> frozenset[str]:
    """The addresses routed to an active endpoint's interface: its IPs and floating IPs."""
    if update is None or not update.endpoint.active:
        return frozenset()
    e = update.endpoint
    return frozenset(
        [net.split("/")[0] for net in e.ipv4_nets + e.ipv6_nets]
        + [nat.ext_ip for nat in e.ipv4_nat + e.ipv6_nat]
    )


def _route_inputs(update: m.WorkloadEndpointUpdate) -> tuple[object, ...]:
    """What an endpoint's routes, ARP entries and interface configuration depend on."""
    e = update.endpoint
    return (e.name, e.active, e.mac, e.ipv4_nets, e.ipv6_nets, e.ipv4_nat, e.ipv6_nat,
            e.ipv6_gateway)  # fmt: skip
