"""Index helpers: a dict of sets, kept without empty sets. The one home of this bookkeeping for
the label index, the calc graph's reverse indexes and the dataplane's claims."""

from __future__ import annotations

from collections.abc import Hashable
from typing import TypeVar

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V", bound=Hashable)


def add_to_index(index: dict[_K, set[_V]], key: _K, member: _V) -> None:
    """Add `member` to the set `index[key]`, creating the set if need be."""
    # Not setdefault(key, set()): that builds (and drops) a new set on every call, and this
    # runs once per (selector, endpoint) match in a snapshot.
    members = index.get(key)
    if members is None:
        index[key] = {member}
    else:
        members.add(member)


def remove_from_index(index: dict[_K, set[_V]], key: _K, member: _V) -> bool:
    """Remove `member` from `index[key]` (if there), dropping the set once empty; True if this
    call emptied it (the last member went)."""
    members = index.get(key)
    if members is None or member not in members:
        return False
    members.discard(member)
    if members:
        return False
    del index[key]
    return True


def shared(table: dict[_V, _V], value: _V, limit: int = 4096) -> _V:
    """The value equal to `value` that `table` already holds, else `value` (now held): equal
    immutable values (replicas' labels, tag sets) kept once instead of once per holder. The
    table restarts once `limit` values are held, so it stays small when values rarely repeat;
    only sharing (memory), never a result, depends on it."""
    found = table.get(value)
    if found is not None:
        return found
    if len(table) >= limit:
        table.clear()
    table[value] = value
    return value
