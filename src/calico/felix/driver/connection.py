"""Felix's end of the dataplane driver: start the child process, feed it, watch it die.

`DriverProcess.send()` is the daemon's `Dataplane`. A monitor thread reads the driver's reports
(`pipe.DriverReady`, `pipe.EndpointStatusReport`) and hands each to `on_report` (the status
reporter); when the driver's pipe closes or the process exits,
`on_exit(reason)` is called once, and the daemon exits so that the service manager restarts
both processes.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from calico.felix.calc import messages as m
from calico.felix.driver.config import DriverConfig
from calico.felix.driver.pipe import (
    BatchReceived,
    DataplaneGone,
    DriverFatal,
    DriverInit,
    DriverReady,
    FrameReader,
    FrameWriter,
    widen_pipe,
)

log = logging.getLogger(__name__)

STOP_TIMEOUT_SECS = 4.0  # after closing its pipe, before SIGTERM (then SIGKILL)


class DriverProcess:
    def __init__(
        self,
        config: DriverConfig,
        on_exit: Callable[[str], None],
        argv: list[str] | None = None,
        on_report: Callable[[Any], None] | None = None,
    ) -> None:
        self._on_exit = on_exit
        self._on_report = on_report
        self._stopping = threading.Event()
        to_driver_r, to_driver_w = os.pipe()
        widen_pipe(to_driver_w)
        from_driver_r, from_driver_w = os.pipe()
        command = argv or [sys.executable, "-m", "calico.felix.driver"]
        command += ["--from-felix", str(to_driver_r), "--to-felix", str(from_driver_w)]
        command += ["--felix-pid", str(os.getpid())]  # it dies with us (calico.common.children)
        self._proc = subprocess.Popen(command, pass_fds=(to_driver_r, from_driver_w))
        os.close(to_driver_r)
        os.close(from_driver_w)
        self._writer = FrameWriter(to_driver_w)
        self._reader = FrameReader(from_driver_r)
        self._lock = threading.Lock()
        log.info("Started the dataplane driver (pid %d)", self._proc.pid)
        self.send([DriverInit(config)])  # type: ignore[list-item]
        self._monitor = threading.Thread(target=self._watch, name="driver-monitor", daemon=True)
        self._monitor.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def send(self, messages: list[m.Message], received_at: float | None = None) -> None:
        """received_at: time.monotonic() when Felix received the updates behind these messages
        (the driver measures convergence latency from it)."""
        batch: list[Any] = list(messages)
        if received_at is not None:
            batch.insert(0, BatchReceived(received_at))
        try:
            with self._lock:
                self._writer.send(batch)
        except (BrokenPipeError, OSError) as e:
            raise DataplaneGone(f"cannot write to the dataplane driver: {e}") from e

    def _watch(self) -> None:
        fatal = ""
        try:
            while (frames := self._reader.read()) is not None:
                for batch in frames:
                    for report in batch:
                        if isinstance(report, DriverReady):
                            log.debug("Dataplane driver programmed the first in-sync state")
                        if isinstance(report, DriverFatal):
                            fatal = f": {report.reason}"
                            log.error("The dataplane driver failed: %s", report.reason)
                            continue
                        if self._on_report is not None:
                            self._on_report(report)
        except OSError as e:
            log.warning("Reading from the dataplane driver failed: %s", e)
        code = self._proc.wait()
        if not self._stopping.is_set():
            self._on_exit(f"the dataplane driver exited (status {code}){fatal}")

    def stop(self) -> int:
        """Close the driver's pipe (it exits on end of file); escalate if it lingers."""
        self._stopping.set()
        with self._lock:
            self._writer.close()
        try:
            return self._proc.wait(STOP_TIMEOUT_SECS)
        except subprocess.TimeoutExpired:
            log.warning("Dataplane driver did not stop; terminating it")
            self._proc.terminate()
            try:
                return self._proc.wait(STOP_TIMEOUT_SECS)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                return self._proc.wait()
