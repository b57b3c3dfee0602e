"""The lab Kubernetes API server's storage: objects, one resource version for every type, a bounded
history of changes, lists at a resource version and watches from one. No HTTP here.

Faithful to what clients may rely on (kubernetes-datastore.md §4.2, §5.5):

* One counter, bumped by every write of any type; an object's `resourceVersion` is the counter at
  its last write, a list's is the counter when it was read. Rendered as decimal text, but clients
  must treat it as opaque.
* History: every change is kept as an event (ADDED / MODIFIED / DELETED, with the object before
  and after) until more than `history_limit` have happened or `compact()` is called. A watch or
  a paged list from an older version is refused with 410 Expired, as kube-apiserver does after
  etcd compacts.
* Pages (`limit` / `continue`) all show the first page's snapshot: later pages are read at the
  first page's version by undoing newer history, so a change between pages is never half seen.
* What the API server itself does on writes: uid, creationTimestamp and resourceVersion; the
  `status` of pods, namespaces and nodes is only written through `/status`; NetworkPolicy
  defaulting (`policyTypes`, port protocol `TCP`, `podSelector: {}`); namespaces get the
  `kubernetes.io/metadata.name` label, are `Terminating` while their pods and policies are
  deleted (one DELETED each), then go; a pod deleted with a grace period is first MODIFIED with
  `deletionTimestamp`, then DELETED when the period ends.
"""

from __future__ import annotations

import base64
import bisect
import copy
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from calico.lab.kube_resources import (
    NAMESPACES,
    NETWORK_POLICIES,
    PODS,
    ApiError,
    Resource,
    bad_request,
    expired,
    invalid,
    not_found,
)

ObjKey = tuple[str, str, str]  # (plural, namespace or "", name)
NAME_RE = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class Event:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    resource: Resource
    key: ObjKey
    obj: dict[str, Any]  # after the change (DELETED: the last state, at the deletion's version)
    old: dict[str, Any] | None  # before the change (None for ADDED)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _copy(obj: Any) -> Any:
    return copy.deepcopy(obj)


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        meta = obj["metadata"] = {}
    return meta


class KubeStore:
    def __init__(self, history_limit: int = 10000, first_rv: int = 1000) -> None:
        self.cond = threading.Condition()
        self.history_limit = history_limit
        self._rv = first_rv
        self._objects: dict[ObjKey, dict[str, Any]] = {}
        self._history: list[Event] = []
        self._history_rvs: list[int] = []  # the events' versions, for bisect
        self._compacted = first_rv  # events at or below this version are gone
        self.pod_grace_seconds = 0.0  # default grace period of pod deletions
        self._timers: list[threading.Timer] = []

    # --- Versions and history ---------------------------------------------------------------------

    @property
    def rv(self) -> int:
        with self.cond:
            return self._rv

    @property
    def compacted(self) -> int:
        with self.cond:
            return self._compacted

    def compact(self, upto: int | None = None) -> int:
        """Forget history up to `upto` (default: now); returns the compacted version."""
        with self.cond:
            target = self._rv if upto is None else min(upto, self._rv)
            cut = bisect.bisect_right(self._history_rvs, target)
            del self._history[:cut]
            del self._history_rvs[:cut]
            self._compacted = max(self._compacted, target)
            return self._compacted

    def _record(
        self,
        kind: str,
        resource: Resource,
        key: ObjKey,
        obj: dict[str, Any],
        old: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """Bump the version, stamp it on `obj`, store (or drop) it and keep the event."""
        self._rv += 1
        _meta(obj)["resourceVersion"] = str(self._rv)
        if kind == "DELETED":
            self._objects.pop(key, None)
        else:
            self._objects[key] = obj
        self._history.append(Event(self._rv, kind, resource, key, _copy(obj), _copy(old)))
        self._history_rvs.append(self._rv)
        if len(self._history) > self.history_limit:
            excess = len(self._history) - self.history_limit
            self._compacted = self._history_rvs[excess - 1]
            del self._history[:excess]
            del self._history_rvs[:excess]
        self.cond.notify_all()
        return _copy(obj)

    def events_after(self, rv: int) -> tuple[list[Event], int]:
        """Every event after `rv` and the version they bring the reader to; Gone if the history
        after `rv` has been compacted away. Call with `cond` held or not (it takes it)."""
        with self.cond:
            if rv < self._compacted:
                raise expired(f"too old resource version: {rv} ({self._compacted})")
            start = bisect.bisect_right(self._history_rvs, rv)
            return list(self._history[start:]), self._rv

    def wait(self, rv: int, timeout: float) -> None:
        """Block until the version passes `rv` or `timeout` elapses."""
        with self.cond:
            self.cond.wait_for(lambda: self._rv > rv, timeout)

    # --- Reads ------------------------------------------------------------------------------------

    def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any]:
        with self.cond:
            obj = self._objects.get((resource.plural, namespace, name))
            if obj is None:
                raise not_found(resource, name)
            return _copy(obj)

    def list(
        self,
        resource: Resource,
        namespace: str | None,
        match: Callable[[dict[str, Any]], bool],
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> tuple[list[dict[str, Any]], str, str | None, int | None]:
        """(items, list version, continue token, remaining count) of one page, sorted by
        namespace and name. A continue token carries the snapshot version and where to resume."""
        with self.cond:
            after: tuple[str, str] | None = None
            if continue_token:
                snapshot_rv, after = _decode_token(continue_token)
                if snapshot_rv < self._compacted:
                    raise expired(
                        "The provided continue parameter is too old to display a consistent list "
                        "result. You can start a new list without the continue parameter."
                    )
                objects = self._objects_at(snapshot_rv)
            else:
                snapshot_rv, objects = self._rv, self._objects
            selected = sorted(
                (k[1], k[2])
                for k, obj in objects.items()
                if k[0] == resource.plural and namespace in (None, k[1]) and match(obj)
            )
            if after is not None:
                selected = selected[bisect.bisect_right(selected, after) :]
            page = selected if not limit else selected[:limit]
            items = [_copy(objects[(resource.plural, ns, name)]) for ns, name in page]
            remaining = len(selected) - len(page)
            token = _encode_token(snapshot_rv, page[-1]) if remaining else None
            return items, str(snapshot_rv), token, (remaining or None) if limit else None

    def _objects_at(self, rv: int) -> dict[ObjKey, dict[str, Any]]:
        """The objects as they were at version `rv` (held history permitting)."""
        objects = dict(self._objects)
        for event in reversed(self._history):
            if event.rv <= rv:
                break
            if event.old is None:
                objects.pop(event.key, None)
            else:
                objects[event.key] = event.old
        return objects

    # --- Writes -----------------------------------------------------------------------------------

    def create(
        self, resource: Resource, namespace: str, obj: dict[str, Any], validate: bool = True
    ) -> dict[str, Any]:
        """POST. `validate=False` stores what it is given (a hostile or broken server's data)."""
        obj = _copy(obj)
        meta = _meta(obj)
        name = meta.get("name")
        if validate:
            _check_name(resource, name)
        if resource.namespaced:
            meta["namespace"] = namespace
        key: ObjKey = (resource.plural, namespace if resource.namespaced else "", str(name))
        with self.cond:
            if key in self._objects:
                details = {"name": name, "group": resource.group, "kind": resource.plural}
                raise ApiError(
                    409, "AlreadyExists", f'{resource.plural} "{name}" already exists', details
                )
            if (
                validate
                and resource.namespaced
                and ("namespaces", "", namespace) not in self._objects
            ):
                raise not_found(NAMESPACES, namespace)
            for field in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
                meta.pop(field, None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
            obj["kind"], obj["apiVersion"] = resource.kind, resource.api_version
            if validate:
                _default(resource, obj)
            return self._record("ADDED", resource, key, obj, None)

    def replace(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        obj: dict[str, Any],
        subresource: str = "",
    ) -> dict[str, Any]:
        """PUT of the object or of its status; 409 Conflict for a stale resourceVersion."""
        obj = _copy(obj)
        key: ObjKey = (resource.plural, namespace if resource.namespaced else "", name)
        with self.cond:
            old = self._objects.get(key)
            if old is None:
                raise not_found(resource, name)
            meta = _meta(obj)
            given = meta.get("resourceVersion")
            if given and given != old["metadata"]["resourceVersion"]:
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {resource.plural} "{name}": the object '
                    "has been modified; please apply your changes to the latest version and try "
                    "again",
                    {"name": name, "group": resource.group, "kind": resource.plural},
                )
            if meta.get("name", name) != name:
                raise invalid(resource, name, "metadata.name: the name of the object must match")
            if subresource == "status":
                new = _copy(old)
                new["status"] = obj.get("status", {})
            else:
                new = obj
                for field in ("uid", "creationTimestamp", "deletionTimestamp", "namespace"):
                    if field in old["metadata"]:
                        new["metadata"][field] = old["metadata"][field]
                new["metadata"]["name"] = name
                new["kind"], new["apiVersion"] = resource.kind, resource.api_version
                if resource.has_status:
                    new["status"] = _copy(old.get("status", {}))
                _default(resource, new)
            return self._record("MODIFIED", resource, key, new, old)

    def delete(
        self, resource: Resource, namespace: str, name: str, grace_seconds: float | None = None
    ) -> dict[str, Any]:
        key: ObjKey = (resource.plural, namespace if resource.namespaced else "", name)
        with self.cond:
            old = self._objects.get(key)
            if old is None:
                raise not_found(resource, name)
            if resource is NAMESPACES:
                return self._delete_namespace(key, old)
            grace = self.pod_grace_seconds if grace_seconds is None else grace_seconds
            if resource is PODS and grace > 0:
                if "deletionTimestamp" in old["metadata"]:
                    return _copy(old)
                terminating = _copy(old)
                terminating["metadata"]["deletionTimestamp"] = _now()
                terminating["metadata"]["deletionGracePeriodSeconds"] = int(grace)
                result = self._record("MODIFIED", resource, key, terminating, old)
                timer = threading.Timer(grace, self._finish_delete, (resource, key))
                timer.daemon = True
                self._timers.append(timer)
                timer.start()
                return result
            return self._record("DELETED", resource, key, _copy(old), old)

    def _finish_delete(self, resource: Resource, key: ObjKey) -> None:
        with self.cond:
            old = self._objects.get(key)
            if old is not None and "deletionTimestamp" in old["metadata"]:
                self._record("DELETED", resource, key, _copy(old), old)

    def _delete_namespace(self, key: ObjKey, old: dict[str, Any]) -> dict[str, Any]:
        namespace = key[2]
        terminating = _copy(old)
        terminating["metadata"]["deletionTimestamp"] = _now()
        terminating.setdefault("status", {})["phase"] = "Terminating"
        result = self._record("MODIFIED", NAMESPACES, key, terminating, old)
        for resource in (PODS, NETWORK_POLICIES):
            for content in sorted(
                k for k in self._objects if k[0] == resource.plural and k[1] == namespace
            ):
                self._record(
                    "DELETED",
                    resource,
                    content,
                    _copy(self._objects[content]),
                    self._objects[content],
                )
        self._record("DELETED", NAMESPACES, key, _copy(self._objects[key]), self._objects[key])
        return result

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()


def _check_name(resource: Resource, name: object) -> None:
    pattern = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?" if resource is NAMESPACES else NAME_RE
    if not isinstance(name, str) or not name:
        raise invalid(
            resource, "", "metadata.name: Required value: name or generateName is required"
        )
    if len(name) > (63 if resource is NAMESPACES else 253) or not re.fullmatch(pattern, name):
        raise invalid(
            resource,
            name,
            f"metadata.name: Invalid value: {name!r}: a lowercase "
            "RFC 1123 name must consist of lower case alphanumeric characters",
        )


def _default(resource: Resource, obj: dict[str, Any]) -> None:
    """What the API server's defaulting adds."""
    meta = _meta(obj)
    if resource is NAMESPACES:
        labels = meta.get("labels")
        meta["labels"] = {
            **(labels if isinstance(labels, dict) else {}),
            NAMESPACE_NAME_LABEL: meta.get("name"),
        }
        obj.setdefault("spec", {"finalizers": ["kubernetes"]})
        obj.setdefault("status", {"phase": "Active"})
    elif resource is PODS:
        obj.setdefault("status", {"phase": "Pending"})
    elif resource is NETWORK_POLICIES:
        spec = obj.setdefault("spec", {})
        if isinstance(spec, dict):
            spec.setdefault("podSelector", {})
            for direction in ("ingress", "egress"):
                for rule in spec.get(direction) or []:
                    for port in rule.get("ports") or [] if isinstance(rule, dict) else []:
                        if isinstance(port, dict):
                            port.setdefault("protocol", "TCP")
            if "policyTypes" not in spec:
                spec["policyTypes"] = ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]


def _encode_token(rv: int, after: tuple[str, str]) -> str:
    raw = json.dumps({"rv": rv, "after": list(after)}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_token(token: str) -> tuple[int, tuple[str, str]]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return int(data["rv"]), (str(data["after"][0]), str(data["after"][1]))
    except (ValueError, KeyError, IndexError, TypeError):
        raise bad_request(f"invalid continue token {token!r}") from None
