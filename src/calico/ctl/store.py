"""Reading resources from etcd and writing them with compare-and-swap.

Every write is checked against what was read: a key is created only if it is still absent,
replaced or deleted only if it is still at the version read (`KVStore.create`, `put_if`,
`delete_if`). A resource's primary key is written first, even when only its other keys change,
so that two calicoctl writers of one resource meet on that key: the second one's first write
fails and it stops with nothing written (exit 1). A writer whose later write fails (it read the
resource while another was half-way through writing it) undoes what it wrote, again by
compare-and-swap, so the loser leaves the resource as the winner wrote it. A document carrying
`metadata.revision` (as `get` prints it) is also refused if the resource changed after that
revision, so an operator who edits what `get` showed cannot overwrite a change made meanwhile.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from calico.common.etcd.base import EtcdError, KVStore
from calico.ctl.errors import Conflict, NotFound, Refused, Unavailable
from calico.ctl.kinds import Filters, Kind, Resource

CREATED, REPLACED, UNCHANGED, DELETED = "created", "replaced", "unchanged", "deleted"

T = TypeVar("T")


def etcd_call(what: str, call: Callable[..., T], *args: Any) -> T:
    """`call(*args)`, with an etcd failure turned into Unavailable (exit 1) saying `what`."""
    try:
        return call(*args)
    except EtcdError as e:
        raise Unavailable(f"etcd error {what}: {e}") from None


def read(client: KVStore, kind: Kind, meta: dict[str, str]) -> Resource | None:
    """One resource, or None if none of its keys exists."""
    resource = Resource(kind, dict(meta))
    for path in kind.keys(meta):
        found = etcd_call(f"reading {path}", client.get_versioned, path)
        if found is not None:
            resource.values[path], resource.versions[path] = found
    return resource if resource.values else None


def list_resources(client: KVStore, kind: Kind, filters: Filters) -> list[Resource]:
    """Every resource of `kind` that `filters` match, in key order."""
    found: dict[tuple[str, ...], Resource] = {}
    for prefix in kind.prefixes(filters):
        items = etcd_call(f"reading {prefix}", client.read_prefix_versioned, prefix)
        for path, (value, version) in sorted(items.items()):
            meta = kind.identify(path)
            if meta is None or not kind.matches(meta, filters):
                continue
            identity = tuple(meta[name] for name in kind.identity)
            resource = found.setdefault(identity, Resource(kind, meta))
            resource.values[path] = value
            resource.versions[path] = version
    resources = [found[k] for k in sorted(found)]
    kind.read_status(client, resources)
    return resources


@dataclass(frozen=True)
class Write:
    """A validated document, ready to write."""

    kind: Kind
    meta: dict[str, str]
    values: dict[str, str | None]  # key path -> raw value, None = must not exist
    revision: int | None = None

    @property
    def label(self) -> str:
        return f"{self.kind.name} {self.kind.label(self.meta)}"


def _check_revision(write: Write, current: Resource | None) -> None:
    if write.revision is None:
        return
    if current is None:
        raise Conflict(f"{write.label} was deleted after revision {write.revision}")
    if current.revision > write.revision:
        raise Conflict(
            f"{write.label} changed after revision {write.revision} (now at revision "
            f"{current.revision}): get it again, edit that, and retry"
        )


def execute(client: KVStore, write: Write, mode: str) -> str:
    """Create, replace or apply (create or replace) one resource; what happened."""
    current = read(client, write.kind, write.meta)
    if mode == "create" and current is not None:
        raise Refused(f"{write.label} already exists (use replace or apply)")
    if mode == "replace" and current is None:
        raise NotFound(f"{write.label} does not exist (use create or apply)")
    if mode != "create":
        _check_revision(write, current)
    old = current.values if current is not None else {}
    versions = current.versions if current is not None else {}
    paths = write.kind.keys(write.meta)
    changed = [p for p in paths if not same_value(write.values.get(p), old.get(p))]
    if not changed:
        return UNCHANGED
    primary = paths[0]
    if primary not in changed and primary in old:
        changed.insert(0, primary)  # the claim: bump the primary key's version
    ops = [(p, write.values.get(p)) for p in changed]
    _cas_all(client, write.label, ops, versions, dict(old))
    return CREATED if current is None else REPLACED


def same_value(new: str | None, old: str | None) -> bool:
    """Whether a key already holds `new`: the same text, or the same JSON written another way
    (spacing, key order), so that re-applying what another writer stored writes nothing."""
    if new is None or old is None or new == old:
        return new == old
    try:
        a, b = json.loads(new), json.loads(old)
    except (ValueError, RecursionError):
        return False
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def delete(client: KVStore, kind: Kind, meta: dict[str, str], revision: int | None = None) -> str:
    current = read(client, kind, meta)
    label = f"{kind.name} {kind.label(meta)}"
    if current is None:
        raise NotFound(f"{label} does not exist")
    _check_revision(Write(kind, meta, {}, revision), current)
    paths = [p for p in kind.keys(meta) if p in current.values]
    _cas_all(client, label, [(p, None) for p in paths], current.versions, current.values)
    kind.after_delete(client, meta)
    return DELETED


def _cas_all(
    client: KVStore,
    label: str,
    ops: Sequence[tuple[str, str | None]],
    versions: dict[str, int],
    old_values: dict[str, str],
) -> None:
    """Every write, each against the version read; on the first that fails, the writes before
    it are undone (each again by compare-and-swap), so the loser of a race leaves the resource
    as the winner wrote it."""
    done: list[tuple[str, str | None, str | None]] = []  # (path, old value, new value)
    for path, value in ops:
        if etcd_call(f"writing {path}", _cas, client, path, value, versions):
            done.append((path, old_values.get(path), value))
            continue
        if not done:
            raise Conflict(
                f"{label} was changed by another writer while this command ran; nothing "
                "was written: read it again and retry"
            )
        undone = etcd_call("undoing", _undo, client, done)
        outcome = (
            "what it had written was undone"
            if undone
            else "what it had written was already overwritten by the other writer"
        )
        raise Conflict(
            f"{label} was changed by another writer while this command ran; {outcome}: "
            "read it again and retry"
        )


def _undo(client: KVStore, done: list[tuple[str, str | None, str | None]]) -> bool:
    """Put back the old values of `done`, newest first, each only if it still holds what this
    command wrote; False if any was changed since (by the other writer)."""
    ok = True
    for path, old, new in reversed(done):
        current = client.get_versioned(path)
        current_value = current[0] if current is not None else None
        if current_value != new:
            ok = False
            continue
        if current is None:  # we deleted it: create it again
            ok = (old is None or client.create(path, old)) and ok
        elif old is None:  # we created it
            ok = client.delete_if(path, current[1]) and ok
        else:
            ok = client.put_if(path, old, current[1]) is not None and ok
    return ok


def _cas(client: KVStore, path: str, value: str | None, versions: dict[str, int]) -> bool:
    version = versions.get(path)
    if value is None:
        return version is None or client.delete_if(path, version)
    if version is None:
        return client.create(path, value)
    return client.put_if(path, value, version) is not None
