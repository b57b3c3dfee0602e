"""Felix's running phase: the datastore syncer on its own thread, the main loop on this one.

The syncer thread hands status changes and update batches to the main loop over a bounded
queue (back-pressure instead of unbounded memory). A thread that dies, a changed etcd
cluster ID or a change of Felix's own configuration ends the process with a non-zero exit
status, for the service manager to restart it.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from calico.common.etcd.base import ClusterIdChanged, KVStore
from calico.common.etcd.syncer import Syncer, SyncStatus, Update
from calico.common.sync import SyncListener
from calico.felix import metrics
from calico.felix.calc import messages as m
from calico.felix.calc.graph import CalcGraph
from calico.felix.config.changes import ConfigChangeDetector
from calico.felix.driver.pipe import DataplaneGone

log = logging.getLogger(__name__)

EXIT_STOPPED = 0
EXIT_RESTART = 1  # the service manager should restart us
# Pause before exiting on a config change, so that an admin churning the config cannot make
# Felix die often enough to trip the service manager's restart limit.
RESTART_PAUSE_SECS = 2.0
# Datastore batches taken together into one calculation and one dataplane batch, at most.
COALESCE_MAX = 1000
QUEUE_SIZE = 1000


@dataclass(frozen=True)
class _Status:
    status: SyncStatus


@dataclass(frozen=True)
class _Updates:
    updates: list[Update]
    received_at: float  # time.monotonic() when the syncer handed them over


@dataclass(frozen=True)
class _Fatal:
    reason: str


@dataclass(frozen=True)
class _Stop:
    pass


_Message = _Status | _Updates | _Fatal | _Stop


class _QueueListener:
    def __init__(self, q: queue.Queue[_Message]):
        self._queue = q

    def on_status(self, status: SyncStatus) -> None:
        self._queue.put(_Status(status))

    def on_updates(self, updates: list[Update]) -> None:
        self._queue.put(_Updates(updates, time.monotonic()))


class Dataplane(Protocol):
    """Where the calc graph's messages go (the dataplane driver, or a stand-in). `send` raises
    DataplaneGone when the dataplane has died."""

    def send(self, messages: list[m.Message], received_at: float | None = None) -> None: ...


class DatastoreSyncer(Protocol):
    """The etcd syncer or the Kubernetes one (calico.k8s.syncer): run() until stop()."""

    stop_event: threading.Event

    def run(self) -> None: ...
    def stop(self) -> None: ...


class FelixDaemon:
    def __init__(
        self,
        client: KVStore | None,
        config_changes: ConfigChangeDetector,
        graph: CalcGraph,
        dataplane: Dataplane,
        *,
        restart_pause: float = RESTART_PAUSE_SECS,
        syncer_factory: Callable[[SyncListener], DatastoreSyncer] | None = None,
    ):
        """`syncer_factory`: the datastore's syncer for a listener (default: the etcd syncer on
        `client`)."""
        self._client = client
        self._config_changes = config_changes
        self._graph = graph
        self._dataplane = dataplane
        self._restart_pause = restart_pause
        self._queue: queue.Queue[_Message] = queue.Queue(maxsize=QUEUE_SIZE)
        listener = _QueueListener(self._queue)
        self._syncer: DatastoreSyncer
        if syncer_factory is not None:
            self._syncer = syncer_factory(listener)
        else:
            assert client is not None
            self._syncer = Syncer(client, listener)
        self._keys: set[str] = set()
        self._in_sync_once = False
        self._stats = metrics.DataplaneStats()
        # When the oldest datastore update not yet reflected in a batch to the dataplane was
        # received (the start of the convergence-latency measurement).
        self._unsent_since: float | None = None

    def fatal(self, reason: str) -> None:
        """Thread-safe: end the process with a restart status (e.g. the driver died)."""
        self._queue.put(_Fatal(reason))

    def request_stop(self) -> None:
        """Thread- and signal-safe: ask the main loop to finish."""
        self._syncer.stop()
        try:
            self._queue.put_nowait(_Stop())
        except queue.Full:
            pass  # the loop also polls the syncer's stop flag

    def run(self) -> int:
        thread = threading.Thread(target=self._run_syncer, name="syncer", daemon=True)
        thread.start()
        while True:
            try:
                message = self._queue.get(timeout=1.0)
            except queue.Empty:
                if self._syncer.stop_event.is_set():
                    return EXIT_STOPPED
                continue
            try:
                code = self._handle_batch(self._drain(message))
            except DataplaneGone as e:
                log.critical("Exiting: %s", e)
                return EXIT_RESTART
            if code is not None:
                return code

    def _drain(self, first: _Message) -> list[_Message]:
        """`first` and the datastore updates queued behind it, up to the first other message:
        a burst of changes (500 ports created at once) becomes one calculation and one batch
        to the dataplane, one kernel transaction, instead of one per etcd event. Nothing waits:
        only what has already arrived is taken."""
        batch = [first]
        while isinstance(batch[-1], _Updates) and len(batch) < COALESCE_MAX:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _handle_batch(self, batch: list[_Message]) -> int | None:
        unflushed = False
        for message in batch:
            if isinstance(message, _Updates):
                metrics.on_datastore_updates(len(message.updates))
                if self._unsent_since is None:
                    self._unsent_since = message.received_at
                code = self._apply_updates(message.updates)
                unflushed = True
            else:
                if unflushed:
                    self._flush()
                    unflushed = False
                code = self._handle(message)
            if code is not None:
                return code
        if unflushed:
            self._flush()
        return None

    def _handle(self, message: _Message) -> int | None:
        match message:
            case _Stop():
                log.info("Stopping")
                return EXIT_STOPPED
            case _Fatal(reason):
                log.critical("Exiting: %s", reason)
                return EXIT_RESTART
            case _Status(status):
                self._on_status(status)
            case _Updates():
                return self._handle_batch([message])
        return None

    def _run_syncer(self) -> None:
        try:
            self._syncer.run()
        except ClusterIdChanged as e:
            self._queue.put(_Fatal(f"{e}; the datastore was rebuilt, local state is invalid"))
        except BaseException as e:  # a dead thread must take the process down
            log.exception("Datastore syncer died")
            self._queue.put(_Fatal(f"datastore syncer died: {e!r}"))

    def _on_status(self, status: SyncStatus) -> None:
        metrics.on_sync_status(status)
        if status == SyncStatus.RESYNC and not self._in_sync_once:
            # The first snapshot allocates millions of long-lived objects and no garbage cycles
            # worth collecting: no collector passes until it is in (20-30 % of its time).
            gc.disable()
        elif status == SyncStatus.WAIT_FOR_READY:
            gc.enable()  # a snapshot that did not complete: back to normal while waiting
        self._graph.on_status(status)
        self._flush()
        if status == SyncStatus.IN_SYNC:
            first = "" if self._in_sync_once else " for the first time"
            log.info("In sync with the datastore%s: %d keys", first, len(self._keys))
            if not self._in_sync_once:
                # The snapshot's state lives as long as Felix: keep the cyclic garbage
                # collector from walking its millions of objects again at every later change
                # (frozen objects are still freed by reference counting), and turn it back on.
                gc.freeze()
                gc.enable()
            self._in_sync_once = True

    def _apply_updates(self, updates: list[Update]) -> int | None:
        """Feed updates to the graph (the caller flushes); a restart status if Felix's own
        configuration changed."""
        for key, value in updates:
            if value is None:
                self._keys.discard(key)
            else:
                self._keys.add(key)
            changes = self._config_changes.update(key, value)
            if changes:
                for change in changes:
                    log.warning("Felix configuration changed in etcd: %s", change)
                log.warning(
                    "Felix must restart to apply its new configuration; exiting in %.0f s",
                    self._restart_pause,
                )
                self._syncer.stop()
                time.sleep(self._restart_pause)
                return EXIT_RESTART
        self._graph.on_updates(updates)
        return None

    def _flush(self) -> None:
        messages = self._graph.flush()
        if messages:
            self._stats.observe(messages)
            self._dataplane.send(messages, self._unsent_since)
            self._unsent_since = None
        elif self._in_sync_once:
            # Updates that changed nothing here (e.g. another host's endpoint): nothing to wait
            # for. Before the first in-sync the graph holds everything back, so keep the time.
            self._unsent_since = None
