"""The Kubernetes syncer: list, then watch, each resource type; the same (key, value) updates and
`SyncStatus` as the etcd syncer (`calico.common.sync`), so the calc graph cannot tell the two
datastores apart.

Per type, on its own thread (kubernetes-datastore.md §4.3):

1. List, page by page (`limit`, `continue`; every page at the first page's version), and report
   exactly the difference from what the listener has for that type: new and changed keys, and a
   deletion for every key that vanished (the model, `calico.k8s.model`).
2. Watch from the list's version (`allowWatchBookmarks`, `timeoutSeconds`); each event's object
   version (bookmarks included) is the next watch's start. A watch the server ends normally is
   reopened from there.
3. 410 Gone / Expired (an HTTP 410, or an ERROR event with code 410): list again (step 1): the
   diff reports what happened meanwhile, deletions included. Any other failure (no connection,
   a broken stream, 5xx, 401, 403): log, back off (1 s doubling to 30 s) and list again.

Status: WAIT_FOR_READY until the first list answers, RESYNC until every type's first list is done,
then IN_SYNC for good (a later relist of one type is reported as ordinary updates). `Ready` is
always true in this datastore (reported once, with the tiers' metadata, at the first list).

A type marked optional (Calico's CRDs) whose list answers 404 counts as empty and is tried again
every minute, so a cluster without Calico's CRDs still syncs.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from calico.common.datamodel_v1 import READY_KEY, READY_VALUE
from calico.common.quoting import quoted
from calico.common.sync import SyncListener, SyncStatus, Update
from calico.k8s import mapping, policy
from calico.k8s.client import (
    MAX_VERSION,
    KubeApiError,
    KubeClient,
    KubeError,
    KubeUnavailable,
    ResourceExpired,
    WatchStream,
    opaque,
    status_error,
)
from calico.k8s.model import NAMESPACES, PODS, Kind, LogOnce, Model, simple

log = logging.getLogger(__name__)

PAGE_SIZE = 500
WATCH_TIMEOUT = 300  # seconds; the server ends each watch after this, and it is reopened
OPTIONAL_RETRY = 60.0


@dataclass(frozen=True)
class ResourceType:
    kind: Kind
    path: str
    optional: bool = False  # 404 = not installed: empty

    @property
    def name(self) -> str:
        return self.kind.name


NAMESPACE_TYPE = ResourceType(
    Kind(NAMESPACES, False, simple(mapping.namespace_keys)), "/api/v1/namespaces"
)
POLICY_TYPE = ResourceType(
    Kind("networkpolicies", True, policy.policy_keys), "/apis/networking.k8s.io/v1/networkpolicies"
)
POD_TYPE = ResourceType(Kind(PODS, True, simple(mapping.pod_keys)), "/api/v1/pods")
NODE_TYPE = ResourceType(Kind("nodes", False, simple(mapping.node_keys)), "/api/v1/nodes")
FELIX_CONFIG_TYPE = ResourceType(
    Kind("globalfelixconfigs", False, simple(mapping.felix_config_keys)),
    "/apis/crd.projectcalico.org/v1/globalfelixconfigs",
    optional=True,
)
IP_POOL_TYPE = ResourceType(
    Kind("ippools", False, simple(mapping.ip_pool_keys)),
    "/apis/crd.projectcalico.org/v1/ippools",
    optional=True,
)


def resource_types(node_poll: bool = True) -> list[ResourceType]:
    types = [NAMESPACE_TYPE, POLICY_TYPE, POD_TYPE, FELIX_CONFIG_TYPE, IP_POOL_TYPE]
    return [*types, NODE_TYPE] if node_poll else types


def static_keys() -> dict[str, str]:
    """The keys that exist whatever the API holds."""
    return {READY_KEY: READY_VALUE, **policy.tier_keys()}


class Backoff:
    def __init__(self, initial: float = 1.0, maximum: float = 30.0) -> None:
        self._initial, self._maximum, self._next = initial, maximum, initial

    def next_delay(self) -> float:
        delay, self._next = self._next, min(self._next * 2, self._maximum)
        return delay

    def reset(self) -> None:
        self._next = self._initial


class KubeSyncer:
    def __init__(
        self,
        client: KubeClient,
        listener: SyncListener,
        *,
        types: Iterable[ResourceType] | None = None,
        page_size: int = PAGE_SIZE,
        watch_timeout: int = WATCH_TIMEOUT,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        optional_retry: float = OPTIONAL_RETRY,
    ) -> None:
        self._client = client
        self._listener = listener
        self.types = list(types if types is not None else resource_types(client.settings.node_poll))
        self._page_size = page_size
        self._watch_timeout = watch_timeout
        self._backoff = (backoff_initial, backoff_max)
        self._optional_retry = optional_retry
        self.model = Model([t.kind for t in self.types], LogOnce())
        self.stop_event = threading.Event()
        self._lock = threading.Lock()  # one model, one listener: one writer at a time
        self._status: SyncStatus | None = None
        self._listed: set[str] = set()
        self._streams: set[WatchStream] = set()
        self._streams_lock = threading.Lock()  # apart: stop() must never wait for the listener
        self._failure: BaseException | None = None
        self.relists: Counter[str] = Counter()  # per type: lists after the first (tests, logs)

    # --- Lifecycle --------------------------------------------------------------------------------

    def stop(self) -> None:
        self.stop_event.set()
        with self._streams_lock:
            streams = list(self._streams)
        for stream in streams:
            stream.close()

    def run(self) -> None:
        """Sync until stopped; raises whatever killed a type's thread (a bug)."""
        with self._lock:
            self._set_status(SyncStatus.WAIT_FOR_READY)
        threads = [
            threading.Thread(target=self._run_type, args=(t,), name=f"k8s-{t.name}", daemon=True)
            for t in self.types
        ]
        for thread in threads:
            thread.start()
        while not self.stop_event.wait(0.5):
            pass
        self.stop()
        if self._failure is not None:
            raise self._failure

    def _run_type(self, rtype: ResourceType) -> None:
        try:
            self._sync_type(rtype)
        except BaseException as e:  # a bug: end the syncer (Felix exits to be restarted)
            log.exception("Kubernetes %s syncer failed", rtype.name)
            self._failure = e
            self.stop_event.set()

    # --- One type ---------------------------------------------------------------------------------

    def _sync_type(self, rtype: ResourceType) -> None:
        client = self._client.copy()
        try:
            self._follow(rtype, client)
        finally:
            client.close()

    def _follow(self, rtype: ResourceType, client: KubeClient) -> None:
        backoff = Backoff(*self._backoff)
        rv: str | None = None
        expired_in_a_row = 0
        while not self.stop_event.is_set():
            try:
                if rv is None:
                    rv = self._relist(rtype, client)
                    backoff.reset()
                rv, progressed = self._watch(rtype, client, rv)
                if progressed:
                    expired_in_a_row = 0
            except ResourceExpired as e:
                log.info("Kubernetes %s: %s; listing again", rtype.name, e)
                rv = None
                expired_in_a_row += 1
                if expired_in_a_row > 1:  # never a tight loop of list, 410, list
                    self.stop_event.wait(backoff.next_delay())
            except KubeApiError as e:
                rv = None
                if e.code == 404 and rtype.optional:
                    self._absent(rtype)
                    continue
                self._retry(rtype, e, backoff)
            except KubeUnavailable as e:
                rv = None
                self._retry(rtype, e, backoff)

    def _retry(self, rtype: ResourceType, error: KubeError, backoff: Backoff) -> None:
        delay = backoff.next_delay()
        if not self.stop_event.is_set():
            log.warning("Kubernetes %s: %s; listing again in %.1f s", rtype.name, error, delay)
        self.stop_event.wait(delay)

    def _absent(self, rtype: ResourceType) -> None:
        """An optional type the server does not serve: empty, and asked again later."""
        if rtype.name not in self._listed:
            log.info("Kubernetes %s: not served (404); treating it as empty", rtype.name)
        self._apply_list(rtype, [], "absent")
        self.stop_event.wait(self._optional_retry)

    def _relist(self, rtype: ResourceType, client: KubeClient) -> str:
        items, rv = client.list_all(rtype.path, self._page_size)
        self._apply_list(rtype, items, rv)
        return rv

    def _apply_list(self, rtype: ResourceType, items: list[Any], rv: str) -> None:
        with self._lock:
            if self.stop_event.is_set():
                return
            first = rtype.name not in self._listed
            if not first:
                self.relists[rtype.name] += 1
            if self._status == SyncStatus.WAIT_FOR_READY:
                self._set_status(SyncStatus.RESYNC)
                self._report(self.model.set_static(static_keys()))
            updates = self.model.replace_all(rtype.name, items)
            self._report(updates)
            self._listed.add(rtype.name)
            log.info(
                "Listed %d Kubernetes %s at resource version %s: %d changes%s",
                len(items),
                rtype.name,
                quoted(rv, 40),
                len(updates),
                "" if first else " (relist)",
            )
            if self._status != SyncStatus.IN_SYNC and self._listed >= {t.name for t in self.types}:
                self._set_status(SyncStatus.IN_SYNC)

    def _watch(self, rtype: ResourceType, client: KubeClient, rv: str) -> tuple[str, bool]:
        """Follow one watch until the server ends it; the version to resume from, and whether
        any event (or bookmark) arrived."""
        stream = client.watch(rtype.path, rv, self._watch_timeout)
        progressed = False
        with self._streams_lock:
            self._streams.add(stream)
        try:
            for event in stream:
                if self.stop_event.is_set():
                    break
                if event.type == "ERROR":
                    raise status_error(500, event.object)
                meta = event.object.get("metadata")
                new_rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
                if not opaque(new_rv, MAX_VERSION):
                    raise KubeUnavailable(
                        f"watch event without a usable resource version: {event.type}"
                    )
                if event.type != "BOOKMARK":
                    with self._lock:
                        if event.type == "DELETED":
                            updates = self.model.remove(rtype.name, event.object)
                        else:
                            updates = self.model.upsert(rtype.name, event.object)
                        self._report(updates)
                rv, progressed = str(new_rv), True
        finally:
            with self._streams_lock:
                self._streams.discard(stream)
            stream.close()
        return rv, progressed

    # --- Listener (called with the lock held) -----------------------------------------------------

    def _report(self, updates: list[Update]) -> None:
        if updates and not self.stop_event.is_set():
            self._listener.on_updates(updates)

    def _set_status(self, status: SyncStatus) -> None:
        if status != self._status:
            self._status = status
            log.info("Datastore status: %s", status)
            self._listener.on_status(status)
