"""The datastore watcher: a consistent snapshot of a prefix, then ordered updates.

Algorithm (the same for both APIs):

1. Wait until /calico/v1/Ready is "true" (status WAIT_FOR_READY).
2. Read the whole prefix at one revision R (status RESYNC) and report the difference from
   what the listener already has: new and changed keys, and deletions for keys that
   vanished while we were not watching. The first snapshot reports everything.
3. Report IN_SYNC, then watch from R + 1, reporting each batch of events.

Because the snapshot is atomic at R and the watch replays history from R + 1, writes made
while the snapshot was being read are never lost. Anything that breaks the chain goes back
to step 1: the history is gone (v2 "event index cleared", v3 compaction), etcd is
unreachable (retried with backoff, rotating across endpoints) or Ready stops being "true".
A changed cluster ID is fatal: `run()` raises ClusterIdChanged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from calico.common import datamodel_v1
from calico.common.etcd.base import EtcdUnavailable, KVStore, ResyncRequired, WatchEvent
from calico.common.sync import SyncListener, SyncStatus, Update

__all__ = ["Backoff", "SyncListener", "SyncStatus", "Syncer", "Update"]

log = logging.getLogger(__name__)
READY = datamodel_v1.READY_KEY


class Backoff:
    """Exponential retry delay: 0.5 s doubling to `maximum`, reset after a success."""

    def __init__(self, maximum: float = 10.0, initial: float = 0.5):
        self._initial = initial
        self._maximum = maximum
        self._next = initial

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self._maximum)
        return delay

    def reset(self) -> None:
        self._next = self._initial


def wait_for_ready(
    client: KVStore,
    stop: threading.Event,
    *,
    poll_interval: float = 1.0,
    log_interval: float = 5.0,
    on_waiting: Callable[[], None] | None = None,
) -> bool:
    """Block until the Ready flag is "true" (True) or stop is set (False), logging every few s."""
    backoff = Backoff()
    last_log = 0.0
    while not stop.is_set():
        try:
            value = client.get(datamodel_v1.READY_KEY)
            backoff.reset()
        except EtcdUnavailable as e:
            log.warning("etcd unavailable while waiting for Ready: %s", e)
            client.rotate()
            stop.wait(backoff.next_delay())
            continue
        if value == datamodel_v1.READY_VALUE:
            return True
        if on_waiting is not None:
            on_waiting()
        now = time.monotonic()
        if now - last_log >= log_interval:
            log.info("Waiting for %s to be 'true' (now %r)", datamodel_v1.READY_KEY, value)
            last_log = now
        stop.wait(poll_interval)
    return False


class Syncer:
    def __init__(
        self,
        client: KVStore,
        listener: SyncListener,
        *,
        prefix: str = datamodel_v1.VERSION_DIR,
        watch_timeout: float = 10.0,
        ready_poll_interval: float = 1.0,
    ):
        self._client = client
        self._listener = listener
        self._prefix = prefix
        self._watch_timeout = watch_timeout
        self._ready_poll_interval = ready_poll_interval
        self._known: dict[str, str] = {}
        self._status: SyncStatus | None = None
        self.stop_event = threading.Event()
        self.resyncs = 0

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        """Loop until stopped. Raises ClusterIdChanged (fatal) and anything unexpected."""
        backoff = Backoff()
        while not self.stop_event.is_set():
            try:
                self._set_status(SyncStatus.WAIT_FOR_READY)
                if not wait_for_ready(
                    self._client, self.stop_event, poll_interval=self._ready_poll_interval
                ):
                    return
                revision = self._resync()
                backoff.reset()
                if revision is None:
                    continue  # Ready went away during the snapshot
                self._set_status(SyncStatus.IN_SYNC)
                self._watch(revision + 1)
            except ResyncRequired as e:
                log.warning("Resynchronising with etcd: %s", e)
            except EtcdUnavailable as e:
                delay = backoff.next_delay()
                log.warning("etcd unavailable (%s); retrying in %.1f s", e, delay)
                self._client.rotate()
                self.stop_event.wait(delay)

    def _set_status(self, status: SyncStatus) -> None:
        if status != self._status:
            self._status = status
            log.info("Datastore status: %s", status)
            self._listener.on_status(status)

    def _resync(self) -> int | None:
        """Load a snapshot, report the difference; the snapshot revision (None: not Ready)."""
        self._set_status(SyncStatus.RESYNC)
        self.resyncs += 1
        started = time.monotonic()
        snapshot = self._client.read_prefix(self._prefix)
        items = snapshot.items
        updates: list[Update] = [(k, v) for k, v in items.items() if self._known.get(k) != v]
        updates.extend((k, None) for k in self._known if k not in items)
        self._known = dict(items)
        log.info(
            "Snapshot of %s at revision %d: %d keys, %d changes, %.3f s",
            self._prefix,
            snapshot.revision,
            len(items),
            len(updates),
            time.monotonic() - started,
        )
        if updates:
            self._listener.on_updates(updates)
        if items.get(datamodel_v1.READY_KEY) != datamodel_v1.READY_VALUE:
            return None
        return snapshot.revision

    def _watch(self, next_revision: int) -> None:
        while not self.stop_event.is_set():
            events = self._client.watch(self._prefix, next_revision, self._watch_timeout)
            if not events:
                continue
            next_revision = events[-1].revision + 1
            updates = self._apply(events)
            if updates:
                self._listener.on_updates(updates)
            if self._known.get(datamodel_v1.READY_KEY) != datamodel_v1.READY_VALUE:
                log.warning("%s is no longer 'true': waiting, then resyncing", READY)
                return

    def _apply(self, events: list[WatchEvent]) -> list[Update]:
        updates: list[Update] = []
        for event in events:
            if event.is_dir:
                below = event.key.rstrip("/") + "/"
                for key in [k for k in self._known if k.startswith(below)]:
                    del self._known[key]
                    updates.append((key, None))
            elif event.value is None:
                if self._known.pop(event.key, None) is not None:
                    updates.append((event.key, None))
            elif self._known.get(event.key) != event.value:
                self._known[event.key] = event.value
                updates.append((event.key, event.value))
        return updates
