"""calico-bgp's loop: follow etcd, render, check, write, reload BIRD; poll BIRD for metrics.

Threads: two syncers (`calico.common.etcd.syncer.Syncer`, snapshot + watch + resync), one for
`/calico/bgp/v1` and one for `/calico/v1/ipam` (narrow prefixes: Felix's status writes and the
endpoints never wake this daemon), each with its own etcd client; the main thread does
everything else, including starting the `bird -p` helper (whose parent-death signal is tied to
the thread that started it, so it must be one that lives as long as the daemon).

* Nothing is rendered before both syncers have been in sync once: a half-read etcd would
  drop sessions. After that, changes arrive as differences and are applied at once; a resync
  (etcd down, history lost) keeps the last data meanwhile.
* A burst of changes is coalesced: after the first, the loop waits until none has come for
  `settle` seconds, at most `max_delay` seconds, then renders once.
* The text is compared with the last one written: unchanged, nothing is written or reloaded.
  Changed, it is checked and written atomically (`calico.bgp.config_file`), and BIRD is asked
  to reload. At start, one reload is asked for even when the file already holds the text, so
  a BIRD that missed the last reload (calico-bgp killed in between) catches up.
* BIRD not reachable: the file is kept current and the reload retried at every poll. A file
  that cannot be written (a full disk) is tried again at every poll; a text `bird -p` refused
  is not tried again (it would be refused again), the next change is.
* Every `poll_interval` seconds BIRD's protocols are read for the metrics, and sessions that
  became or stopped being Established are logged.

Both syncers wait for `/calico/v1/Ready`, as Felix's does; their prefixes do not hold the key,
so `ReadyGate` adds its current value to each snapshot (the watch does not follow it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from calico.bgp import metrics
from calico.bgp.birdctl import BirdControl, BirdError, BirdUnavailable
from calico.bgp.config_file import ConfigFile
from calico.bgp.model import BgpStore
from calico.bgp.peers import LocalHost, plan
from calico.bgp.render import RenderOptions, UnsafeValue, render_plan
from calico.bgp.status import Protocol, bgp_sessions, parse_protocols
from calico.common import datamodel_bgp as bgp_keys
from calico.common import datamodel_v1 as dm
from calico.common.etcd.base import ClusterIdChanged, KVStore, Snapshot, WatchEvent
from calico.common.etcd.syncer import Syncer
from calico.common.sync import SyncStatus, Update

log = logging.getLogger(__name__)

EXIT_STOPPED = 0
EXIT_RESTART = 1
PREFIXES = (bgp_keys.BGP_DIR, dm.IPAM_DIR)


class ReadyGate:
    """A KVStore whose snapshots also carry /calico/v1/Ready (read just after them)."""

    def __init__(self, client: KVStore):
        self._client = client

    def read_prefix(self, prefix: str) -> Snapshot:
        snapshot = self._client.read_prefix(prefix)
        ready = self._client.get(dm.READY_KEY)
        if ready is None:
            return snapshot
        return Snapshot(snapshot.revision, {**snapshot.items, dm.READY_KEY: ready})

    def get(self, key: str) -> str | None:
        return self._client.get(key)

    def watch(self, prefix: str, start_revision: int, timeout: float) -> list[WatchEvent]:
        return self._client.watch(prefix, start_revision, timeout)

    def rotate(self) -> None:
        self._client.rotate()


class _Listener:
    def __init__(self, daemon: BgpDaemon, prefix: str):
        self._daemon = daemon
        self._prefix = prefix

    def on_status(self, status: SyncStatus) -> None:
        self._daemon.on_status(self._prefix, status)

    def on_updates(self, updates: list[Update]) -> None:
        self._daemon.on_updates(updates)


class BgpDaemon:
    def __init__(
        self,
        clients: dict[str, KVStore],
        me: LocalHost,
        config_file: ConfigFile,
        bird: BirdControl,
        options: RenderOptions,
        *,
        poll_interval: float = 5.0,
        settle: float = 0.1,
        max_delay: float = 1.0,
        watch_timeout: float = 10.0,
    ):
        self.me = me
        self.config_file = config_file
        self.bird = bird
        self.options = options
        self.poll_interval = poll_interval
        self.settle = settle
        self.max_delay = max_delay
        self.store = BgpStore()
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._last_change = 0.0
        self._in_sync: set[str] = set()
        self._ever_in_sync: set[str] = set()
        self._fatal: str | None = None
        self.syncers = {
            prefix: Syncer(
                ReadyGate(client),  # type: ignore[arg-type]  # the four calls a Syncer makes
                _Listener(self, prefix),
                prefix=prefix,
                watch_timeout=watch_timeout,
            )
            for prefix, client in clients.items()
        }
        self.last_text = config_file.current()
        self._failed_text: str | None = None
        self.reload_pending = True  # one reload at start (see the module docstring)
        self.retry_write = False  # the last write failed (not a refusal): try at every poll
        self._logged_conflicts: set[str] = set()
        self._logged_reload_error: str | None = None
        self._established: dict[str, bool] = {}
        self.bird_reachable: bool | None = None

    # -- from the syncer threads -----------------------------------------------------------

    def on_status(self, prefix: str, status: SyncStatus) -> None:
        with self._lock:
            if status == SyncStatus.IN_SYNC:
                self._in_sync.add(prefix)
                self._ever_in_sync.add(prefix)
            else:
                self._in_sync.discard(prefix)
            metrics.IN_SYNC.set(1 if len(self._in_sync) == len(self.syncers) else 0)
            self._last_change = time.monotonic()
        self._changed.set()

    def on_updates(self, updates: list[Update]) -> None:
        with self._lock:
            relevant = [self.store.update(key, value) for key, value in updates]
            metrics.REFUSED_KEYS.set(len(self.store.refused))
            self._last_change = time.monotonic()
        if any(relevant):
            self._changed.set()

    def fatal(self, reason: str) -> None:
        self._fatal = reason
        self._changed.set()

    # -- the main thread -----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> int:
        threads = [
            threading.Thread(
                target=self._run_syncer, args=(prefix, syncer), name=f"syncer{prefix}", daemon=True
            )
            for prefix, syncer in self.syncers.items()
        ]
        for thread in threads:
            thread.start()
        stop_watch = threading.Thread(target=self._wake_on, args=(stop,), daemon=True)
        stop_watch.start()
        next_poll = time.monotonic()
        try:
            while not stop.is_set():
                self._changed.wait(max(0.0, next_poll - time.monotonic()))
                if self._fatal is not None:
                    log.error("Exiting to be restarted: %s", self._fatal)
                    return EXIT_RESTART
                if stop.is_set():
                    break
                if self._changed.is_set() and self._ready_to_render():
                    self._coalesce(stop)
                    self._changed.clear()
                    self._guarded(self.apply)
                elif self._changed.is_set():
                    self._changed.clear()
                if time.monotonic() >= next_poll:
                    self._guarded(self.poll)
                    next_poll = time.monotonic() + self.poll_interval
            return EXIT_STOPPED
        finally:
            for syncer in self.syncers.values():
                syncer.stop()

    def _guarded(self, step: Callable[[], object]) -> None:
        """Run one step; a bug (an exception on validated input) is logged and counted, never
        the end of the daemon: the old file stays and the next change or poll tries again."""
        try:
            step()
        except Exception:
            metrics.RENDER_FAILURES.inc()
            log.exception("calico-bgp failed to %s; carrying on", step.__name__)

    def _wake_on(self, stop: threading.Event) -> None:
        stop.wait()
        self._changed.set()

    def _run_syncer(self, prefix: str, syncer: Syncer) -> None:
        try:
            syncer.run()
        except ClusterIdChanged as e:
            self.fatal(f"the etcd cluster ID changed ({e})")
        except Exception as e:
            log.exception("The syncer of %s failed", prefix)
            self.fatal(f"the syncer of {prefix} failed: {e!r}")

    def _ready_to_render(self) -> bool:
        with self._lock:
            return len(self._ever_in_sync) == len(self.syncers)

    def _coalesce(self, stop: threading.Event) -> None:
        """Wait until no change came for `settle` s (at most `max_delay` s in all)."""
        started = time.monotonic()
        while not stop.is_set():
            with self._lock:
                quiet = time.monotonic() - self._last_change
            waited = time.monotonic() - started
            if quiet >= self.settle or waited >= self.max_delay:
                return
            stop.wait(min(self.settle - quiet, self.max_delay - waited))

    def apply(self) -> None:
        """Render; write and reload if the text changed."""
        with self._lock:
            data = self.store.data()
        the_plan = plan(data, self.me)
        self._log_conflicts(the_plan.conflicts)
        try:
            text = render_plan(data, self.me, the_plan, self.options)
        except UnsafeValue as e:
            metrics.RENDER_FAILURES.inc()
            log.error("Cannot render BIRD's configuration (the old file stays): %s", e)
            return
        if text not in (self.last_text, self._failed_text):
            try:
                problem = self.config_file.write(text)
            except OSError as e:
                if not self.retry_write:
                    log.error("Cannot write %s (will try again): %s", self.config_file.path, e)
                self.retry_write = True
                return
            self.retry_write = False
            if problem is not None:
                metrics.RENDER_FAILURES.inc()
                self._failed_text = text
                log.error(
                    "BIRD refused the rendered configuration; %s is unchanged: %s",
                    self.config_file.path,
                    problem,
                )
                return
            metrics.CONFIG_WRITES.inc()
            self.last_text = text
            self._failed_text = None
            self.reload_pending = True
            log.info(
                "Wrote %s: %d sessions, AS %d%s",
                self.config_file.path,
                len(the_plan.sessions),
                the_plan.local_as,
                f", route reflector of cluster {the_plan.rr_cluster_id}"
                if the_plan.rr_cluster_id
                else "",
            )
        if self.reload_pending and self.last_text is not None:
            self.reload()

    def _log_conflicts(self, conflicts: tuple[str, ...]) -> None:
        for line in conflicts:
            if line not in self._logged_conflicts:
                log.error("Address conflict: %s (each host needs its own addresses)", line)
        self._logged_conflicts = set(conflicts)

    def reload(self) -> None:
        try:
            answer = self.bird.configure(str(self.config_file.path))
        except BirdUnavailable as e:
            if self.bird_reachable is not False:
                log.warning("BIRD is not reachable (%s): the file is current; will reload it", e)
            self.bird_reachable = False
            metrics.bird_down()
            return
        except BirdError as e:
            metrics.RELOAD_FAILURES.inc()
            if str(e) != self._logged_reload_error:
                log.error("BIRD refused to reload %s: %s", self.config_file.path, e)
                self._logged_reload_error = str(e)
            self.reload_pending = False  # the next change (or restart) tries again
            return
        self.reload_pending = False
        self.bird_reachable = True
        self._logged_reload_error = None
        metrics.RELOADS.inc()
        log.info("BIRD reloaded %s: %s", self.config_file.path, answer)

    def poll(self) -> list[Protocol] | None:
        """Read BIRD's protocols (metrics, session changes); retry a failed write or a
        pending reload."""
        if self.retry_write:
            self.apply()
        try:
            protocols = parse_protocols(self.bird.show_protocols())
        except (BirdUnavailable, BirdError) as e:
            if self.bird_reachable is not False:
                log.warning("BIRD is not reachable: %s", e)
            self.bird_reachable = False
            metrics.bird_down()
            return None
        if self.bird_reachable is False:
            log.info("BIRD is reachable again")
        self.bird_reachable = True
        metrics.observe_protocols(protocols)
        self._log_sessions(protocols)
        if self.reload_pending and self.last_text is not None and self._ready_to_render():
            self.reload()
        return protocols

    def _log_sessions(self, protocols: list[Protocol]) -> None:
        now = {p.name: p.established for p in bgp_sessions(protocols)}
        for name, established in now.items():
            if self._established.get(name) != established:
                protocol = next(p for p in protocols if p.name == name)
                log.info("BGP session %s (%s, %s): %s %s", name, protocol.address,
                         protocol.peer_type, protocol.state, protocol.info)  # fmt: skip
        self._established = now
