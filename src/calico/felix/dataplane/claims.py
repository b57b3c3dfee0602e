"""Who owns a contested resource: several claimants, one owner, decided the same way everywhere.

Endpoints name interfaces and IPs. Normally one endpoint claims each, but not always: an
orchestrator that re-keys an endpoint (writes it under a new workload ID, then deletes the old
key) has two endpoints naming one interface for a moment, and bad data can have two VMs claim
one IP. The kernel state (chains, routes, ARP entries) then belongs to the resource's owner, the
first claimant in a fixed order, so that removing any other claimant leaves it alone and every
host resolves the conflict alike. Pure bookkeeping: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Any, Generic, TypeVar

from calico.common.index import add_to_index, remove_from_index

_C = TypeVar("_C", bound=Hashable)


class Claims(Generic[_C]):
    """resource -> the set of its claimants; the owner is the claimant with the lowest rank."""

    def __init__(self, rank: Callable[[_C], Any]) -> None:
        self._rank = rank
        self._claims: dict[str, set[_C]] = {}

    def claim(self, resource: str, claimant: _C) -> None:
        add_to_index(self._claims, resource, claimant)

    def release(self, resource: str, claimant: _C) -> None:
        remove_from_index(self._claims, resource, claimant)

    def claimants(self, resource: str) -> frozenset[_C]:
        return frozenset(self._claims.get(resource, ()))

    def owner(self, resource: str) -> _C | None:
        claimants = self._claims.get(resource)
        if not claimants:
            return None
        if len(claimants) == 1:
            return next(iter(claimants))
        return min(claimants, key=self._rank)

    def resources(self) -> Iterator[str]:
        return iter(list(self._claims))
