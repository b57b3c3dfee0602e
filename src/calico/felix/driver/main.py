"""The dataplane driver process: reads calc messages from Felix and programs the kernel.

Started by Felix (`connection.DriverProcess`) as
`python -m calico.felix.driver.main --from-felix FD --to-felix FD --felix-pid PID`; it is
killed when Felix dies (`calico.common.children`), so a crashed Felix never leaves a driver
programming stale state, and a restarted one never finds two. One thread, one loop:
`select()` on Felix's pipe and the netlink interface watcher, with timers for the iptables refresh
(IptablesRefreshInterval, jittered +0-20 %), the interface re-scan (HostInterfacePollInterval: a
full listing of links and addresses that repairs any netlink event the kernel dropped or we
missed), the start-of-day cleanup (StartupCleanupDelay after the first in-sync) and retries after
a failed apply (exponential backoff, capped). End of file on Felix's pipe means Felix has gone:
the driver exits. Any unexpected exception also ends the process, and Felix, seeing the pipe
close, exits for the service manager to restart both.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import select
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from calico.common import logs
from calico.common.children import die_with_parent
from calico.common.quoting import quoted
from calico.felix.calc import messages as m
from calico.felix.dataplane.manager import DataplaneManager, KernelTables
from calico.felix.dataplane.rendering import RenderConfig, is_ipv4
from calico.felix.driver import metrics
from calico.felix.driver.pipe import (
    BatchReceived,
    DriverFatal,
    DriverInit,
    DriverReady,
    EndpointStatusReport,
    FrameReader,
    FrameWriter,
)
from calico.felix.kernel.commands import LocalRunner
from calico.felix.kernel.ipsets import IpsetError, IpsetTable
from calico.felix.kernel.iptables import IptablesError, IptablesTable, nft_generation, uses_nft
from calico.felix.kernel.neighbours import ProxyNdpTable
from calico.felix.kernel.routes import RouteTable, open_netlink
from calico.felix.kernel.sysctls import LooseRPFError, ProcSysctlWriter, configure_global
from calico.felix.kernel.watcher import InterfaceWatcher

log = logging.getLogger("calico.felix.dataplane")

PROG = "calico-felix-dataplane"
RETRY_MIN_SECS = 0.1
RETRY_MAX_SECS = 10.0
# How often a MetadataAddr host name is resolved again: while it does not resolve, and after
# that to follow a change of address (Felix 1.4 resolved it once, at start).
RESOLVE_RETRY_SECS = 10.0
RESOLVE_REFRESH_SECS = 300.0
RESOLVE_FIRST_WAIT_SECS = 2.0
EXIT_FELIX_GONE = 0
EXIT_FATAL = 1
_APPLY_ERRORS = (IptablesError, IpsetError, OSError)


def ipv6_available() -> bool:
    return os.path.exists("/proc/net/if_inet6") and shutil.which("ip6tables-restore") is not None


def next_interface_poll(now: float, interval: float) -> float | None:
    """When to re-scan interfaces next: `interval` s from `now`; None (never) if it is 0 or less.

    Netlink events are the fast path; this poll only repairs a missed event, so no jitter."""
    return None if interval <= 0 else now + interval


def resolve_ipv4(name: str) -> str | None:
    """The first IPv4 address of host `name`, or None (logged) if it does not resolve now."""
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        log.error(
            "MetadataAddr %s does not resolve to an IPv4 address (%s); no metadata NAT until it "
            "does (retried every %.0f s)",
            quoted(name),
            e,
            RESOLVE_RETRY_SECS,
        )
        return None
    return str(infos[0][4][0])


class MetadataResolver:
    """Resolves a MetadataAddr host name in a thread of its own, now and then: a DNS server
    that does not answer must never stall the dataplane loop. `address` is the latest answer
    (None until one came); a failure keeps the last good one."""

    def __init__(self, name: str, resolve: Callable[[str], str | None] = resolve_ipv4) -> None:
        self.name = name
        self._resolve = resolve
        self.address: str | None = None
        self._first = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metadata-resolver", daemon=True)
        self._thread.start()

    def wait_first(self, timeout: float) -> str | None:
        self._first.wait(timeout)
        return self.address

    def _run(self) -> None:
        while True:
            address = self._resolve(self.name)
            if address is not None:
                self.address = address  # one reference assignment: atomic for the reader
            self._first.set()
            time.sleep(RESOLVE_RETRY_SECS if self.address is None else RESOLVE_REFRESH_SECS)


def ip_versions(ipv6_support: bool | str) -> tuple[int, ...]:
    """Ipv6Support: True, False, or "auto" (on when the host has IPv6 and ip6tables)."""
    if ipv6_support is True or (ipv6_support == "auto" and ipv6_available()):
        return (4, 6)
    return (4,)


class DriverLoop:
    def __init__(
        self,
        config: Mapping[str, Any],
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
        self._report_statuses = bool(config.get("EndpointReportingEnabled", False))
        self._sent_statuses: dict[Any, str] = {}

    def _next_refresh(self, now: float) -> float | None:
        interval = float(self._config["IptablesRefreshInterval"])
        return None if interval <= 0 else now + interval * (1 + random.random() * 0.2)  # noqa: S311

    def _next_poll(self, now: float) -> float | None:
        if self._watcher is None:
            return None
        return next_interface_poll(now, float(self._config["HostInterfacePollInterval"]))

    def run(self) -> int:
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
            deadlines = [t for t in timers if t]
            timeout = max(0.0, min(deadlines) - now) if deadlines else None
            sources: list[Any] = [self._reader]
            if self._watcher is not None:
                sources.append(self._watcher)
            readable, _, _ = select.select(sources, [], [], timeout)
            if self._reader in readable and not self._read_from_felix():
                log.info("Felix closed the pipe; the dataplane driver stops")
                return EXIT_FELIX_GONE
            if self._watcher is not None and self._watcher in readable:
                self._watcher.read_events()
                self._dirty = True

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
        if self._dirty and (self._retry_at is None or now >= self._retry_at):
            applied = self._guarded(self._manager.apply)
            self._dirty = not applied
            self._after_apply(applied)
        if self._manager.in_sync and not self._dirty and not self._reported_ready:
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
        delay = float(self._config["StartupCleanupDelay"])
        self._cleanup_at = now + delay


def build(
    config: Mapping[str, Any],
) -> tuple[DataplaneManager, InterfaceWatcher, MetadataResolver | None]:
    metadata = config.get("MetadataAddr")
    resolver = MetadataResolver(metadata) if metadata and not is_ipv4(metadata) else None
    # Wait a little for the first answer, so that a name that resolves is programmed at once.
    render = RenderConfig.from_config(
        config, lambda name: resolver.wait_first(RESOLVE_FIRST_WAIT_SECS) if resolver else None
    )
    runner = metrics.MeteredRunner(LocalRunner())
    versions = ip_versions(config["Ipv6Support"])
    ipr = open_netlink()
    prefixes = tuple(config["InterfacePrefix"])
    # On iptables-nft (the tables are in this process's namespace) a refresh can tell from the
    # nf_tables generation that nothing changed, and skip reading the tables.
    generations = {v: nft_generation if uses_nft(v, LocalRunner()) else None for v in versions}
    kernel = KernelTables(
        versions,
        lambda v, t: IptablesTable(v, t, runner, generation=generations[v]),
        lambda v: IpsetTable(v, runner, max_size=int(config["MaxIpsetSize"])),
        lambda v: RouteTable(v, ipr, prefixes, conntrack_runner=runner),
        lambda: ProxyNdpTable(runner, prefixes),
    )
    sysctls = ProcSysctlWriter()
    for v in versions:
        configure_global(v, sysctls, bool(config["IgnoreLooseRPF"]), runner)
    manager = DataplaneManager(render, kernel, sysctls, runner)
    watcher = InterfaceWatcher(manager)
    watcher.snapshot()
    log.info("Dataplane driver ready: IP versions %s, interface prefixes %s", versions, prefixes)
    return manager, watcher, resolver


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--from-felix", type=int, required=True, help="fd of Felix's messages")
    parser.add_argument("--to-felix", type=int, required=True, help="fd for reports to Felix")
    parser.add_argument("--felix-pid", type=int, help="exit when this parent process dies")
    args = parser.parse_args(argv)
    # A Felix that crashes must not leave its driver programming stale state, nor a restarted
    # Felix find two drivers: SIGKILL when Felix dies (every kernel write is one transaction,
    # so there is nothing to finish). Felix's end of the pipe closing ends it too, but only
    # once it reads the pipe again.
    if args.felix_pid is not None and not die_with_parent(signal.SIGKILL, args.felix_pid):
        return EXIT_FELIX_GONE
    logs.configure_early(os.environ, "FELIX_LOGSEVERITYSCREEN", sys.stderr)
    reader, writer = FrameReader(args.from_felix), FrameWriter(args.to_felix)
    first = reader.read()
    while first == []:
        first = reader.read()
    if not first or not first[0] or not isinstance(first[0][0], DriverInit):
        log.critical("Felix did not start with its configuration; exiting")
        return EXIT_FATAL
    init: DriverInit = first[0][0]
    config = init.config
    logs.configure(
        program=PROG,
        screen=config["LogSeverityScreen"],
        file_path=config["LogFilePath"],
        file_level=config["LogSeverityFile"],
        syslog_level=config["LogSeveritySys"],
    )
    try:
        if config.get("PrometheusMetricsEnabled"):
            metrics.serve(int(config["DataplaneDriverPrometheusMetricsPort"]))
        manager, watcher, resolver = build(config)
    except LooseRPFError as e:
        return _fatal(writer, str(e))
    except Exception as e:
        log.exception("The dataplane driver cannot start")
        return _fatal(writer, f"cannot start: {type(e).__name__}: {e}")
    loop = DriverLoop(config, reader, writer, manager, watcher, resolver)
    try:
        loop.feed([first[0][1:], *first[1:]])
        return loop.run()
    except BrokenPipeError:
        log.info("Felix closed the pipe; the dataplane driver stops")
        return EXIT_FELIX_GONE
    except Exception as e:
        log.exception("The dataplane driver failed")
        return _fatal(writer, f"{type(e).__name__}: {e}")
    finally:
        watcher.close()


def _fatal(writer: FrameWriter, reason: str) -> int:
    """Tell Felix why we stop (so the reason is in its log, not only on our stderr); exit."""
    log.critical("%s", reason)
    try:
        writer.send([DriverFatal(reason)])
    except OSError:
        pass  # Felix has gone already
    return EXIT_FATAL


if __name__ == "__main__":
    sys.exit(main())
