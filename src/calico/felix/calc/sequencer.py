"""The calc graph's output stage: coalesce changes, then emit them in dependency order.

The graph's nodes call the `EventSequencer` as things change; nothing leaves until `flush()`.
Between flushes, changes to the same object collapse (an update then a removal of something never
sent emits nothing; a member added then removed emits nothing). `flush()` emits the messages of
`calc/messages.py`, in this order:

1. IP pools: removals (`IPPoolRemove`), then updates (`IPPoolUpdate`);
2. new IP sets with their full membership (`IPSetUpdate`), then member deltas of IP sets already
   sent (`IPSetDeltaUpdate`);
3. policy updates, then profile updates (`ActivePolicyUpdate`, `ActiveProfileUpdate`: their IP
   sets now exist);
4. endpoint updates (`WorkloadEndpointUpdate`, `HostEndpointUpdate`: their policies and profiles
   now exist), then endpoint removals (`WorkloadEndpointRemove`, `HostEndpointRemove`);
5. profile removals, then policy removals (`ActiveProfileRemove`, `ActivePolicyRemove`: no
   endpoint lists them any more);
6. IP-set removals (`IPSetRemove`: no policy or profile uses them any more);
7. `InSync`, after the first flush that follows the datastore's first in-sync.

Until the datastore is first in sync, nothing is emitted: everything stays pending, so
the dataplane never programs partial state (felix.md §4.4). Calls that break the contract (a member
of an unknown set, a set activated twice) raise `ContractError`: they are bugs in the graph.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable
from typing import Generic, TypeVar

from calico.common.datamodel_v1 import HostEndpointKey, IPPoolKey, PolicyKey, WorkloadEndpointKey
from calico.felix.calc import messages as m

_Id = TypeVar("_Id", bound=Hashable)
_Msg = TypeVar("_Msg")


class ContractError(AssertionError):
    """The graph called the sequencer in a way that would break the dataplane contract."""


class _Pending(Generic[_Id, _Msg]):
    """Pending updates and removals of one kind of object, and which IDs the dataplane knows."""

    def __init__(self) -> None:
        self.updates: dict[_Id, _Msg] = {}
        self.removals: set[_Id] = set()
        self.sent: set[_Id] = set()

    def update(self, key: _Id, message: _Msg) -> None:
        self.updates[key] = message
        self.removals.discard(key)

    def remove(self, key: _Id) -> None:
        self.updates.pop(key, None)
        if key in self.sent:
            self.removals.add(key)

    def take_updates(self) -> list[_Msg]:
        messages = list(self.updates.values())
        self.sent.update(self.updates)
        self.updates.clear()
        return messages

    def take_removals(self) -> list[_Id]:
        removed = sorted(self.removals, key=repr)  # deterministic output order
        self.sent.difference_update(removed)
        self.removals.clear()
        return removed


class EventSequencer:
    def __init__(self) -> None:
        self._in_sync = False
        self._sent_in_sync = False
        self.pools: _Pending[IPPoolKey, m.IPPoolUpdate] = _Pending()
        self.policies: _Pending[PolicyKey, m.ActivePolicyUpdate] = _Pending()
        self.profiles: _Pending[str, m.ActiveProfileUpdate] = _Pending()
        self.workload_endpoints: _Pending[WorkloadEndpointKey, m.WorkloadEndpointUpdate] = (
            _Pending()
        )
        self.host_endpoints: _Pending[HostEndpointKey, m.HostEndpointUpdate] = _Pending()
        # IP sets: a live view of every active set's members (owned by the member calculator,
        # which calls add_member/remove_member as they change); which sets the dataplane has;
        # sets that are active but not yet sent; sent sets to remove; per sent set, members to
        # add/remove.
        self._members: dict[str, Collection[str]] = {}
        self._sent_sets: set[str] = set()
        self._new_sets: set[str] = set()
        self._removed_sets: set[str] = set()
        self._added: dict[str, set[str]] = {}
        self._removed: dict[str, set[str]] = {}
        # Sets removed since the last flush: (the owner's last view of the members, members
        # added and removed since the flush), i.e. what the dataplane holds. Sets reactivated
        # since: what the dataplane holds, to diff with the new members at the flush.
        self._held: dict[str, tuple[Collection[str], set[str], set[str]]] = {}
        self._rebased: dict[str, set[str]] = {}

    # --- Inputs ------------------------------------------------------------------------------

    def on_datastore_in_sync(self) -> None:
        self._in_sync = True

    def add_ip_set(self, set_id: str, members: Collection[str]) -> None:
        """A set became active; `members` is a live view of its members (empty now)."""
        if set_id in self._removed_sets:
            # Sent, deactivated and reactivated within one flush: the dataplane still has the
            # set, with what it held at the last flush; the flush sends the difference between
            # that and the new members.
            self._removed_sets.discard(set_id)
            self._members[set_id] = members
            old_view, added, removed = self._held.pop(set_id)
            self._rebased[set_id] = (set(old_view) - added) | removed
            return
        if set_id in self._members:
            raise ContractError(f"IP set {set_id} activated twice")
        self._members[set_id] = members
        if set_id not in self._sent_sets:
            self._new_sets.add(set_id)

    def remove_ip_set(self, set_id: str) -> None:
        """The set is no longer active, with whatever members it still has: the dataplane drops
        it whole, so no member deltas are kept for it. (The member calculator deactivates a set
        before the index stops its matches, so that a policy change that drops selectors of
        thousands of members does no per-member work: 5 ms of a 15 ms change, measured.)"""
        members = self._members.pop(set_id, None)
        if members is None:
            raise ContractError(f"unknown IP set {set_id} removed")
        added = self._added.pop(set_id, set())
        removed = self._removed.pop(set_id, set())
        held = self._rebased.pop(set_id, None)
        if set_id in self._new_sets:
            self._new_sets.discard(set_id)
            return
        self._removed_sets.add(set_id)
        # Should it come back within this flush: what the dataplane holds. The owner no longer
        # changes `members` (its view of a set it dropped), so keeping it costs no copy.
        if held is not None:
            self._held[set_id] = (held, set(), set())
        else:
            self._held[set_id] = (members, added, removed)

    def add_member(self, set_id: str, member: str) -> None:
        """`member` has joined the set (the view already shows it)."""
        if set_id in self._new_sets or set_id in self._rebased:
            return  # the flush reads the members from the view
        if set_id not in self._members:
            raise ContractError(f"member {member} added to unknown IP set {set_id}")
        removed = self._removed.get(set_id)
        if removed is not None and member in removed:
            removed.discard(member)
        else:
            self._added.setdefault(set_id, set()).add(member)

    def remove_member(self, set_id: str, member: str) -> None:
        """`member` has left the set (the view no longer shows it)."""
        if set_id in self._new_sets or set_id in self._rebased:
            return
        if set_id not in self._members:
            raise ContractError(f"member {member} removed from unknown IP set {set_id}")
        added = self._added.get(set_id)
        if added is not None and member in added:
            added.discard(member)
        else:
            self._removed.setdefault(set_id, set()).add(member)

    def ip_set_members(self, set_id: str) -> frozenset[str]:
        return frozenset(self._members.get(set_id, ()))

    # --- Output ------------------------------------------------------------------------------

    def flush(self) -> list[m.Message]:
        out: list[m.Message] = []
        if not self._in_sync:
            return out
        out.extend(m.IPPoolRemove(p) for p in self.pools.take_removals())
        out.extend(self.pools.take_updates())
        self._flush_ip_set_additions(out)
        out.extend(self.policies.take_updates())
        out.extend(self.profiles.take_updates())
        out.extend(self.workload_endpoints.take_updates())
        out.extend(self.host_endpoints.take_updates())
        out.extend(m.WorkloadEndpointRemove(e) for e in self.workload_endpoints.take_removals())
        out.extend(m.HostEndpointRemove(e) for e in self.host_endpoints.take_removals())
        out.extend(m.ActiveProfileRemove(p) for p in self.profiles.take_removals())
        out.extend(m.ActivePolicyRemove(p) for p in self.policies.take_removals())
        out.extend(m.IPSetRemove(set_id) for set_id in sorted(self._removed_sets))
        self._sent_sets -= self._removed_sets
        self._removed_sets.clear()
        if not self._sent_in_sync:
            out.append(m.InSync())
            self._sent_in_sync = True
        return out

    def _flush_ip_set_additions(self, out: list[m.Message]) -> None:
        for set_id in sorted(self._new_sets):
            out.append(m.IPSetUpdate(set_id, tuple(self._members[set_id])))
        self._sent_sets.update(self._new_sets)
        self._new_sets.clear()
        for set_id, held in self._rebased.items():
            view = self._members[set_id]
            self._added[set_id] = {member for member in view if member not in held}
            self._removed[set_id] = {member for member in held if member not in view}
        self._rebased.clear()
        self._held.clear()
        for set_id in sorted(self._added.keys() | self._removed.keys()):
            if set_id in self._removed_sets:
                continue  # about to be removed: its deltas are moot
            added = frozenset(self._added.get(set_id, ()))
            removed = frozenset(self._removed.get(set_id, ()))
            if added or removed:
                out.append(m.IPSetDeltaUpdate(set_id, added, removed))
        self._added.clear()
        self._removed.clear()
