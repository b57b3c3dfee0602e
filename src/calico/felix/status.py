"""Felix's reports into etcd: its own liveness and the oper status of its endpoints.

felix.md §6.1, §6.2, §2.8; docs/design/status.md.

* Liveness: every ReportingIntervalSecs (+0-10 % jitter) the same JSON goes to
  `/calico/felix/v1/host/<host>/status` (with a TTL, so that it vanishes when Felix dies) and to
  `.../last_reported_status` (no TTL, a record of when Felix was last seen). The first report is
  written as soon as the reporter starts.
* Endpoint status: the dataplane driver reports each endpoint's oper status after programming it
  (`pipe.EndpointStatusReport`); Felix writes `{"status": ...}` under its status tree, at most one
  write per EndpointReportingDelaySecs (±10 % jitter), and deletes the key (and, in v2, its empty
  parent directories) when the endpoint goes. Once the driver has programmed the first in-sync
  state, Felix reads its own status tree and deletes what a previous run left behind.

The decisions (`LivenessSchedule`, `EndpointStatusQueue`) are pure and take the time as an
argument, for unit tests with a fake clock. `StatusReporter` is the I/O edge: one thread with its
own etcd client, so a slow or failing etcd delays only the reports, never the syncer or the
dataplane. Every etcd error is logged and retried; none ends Felix.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from calico.common.datamodel_v1 import (
    FelixLastStatusKey,
    FelixStatusKey,
    HostEndpointKey,
    HostEndpointStatusKey,
    WorkloadEndpointKey,
    WorkloadEndpointStatusKey,
    felix_host_status_dir,
    parse_key,
)
from calico.common.etcd.base import EtcdError, KVStore
from calico.felix.driver.pipe import DriverReady, EndpointStatusReport

log = logging.getLogger(__name__)

STATUS_UP = "up"
STATUS_DOWN = "down"
STATUS_ERROR = "error"
# Pause before retrying a failed liveness write or stale-status read ([1.4]: 5 s); never longer
# than the reporting interval, so a short interval keeps its promise after a blip.
RETRY_SECS = 5.0
JITTER = 0.1
# Time a liveness write may take (an etcd request and its retry) on top of the interval.
REPORT_SLACK_SECS = 2.0

# What `in_etcd` holds for a key whose fate is unknown after a failed request: it matches no
# value and is not "absent", so the key is written or deleted again.
UNKNOWN = ""

StatusKey = WorkloadEndpointStatusKey | HostEndpointStatusKey
Jitter = Callable[[], float]  # a number in [0, 1)


def longest_gap(interval: int) -> float:
    """The longest time between two healthy liveness reports: the interval with its largest
    jitter, plus REPORT_SLACK_SECS for the write itself."""
    return interval * (1 + JITTER) + REPORT_SLACK_SECS


def effective_ttl(interval: int, ttl: int) -> int:
    """The TTL actually put on the `status` key.

    A TTL no longer than the longest gap between two reports would let the key lapse while
    Felix is healthy (Neutron would then see the agent as dead). [1.4] compared the TTL with
    the interval only, which a TTL just above the interval passes although the jitter makes
    reports up to 10 % late. Such a TTL is replaced by two and a half intervals (as [1.4] did),
    or more where that is still too short. 0 when reporting is disabled."""
    if interval <= 0:
        return 0
    if ttl > longest_gap(interval):
        return ttl
    return max(interval * 5 // 2, math.ceil(longest_gap(interval)) + 1)


def liveness_json(wall: datetime, uptime: float, first_update: bool) -> str:
    """The §2.8 value: UTC time to the second with a Z, uptime in seconds, first_update."""
    when = wall.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps({"time": when, "uptime": round(uptime, 3), "first_update": first_update})


def endpoint_status_json(status: str) -> str:
    return json.dumps({"status": status})


def status_key_for(key: WorkloadEndpointKey | HostEndpointKey) -> StatusKey:
    if isinstance(key, WorkloadEndpointKey):
        return WorkloadEndpointStatusKey.for_endpoint(key)
    return HostEndpointStatusKey.for_endpoint(key)


def empty_parents(key: StatusKey) -> list[str]:
    """The directories to try to remove (innermost first) after deleting a status key, up to but
    not including the host's directory (§2.8)."""
    host_dir = felix_host_status_dir(key.hostname)
    parents: list[str] = []
    path = key.path.rsplit("/", 1)[0]
    while path != host_dir and path.startswith(host_dir + "/"):
        parents.append(path)
        path = path.rsplit("/", 1)[0]
    return parents


class LivenessSchedule:
    """When to write the liveness report, and what `first_update` says."""

    def __init__(self, interval: int, ttl: int, now: float, jitter: Jitter = random.random):
        self.interval = interval
        self.ttl = effective_ttl(interval, ttl)
        self.first_update = True  # until one write has succeeded
        self._jitter = jitter
        self.due_at: float | None = now if interval > 0 else None  # the first report at once

    def is_due(self, now: float) -> bool:
        return self.due_at is not None and now >= self.due_at

    def on_success(self, now: float) -> None:
        self.first_update = False
        self.due_at = now + self.interval * (1 + JITTER * self._jitter())

    def on_failure(self, now: float) -> None:
        self.due_at = now + min(RETRY_SECS, float(self.interval))


@dataclass(frozen=True)
class Write:
    key: StatusKey
    value: str


@dataclass(frozen=True)
class Delete:
    key: StatusKey


Action = Write | Delete


class EndpointStatusQueue:
    """Which endpoint status key to write or delete next, one per tick.

    `desired` is what the dataplane last reported; `in_etcd` what we believe etcd holds (a key
    missing from it is believed absent). Dirty keys are served oldest first; a key dirtied again
    keeps its place and a failed action goes to the back, so one flapping or failing endpoint
    cannot starve the others (the fairness [1.4]'s two dirty sets gave). A key whose etcd value
    already matches costs no write and no tick.
    """

    def __init__(self, delay: float, jitter: Jitter = random.random):
        self._delay = max(0.0, delay)
        self._jitter = jitter
        self.desired: dict[StatusKey, str] = {}
        self.in_etcd: dict[StatusKey, str] = {}
        self._dirty: dict[StatusKey, None] = {}  # insertion-ordered set
        self._next_at = 0.0

    def set_status(self, key: StatusKey, status: str | None) -> None:
        if status is None:
            self.desired.pop(key, None)
        else:
            self.desired[key] = status
        self._dirty.setdefault(key, None)

    def found_in_etcd(self, found: Mapping[StatusKey, str]) -> None:
        """What a read of our own status tree returned: keys not desired any more (a previous
        run's endpoints) get deleted, desired ones with another value rewritten."""
        for key, value in found.items():
            self.in_etcd[key] = value
            self._dirty.setdefault(key, None)

    def next_action(self, now: float) -> Action | None:
        """The next write or delete, if the rate limit allows one now."""
        if now < self._next_at:
            return None
        while self._dirty:
            key = next(iter(self._dirty))
            del self._dirty[key]
            status = self.desired.get(key)
            want = None if status is None else endpoint_status_json(status)
            if self.in_etcd.get(key) == want:
                continue
            return Delete(key) if want is None else Write(key, want)
        return None

    def done(self, action: Action, now: float) -> None:
        if isinstance(action, Write):
            self.in_etcd[action.key] = action.value
        else:
            self.in_etcd.pop(action.key, None)
        self._tick(now)

    def failed(self, action: Action, now: float) -> None:
        # We no longer know what etcd holds for it (the request may have landed): try again,
        # after the others.
        self.in_etcd[action.key] = UNKNOWN
        self._dirty.setdefault(action.key, None)
        self._tick(now)

    def _tick(self, now: float) -> None:
        self._next_at = now + self._delay * (1 - JITTER + 2 * JITTER * self._jitter())

    def wake_at(self) -> float | None:
        """When next_action() may next return something (None: nothing is dirty)."""
        return self._next_at if self._dirty else None

    @property
    def pending(self) -> int:
        return len(self._dirty)


def parse_own_statuses(hostname: str, items: Mapping[str, str]) -> dict[StatusKey, str]:
    """This host's endpoint status keys from a read of its status tree."""
    found: dict[StatusKey, str] = {}
    for path, value in items.items():
        key = parse_key(path)
        if isinstance(key, WorkloadEndpointStatusKey | HostEndpointStatusKey):
            if key.hostname == hostname:
                found[key] = value
    return found


class StatusReporter:
    """The reporting thread: liveness on its schedule, endpoint statuses as they come."""

    def __init__(
        self,
        client: KVStore,
        hostname: str,
        *,
        interval: int,
        ttl: int,
        endpoint_reporting: bool,
        endpoint_delay: float,
        started_at: float,
        jitter: Jitter = random.random,
    ):
        self._client = client
        self._hostname = hostname
        self._started_at = started_at
        self._endpoint_reporting = endpoint_reporting
        self._liveness = LivenessSchedule(interval, ttl, time.monotonic(), jitter)
        self._queue = EndpointStatusQueue(endpoint_delay)
        self._cleanup_due_at: float | None = None
        self._cleanup_done = False
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="status-reporter", daemon=True)
        if interval <= 0:
            log.info("Felix status reporting is disabled (ReportingIntervalSecs = 0)")
        elif self._liveness.ttl != ttl:
            log.warning(
                "ReportingTTLSecs %d is not longer than the longest gap between reports "
                "(ReportingIntervalSecs %d plus jitter and slack); using TTL %d",
                ttl,
                interval,
                self._liveness.ttl,
            )

    @property
    def enabled(self) -> bool:
        return self._liveness.due_at is not None or self._endpoint_reporting

    def start(self) -> None:
        if self.enabled:
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._client.close()

    # --- Inputs (any thread) -------------------------------------------------------------------

    def on_driver_report(self, report: Any) -> None:
        if not self._endpoint_reporting:
            return
        with self._cond:
            if isinstance(report, EndpointStatusReport):
                for key, status in report.statuses.items():
                    self._queue.set_status(status_key_for(key), status)
            elif isinstance(report, DriverReady) and not self._cleanup_done:
                # Everything current has been reported: anything else in our tree is stale.
                self._cleanup_due_at = time.monotonic()
            else:
                return
            self._cond.notify()

    # --- The thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                now = time.monotonic()
                action = self._queue.next_action(now) if self._endpoint_reporting else None
                cleanup = self._cleanup_due_at is not None and now >= self._cleanup_due_at
                liveness = self._liveness.is_due(now)
                if action is None and not cleanup and not liveness:
                    self._cond.wait(self._timeout(now))
                    continue
            # I/O outside the lock: a slow etcd must not block the driver's report reader.
            try:
                if liveness:
                    self._report_liveness()
                if cleanup:
                    self._read_own_statuses()
                if action is not None:
                    self._apply(action)
            except Exception:  # a reporting bug must never take Felix down
                log.exception("Status reporting failed; carrying on")
                with self._cond:
                    self._cond.wait(RETRY_SECS)

    def _timeout(self, now: float) -> float | None:
        times = [self._liveness.due_at, self._cleanup_due_at]
        if self._endpoint_reporting:
            times.append(self._queue.wake_at())
        deadlines = [t for t in times if t is not None]
        return max(0.0, min(deadlines) - now) if deadlines else None

    def _report_liveness(self) -> None:
        uptime = time.monotonic() - self._started_at
        value = liveness_json(datetime.now(UTC), uptime, self._liveness.first_update)
        try:
            self._client.put(FelixStatusKey(self._hostname).path, value, ttl=self._liveness.ttl)
            self._client.put(FelixLastStatusKey(self._hostname).path, value)
        except EtcdError as e:
            log.warning("Could not write Felix status to etcd (will retry): %s", e)
            self._client.rotate()
            self._liveness.on_failure(time.monotonic())
            return
        if self._liveness.first_update:
            log.info("Reported Felix status to etcd: %s", value)
        self._liveness.on_success(time.monotonic())

    def _read_own_statuses(self) -> None:
        path = felix_host_status_dir(self._hostname)
        try:
            items = self._client.read_prefix(path).items
        except EtcdError as e:
            log.warning("Could not read %s to remove stale statuses (will retry): %s", path, e)
            self._client.rotate()
            with self._cond:
                self._cleanup_due_at = time.monotonic() + RETRY_SECS
            return
        found = parse_own_statuses(self._hostname, items)
        with self._cond:
            self._cleanup_due_at = None
            self._cleanup_done = True
            self._queue.found_in_etcd(found)
            stale = [k for k in found if k not in self._queue.desired]
        log.info("Found %d endpoint statuses in etcd, %d of them stale", len(found), len(stale))

    def _apply(self, action: Action) -> None:
        try:
            if isinstance(action, Write):
                self._client.put(action.key.path, action.value)
            else:
                self._client.delete(action.key.path)
                self._prune(empty_parents(action.key))
        except EtcdError as e:
            log.warning("Could not update %s in etcd (will retry): %s", action.key.path, e)
            self._client.rotate()
            with self._cond:
                self._queue.failed(action, time.monotonic())
            return
        log.debug("Endpoint status: %s", action)
        with self._cond:
            self._queue.done(action, time.monotonic())

    def _prune(self, directories: Iterable[str]) -> None:
        for directory in directories:
            if not self._client.delete_empty_dir(directory):
                return  # not empty (or already gone): the ones above are not empty either
