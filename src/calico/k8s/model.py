"""The Kubernetes objects Felix has seen and the `/calico/v1` keys they own. Pure.

The syncer feeds it whole objects (a list's items, a watch event's object); each call returns the
updates that bring the listener from the previous model to the new one: new and changed keys, and
a deletion for every key no object owns any more. A relist (`replace_all`) reports exactly the
difference between what was known and what the new list says, deletions included.

Rules kept here, because they span objects:

* A pod is mapped only while its namespace is known and mappable: a namespace that cannot be
  mapped (a hostile label) takes its pods' endpoints out, so they can neither gain traffic by
  losing a label nor be matched as peers under a wrong label set. Fails closed.
* A key two objects map to (two GlobalFelixConfigs naming one parameter) takes the value of the
  first object by (kind, namespace, name); the conflict is logged once.
* Every problem is logged once per object and message (`LogOnce`), never per event.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from calico.common.quoting import quoted
from calico.common.sync import Update
from calico.k8s.mapping import Keys
from calico.k8s.names import Unmappable

log = logging.getLogger(__name__)

Mapper = Callable[[dict[str, Any]], tuple[Keys, list[str]]]
ObjectId = tuple[str, str, str]  # (kind, namespace or "", name)
STATIC: ObjectId = ("", "", "")  # the keys that exist whatever the API holds (Ready, tiers)
PODS = "pods"
NAMESPACES = "namespaces"


def simple(mapper: Callable[[dict[str, Any]], Keys]) -> Mapper:
    """A mapper that reports problems only by raising Unmappable."""
    return lambda obj: (mapper(obj), [])


class LogOnce:
    """Log each (object, message) once per process; bounded, so a hostile API server that
    invents new messages forever cannot grow it without limit."""

    LIMIT = 10000

    def __init__(self) -> None:
        self._seen: set[tuple[ObjectId, str]] = set()

    def __call__(self, oid: ObjectId, message: str) -> None:
        if (oid, message) in self._seen:
            return
        if len(self._seen) >= self.LIMIT:
            self._seen.clear()
        self._seen.add((oid, message))
        kind, namespace, name = oid
        where = f"{namespace}/{name}" if namespace else name
        log.warning("Kubernetes %s %s: %s", kind, where, message)


@dataclass(frozen=True)
class Kind:
    name: str  # the resource's plural, as in the API path
    namespaced: bool
    mapper: Mapper


def object_id(kind: Kind, obj: object) -> ObjectId | None:
    """The object's identity: its kind, namespace and name as the API sent them (unvalidated
    text, quoted; only compared and logged). None when it has no usable metadata."""
    if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
        return None
    meta = obj["metadata"]
    name = meta.get("name")
    namespace = meta.get("namespace") if kind.namespaced else ""
    if not isinstance(name, str) or not isinstance(namespace, str):
        return None
    return (kind.name, namespace, name)


class Model:
    def __init__(self, kinds: Iterable[Kind], log_once: LogOnce | None = None) -> None:
        self.kinds = {kind.name: kind for kind in kinds}
        self._log = log_once or LogOnce()
        self._objects: dict[str, dict[ObjectId, dict[str, Any]]] = {k: {} for k in self.kinds}
        self._owned: dict[ObjectId, Keys] = {}
        self._owners: dict[str, set[ObjectId]] = {}
        self.values: dict[str, str] = {}  # what the listener has been told
        self._good_namespaces: set[str] = set()
        self._pods_by_namespace: dict[str, set[ObjectId]] = {}
        # Within one operation: each changed key's value before the operation, in change order.
        self._journal: dict[str, str | None] = {}

    # --- Inputs -----------------------------------------------------------------------------------

    def set_static(self, keys: Keys) -> list[Update]:
        self._set_owned(STATIC, dict(keys))
        return self._changes()

    def upsert(self, kind_name: str, obj: object) -> list[Update]:
        kind = self.kinds[kind_name]
        oid = object_id(kind, obj)
        if oid is None:
            self._log((kind.name, "", "?"), f"object without a usable name: {quoted(obj)}")
            return []
        assert isinstance(obj, dict)
        self._objects[kind.name][oid] = obj
        self._refresh(kind, oid)
        return self._changes()

    def remove(self, kind_name: str, obj: object) -> list[Update]:
        kind = self.kinds[kind_name]
        oid = object_id(kind, obj)
        if oid is not None and self._objects[kind.name].pop(oid, None) is not None:
            self._refresh(kind, oid)
        return self._changes()

    def replace_all(self, kind_name: str, objs: Iterable[object]) -> list[Update]:
        """A fresh list of every object of a kind: exactly the difference from what was known
        (a key changed and changed back within the list reports nothing)."""
        kind = self.kinds[kind_name]
        listed: dict[ObjectId, dict[str, Any]] = {}
        for obj in objs:
            oid = object_id(kind, obj)
            if oid is None:
                self._log((kind.name, "", "?"), f"object without a usable name: {quoted(obj)}")
                continue
            assert isinstance(obj, dict)
            listed[oid] = obj
        known = self._objects[kind.name]
        for oid in [oid for oid in known if oid not in listed]:
            del known[oid]
            self._refresh(kind, oid)
        for oid, obj in listed.items():
            if known.get(oid) != obj:
                known[oid] = obj
                self._refresh(kind, oid)
        return self._changes()

    def count(self, kind_name: str) -> int:
        return len(self._objects[kind_name])

    # --- Keys -------------------------------------------------------------------------------------

    def _changes(self) -> list[Update]:
        """The operation's net changes, in the order keys first changed."""
        updates = [
            (key, self.values.get(key))
            for key, before in self._journal.items()
            if self.values.get(key) != before
        ]
        self._journal = {}
        return updates

    def _refresh(self, kind: Kind, oid: ObjectId) -> None:
        obj = self._objects[kind.name].get(oid)
        keys = self._map(kind, oid, obj) if obj is not None else {}
        self._set_owned(oid, keys)
        if kind.name == PODS:
            index = self._pods_by_namespace.setdefault(oid[1], set())
            if obj is None:
                index.discard(oid)
            else:
                index.add(oid)
        elif kind.name == NAMESPACES:
            namespace = oid[2]
            was_good = namespace in self._good_namespaces
            if keys:
                self._good_namespaces.add(namespace)
            else:
                self._good_namespaces.discard(namespace)
            if was_good != bool(keys) and PODS in self.kinds:
                pods = self.kinds[PODS]
                for pod in sorted(self._pods_by_namespace.get(namespace, ())):
                    self._set_owned(pod, self._map(pods, pod, self._objects[PODS][pod]))

    def _map(self, kind: Kind, oid: ObjectId, obj: dict[str, Any]) -> Keys:
        try:
            keys, problems = kind.mapper(obj)
        except Unmappable as e:
            self._log(oid, f"{e}; left out")
            return {}
        for problem in problems:
            self._log(oid, problem)
        if kind.name == PODS and keys and oid[1] not in self._good_namespaces:
            # Not logged: at start the pods are often listed before their namespaces.
            return {}
        return keys

    def _set_owned(self, oid: ObjectId, keys: Keys) -> None:
        old = self._owned.pop(oid, {})
        if keys:
            self._owned[oid] = keys
        for key in sorted(old.keys() | keys.keys()):
            owners = self._owners.setdefault(key, set())
            if key in keys:
                owners.add(oid)
            else:
                owners.discard(oid)
            value = self._value(key, owners)
            if not owners:
                del self._owners[key]
            if self.values.get(key) == value:
                continue
            self._journal.setdefault(key, self.values.get(key))
            if value is None:
                del self.values[key]
            else:
                self.values[key] = value

    def _value(self, key: str, owners: set[ObjectId]) -> str | None:
        if not owners:
            return None
        ordered = sorted(owners)
        if len(ordered) > 1:
            others = ", ".join(json.dumps(o) for o in ordered[1:])
            self._log(ordered[0], f"{key} is also mapped from {others}; using this object's value")
        return self._owned[ordered[0]][key]


def mirror(updates: Iterable[Update], state: Mapping[str, str]) -> dict[str, str]:
    """`state` with `updates` applied (for tests and diagnostics)."""
    out = dict(state)
    for key, value in updates:
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out
