"""The dataplane driver's one loop: `select()` on Felix's pipe and the netlink interface
watcher, with timers for the iptables refresh (IptablesRefreshInterval, jittered +0-20 %), the
interface re-scan (HostInterfacePollInterval: a full listing of links and addresses that
repairs any netlink event the kernel dropped or we missed), the MetadataAddr lookup, the
start-of-day cleanup (StartupCleanupDelay after the first in-sync) and retries after a failed
apply (exponential backoff, capped). End of file on Felix's pipe means Felix has gone: the loop
returns.

In a burst (Felix has already sent more than the loop has read) an apply may leave its last
restore committing while the loop reads and renders the rest (`apply(detach=True)`); the next
apply collects it first, and the loop reports convergence, statuses and readiness only after an
apply that left nothing running (docs/design/dataplane.md).
"""

from __future__ import annotations

import gc
import logging
import random
import select
import time
from typing import Any

from calico.felix.calc import messages as m
from calico.felix.dataplane.manager import DataplaneManager
from calico.felix.driver import metrics
from calico.felix.driver.config import DriverConfig
from calico.felix.driver.pipe import (
    BatchReceived,
    DriverReady,
    EndpointStatusReport,
    FrameReader,
    FrameWriter,
)
from calico.felix.driver.resolver import RESOLVE_RETRY_SECS, MetadataResolver
from calico.felix.kernel.ipsets import IpsetError
from calico.felix.kernel.iptables import IptablesError
from calico.felix.kernel.nft import NftError
from calico.felix.kernel.watcher import InterfaceWatcher

log = logging.getLogger("calico.felix.dataplane")

RETRY_MIN_SECS = 0.1
# The rules backend warms up for the next change (DataplaneManager.prepare) once the driver has
# had nothing to do for this long: not between the batches of a burst.
PREPARE_AFTER_IDLE_SECS = 0.02
RETRY_MAX_SECS = 10.0
EXIT_FELIX_GONE = 0
_APPLY_ERRORS = (IptablesError, IpsetError, NftError, OSError)


def next_interface_poll(now: float, interval: float) -> float | None:
    """When to re-scan interfaces next: `interval` s from `now`; None (never) if it is 0 or less.

    Netlink events are the fast path; this poll only repairs a missed event, so no jitter."""
    return None if interval <= 0 else now + interval


class DriverLoop:
    def __init__(
        self,
        config: DriverConfig,
        reader: FrameReader,
        writer: FrameWriter,
        manager: DataplaneManager,
        watcher: InterfaceWatcher | None,
        resolver: MetadataResolver | None = None,
    ) -> None:
        self._config = config
        self._reader = reader
        self._writer = writer
        self._manager = manager
        self._watcher = watcher
        self._dirty = False
        # The last apply left a restore running (a burst): the next pass collects it, and only
        # then reports convergence, statuses and readiness.
        self._unsettled = False
        self._busy_at = time.monotonic()  # when the driver last had something to do
        self._prepare_due = True
        self._in_sync_at: float | None = None
        self._reported_ready = False
        self._cleanup_at: float | None = None
        self._retry_at: float | None = None
        self._retry_delay = RETRY_MIN_SECS
        self._refresh_at = self._next_refresh(time.monotonic())
        self._poll_at = self._next_poll(time.monotonic())
        # A MetadataAddr given as a host name is resolved by `resolver`, again and again (see
        # RESOLVE_*); the loop picks up a new address every RESOLVE_RETRY_SECS.
        self._resolver = resolver
        self._resolve_at = time.monotonic() + RESOLVE_RETRY_SECS if resolver else None
        self._convergence = metrics.ConvergenceTimer()
        # Endpoint oper statuses last sent to Felix (only computed when Felix reports them).
        self._report_statuses = config.endpoint_reporting
        self._sent_statuses: dict[Any, str] = {}

    def _next_refresh(self, now: float) -> float | None:
        interval = self._config.refresh_interval
        return None if interval <= 0 else now + interval * (1 + random.random() * 0.2)  # noqa: S311

    def _next_poll(self, now: float) -> float | None:
        if self._watcher is None:
            return None
        return next_interface_poll(now, self._config.interface_poll_interval)

    def run(self) -> int:
        if not self._reported_ready:
            gc.disable()  # until the first state is programmed: see _report_ready
        while True:
            now = time.monotonic()
            self._run_due_work(now)
            timers = (
                self._cleanup_at,
                self._retry_at,
                self._refresh_at,
                self._poll_at,
                self._resolve_at,
            )
            prepare_at = self._busy_at + PREPARE_AFTER_IDLE_SECS if self._prepare_due else None
            if prepare_at is not None and now >= prepare_at and not self._dirty:
                self._prepare_due = False
                self._manager.prepare()  # idle for a while: get ready for the next change
                prepare_at = None
            deadlines = [t for t in (*timers, prepare_at) if t]
            timeout = max(0.0, min(deadlines) - now) if deadlines else None
            if self._unsettled and self._retry_at is None:
                timeout = 0.0  # (read what is waiting, then settle: never wait on Felix for it)
            sources: list[Any] = [self._reader]
            if self._watcher is not None:
                sources.append(self._watcher)
            readable, _, _ = select.select(sources, [], [], timeout)
            if readable:
                self._busy_at = time.monotonic()
                self._prepare_due = True
            if self._reader in readable and not self._read_from_felix():
                log.info("Felix closed the pipe; the dataplane driver stops")
                return EXIT_FELIX_GONE
            if self._watcher is not None and self._watcher in readable:
                self._watcher.read_events()
                self._dirty = True

    def _felix_waiting(self) -> bool:
        """Whether Felix has already sent more than the loop has read."""
        readable, _, _ = select.select([self._reader], [], [], 0)
        return bool(readable)

    def _read_from_felix(self) -> bool:
        frames = self._reader.read()
        if frames is None:
            return False
        self.feed(frames)
        return True

    def feed(self, frames: list[list[Any]]) -> None:
        for batch in frames:
            for message in batch:
                if isinstance(message, BatchReceived):
                    self._convergence.received(message.monotonic)
                    continue
                if isinstance(message, m.InSync):
                    self._in_sync_at = time.monotonic()
                self._manager.on_message(message)
        self._dirty = True

    def _run_due_work(self, now: float) -> None:
        if self._cleanup_at is not None and now >= self._cleanup_at:
            self._cleanup_at = None
            log.info("Start-of-day cleanup: removing the previous run's leftover chains and sets")
            if self._guarded(self._manager.cleanup):
                log.info("Start-of-day cleanup done")
        if self._refresh_at is not None and now >= self._refresh_at:
            self._refresh_at = self._next_refresh(now)
            log.debug("Periodic iptables/ipset refresh")
            self._guarded(lambda: self._manager.apply(force_refresh=True))
        if self._poll_at is not None and now >= self._poll_at:
            self._poll_at = self._next_poll(now)
            self.poll_interfaces()
        if self._resolve_at is not None and now >= self._resolve_at:
            self.resolve_metadata(now)
        if (self._dirty or self._unsettled) and (self._retry_at is None or now >= self._retry_at):
            # More from Felix is already waiting (a burst): this apply may leave its last
            # restore committing while that is read and rendered, and the next collects it.
            # Most of a burst's time is the kernel's commits: this takes the driver's own work
            # of the next batch out of their way.
            detach = self._felix_waiting()
            applied = self._guarded(lambda: self._manager.apply(detach=detach))
            self._dirty = not applied
            self._unsettled = self._manager.in_flight
            if not self._unsettled:
                self._after_apply(applied)
        if (
            self._manager.in_sync
            and not (self._dirty or self._unsettled)
            and not self._reported_ready
        ):
            self._report_ready(time.monotonic())  # after the apply above

    def resolve_metadata(self, now: float) -> None:
        """Reprogram the metadata NAT if the MetadataAddr host name now resolves elsewhere (a
        failed lookup keeps what is programmed: a DNS outage must not take the NAT down)."""
        assert self._resolver is not None
        self._resolve_at = now + RESOLVE_RETRY_SECS
        address = self._resolver.address
        if address is not None and address != self._manager.metadata_addr:
            log.info("MetadataAddr %s resolves to %s", self._resolver.name, address)
            self._manager.set_metadata_addr(address)
            self._dirty = True

    def poll_interfaces(self) -> None:
        """Re-list every link and address; the watcher tells the manager what differs from
        what events told it (nothing, normally), and apply() programs only what changed."""
        if self._watcher is None or not self._manager.matches_host_endpoints_by_address():
            # The poll exists for host endpoints found by address (felix.md §2.3). Without
            # them, events suffice (an event-queue overflow triggers a full re-scan anyway),
            # and a re-scan of thousands of TAPs would stall the loop for seconds.
            return
        before = self._watcher.changes
        self._watcher.snapshot()
        if self._watcher.changes != before:
            log.info("Interface re-scan found changes that no netlink event reported")
            self._dirty = True

    def _after_apply(self, applied: bool) -> None:
        """Convergence latency of the batches just programmed, and endpoint status changes."""
        if not self._manager.in_sync:
            return  # nothing was programmed yet (apply() waits for in-sync)
        if applied:
            self._convergence.programmed(time.monotonic())
        if self._report_statuses:
            statuses = self._manager.endpoint_statuses(apply_failed=not applied)
            changes: dict[Any, str | None] = {
                k: v for k, v in statuses.items() if self._sent_statuses.get(k) != v
            }
            changes.update({k: None for k in self._sent_statuses.keys() - statuses.keys()})
            if changes:
                self._sent_statuses = statuses
                self._writer.send([EndpointStatusReport(changes)])

    def _guarded(self, work: Any) -> bool:
        try:
            work()
        except _APPLY_ERRORS as e:
            metrics.APPLY_FAILURES.inc()
            log.error("Dataplane update failed (will retry in %.1f s): %s", self._retry_delay, e)
            self._retry_at = time.monotonic() + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, RETRY_MAX_SECS)
            self._dirty = True
            return False
        self._retry_at = None
        self._retry_delay = RETRY_MIN_SECS
        return True

    def _report_ready(self, now: float) -> None:
        self._reported_ready = True
        elapsed = now - (self._in_sync_at or now)
        log.info("Dataplane programmed: in sync with the datastore (%.2f s after in-sync)", elapsed)
        self._writer.send([DriverReady(elapsed)])
        # The programmed state lives as long as the driver: keep the cyclic garbage collector
        # from walking it again at every later change (reference counting still frees it);
        # it was off while the first state was rendered and programmed (see run()).
        gc.freeze()
        gc.enable()
        self._cleanup_at = now + self._config.startup_cleanup_delay
