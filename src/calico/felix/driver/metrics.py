"""The dataplane driver's Prometheus metrics (docs/design/status.md lists them).

The driver is its own process, so it has its own default registry (with the process collector)
and serves it on DataplaneDriverPrometheusMetricsPort when PrometheusMetricsEnabled.

Kernel commands are measured by wrapping the driver's `CommandRunner` (`MeteredRunner`), so the
table drivers stay unaware of metrics. Convergence latency is measured from the
`time.monotonic()` at which Felix received the datastore updates behind a batch (carried in
`pipe.BatchReceived`) to the end of the first successful apply after it; CLOCK_MONOTONIC is
system-wide, so the two processes' readings compare directly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram, start_http_server

from calico.felix.kernel.commands import (
    CommandRunner,
    Started,
    Streamed,
    output_lines,
    run_with_pieces,
    start_with_pieces,
)

if TYPE_CHECKING:
    import subprocess

log = logging.getLogger(__name__)

# Kernel commands take milliseconds to seconds (a big first iptables-restore).
_COMMAND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Convergence includes the calc graph, the pipe and every kernel command of the batch (and, at
# start of day, the whole first snapshot).
_CONVERGENCE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

IPTABLES_RUNS = Counter(
    "felix_dataplane_iptables_restore_runs", "iptables-restore runs", ["ip_version"]
)
IPTABLES_FAILURES = Counter(
    "felix_dataplane_iptables_restore_failures",
    "iptables-restore runs that exited non-zero",
    ["ip_version"],
)
IPTABLES_SECONDS = Histogram(
    "felix_dataplane_iptables_restore_seconds",
    "Duration of iptables-restore runs",
    ["ip_version"],
    buckets=_COMMAND_BUCKETS,
)
IPSET_RUNS = Counter("felix_dataplane_ipset_runs", "ipset command runs", ["command"])
IPSET_FAILURES = Counter(
    "felix_dataplane_ipset_failures", "ipset command runs that exited non-zero", ["command"]
)
IPSET_SECONDS = Histogram(
    "felix_dataplane_ipset_seconds",
    "Duration of ipset command runs",
    ["command"],
    buckets=_COMMAND_BUCKETS,
)
CONVERGENCE_SECONDS = Histogram(
    "felix_dataplane_convergence_seconds",
    "From Felix receiving datastore updates to the driver having programmed them",
    buckets=_CONVERGENCE_BUCKETS,
)
APPLY_FAILURES = Counter(
    "felix_dataplane_apply_failures", "Dataplane updates that failed (and were retried)"
)


def _kind(argv: list[str]) -> tuple[str, str] | None:
    """("iptables", "4"|"6") for any iptables-restore flavour, ("ipset", subcommand), or None."""
    name = os.path.basename(argv[0]) if argv else ""
    if name.endswith("-restore") and "tables" in name:
        return "iptables", "6" if name.startswith("ip6") else "4"
    if name == "ipset":
        return "ipset", argv[1] if len(argv) > 1 else ""
    return None


def _observe(argv: list[str], returncode: int, elapsed: float) -> None:
    """Log a command run at DEBUG; count and time it if it is an iptables-restore or ipset run."""
    log.debug("Ran %s: exit %d, %.1f ms", " ".join(argv[:4]), returncode, elapsed * 1e3)
    kind = _kind(argv)
    if kind is None:
        return
    tool, label = kind
    runs, failures, seconds = (
        (IPTABLES_RUNS, IPTABLES_FAILURES, IPTABLES_SECONDS)
        if tool == "iptables"
        else (IPSET_RUNS, IPSET_FAILURES, IPSET_SECONDS)
    )
    runs.labels(label).inc()
    seconds.labels(label).observe(elapsed)
    if returncode != 0:
        failures.labels(label).inc()


class MeteredRunner:
    """A CommandRunner that times iptables-restore and ipset runs and counts their failures."""

    def __init__(self, runner: CommandRunner) -> None:
        self._runner = runner

    def run(self, argv: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        result = self._runner.run(argv, input=input)
        _observe(argv, result.returncode, time.monotonic() - started)
        return result

    def run_pieces(
        self, argv: list[str], pieces: Iterable[str]
    ) -> subprocess.CompletedProcess[str]:
        # (timed whole: the input is made while the tool reads it, so the two overlap)
        started = time.monotonic()
        result = run_with_pieces(self._runner, argv, pieces)
        _observe(argv, result.returncode, time.monotonic() - started)
        return result

    def start_pieces(self, argv: list[str], pieces: Iterable[str]) -> Started:
        return _Metered(argv, time.monotonic(), start_with_pieces(self._runner, argv, pieces))

    @contextlib.contextmanager
    def stream(self, argv: list[str]) -> Iterator[Streamed]:
        started = time.monotonic()
        with output_lines(self._runner, argv) as streamed:
            _observe(argv, streamed.returncode, time.monotonic() - started)
            yield streamed

    def __repr__(self) -> str:
        return f"MeteredRunner({self._runner!r})"


class ConvergenceTimer:
    """Receive times of batches not yet programmed; observed once an apply succeeds."""

    def __init__(self) -> None:
        self._pending: list[float] = []

    def received(self, monotonic: float) -> None:
        self._pending.append(monotonic)

    def programmed(self, now: float) -> list[float]:
        """Observe (and return) the latency of every pending batch."""
        latencies = [max(0.0, now - t) for t in self._pending]
        for latency in latencies:
            CONVERGENCE_SECONDS.observe(latency)
        self._pending.clear()
        return latencies

    @property
    def pending(self) -> int:
        return len(self._pending)


def serve(port: int) -> bool:
    """Serve this process's default registry on 0.0.0.0:port (a daemon thread). A port in use
    is logged, not fatal: metrics must never stop the host being programmed. (Not shared with
    `calico.felix.metrics`: importing that here would put Felix's metrics in this registry.)"""
    try:
        start_http_server(port, addr="0.0.0.0")  # all addresses: Prometheus scrapes remotely
    except OSError as e:
        log.error("Cannot serve the dataplane driver's Prometheus metrics on port %d: %s", port, e)
        return False
    log.info("Serving the dataplane driver's Prometheus metrics on port %d", port)
    return True


class _Metered:
    """A command MeteredRunner started: timed from its start to when the caller collects it
    (which may be after it ended: an upper bound)."""

    def __init__(self, argv: list[str], started_at: float, started: Started) -> None:
        self._argv, self._started_at, self._started = argv, started_at, started

    def wait(self) -> subprocess.CompletedProcess[str]:
        result = self._started.wait()
        _observe(self._argv, result.returncode, time.monotonic() - self._started_at)
        return result
