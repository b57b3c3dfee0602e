"""Watching a lab cloud without polling: when a route appeared in or left a namespace's kernel
(:class:`RouteMonitor`, ``ip -ts monitor route``), and when a stream of pings was answered
(:class:`PingStream`, ``ping -D``). Both record wall-clock times (``time.time()``), so they can
be compared with the moment an etcd write was sent.

Each runs one process inside a lab namespace, its output in a file; ``stop()`` (or the
namespace's deletion) ends it by PID.
"""

from __future__ import annotations

import datetime
import re
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from calico.lab.netns import NetNS

_MONITOR_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\dT[\d:.]+)\] (Deleted )?(\S+) (.*)$")
_REPLY_LINE = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)")
_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")


class _Background:
    """A process in a namespace writing to a temporary file."""

    def __init__(self, ns: NetNS, argv: list[str], prefix: str):
        self._tmp = tempfile.NamedTemporaryFile(prefix=prefix, suffix=".out", delete=False)
        self.path = Path(self._tmp.name)
        self.proc: subprocess.Popen[bytes] = ns.popen(
            argv, stdout=self._tmp, stderr=subprocess.STDOUT
        )

    def text(self) -> str:
        return self.path.read_text(errors="replace")

    def stop(self, signum: signal.Signals = signal.SIGINT) -> None:
        """End the process (SIGINT: ping prints its summary), by its PID."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._tmp.close()

    def close(self) -> None:
        self.stop()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Any:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True)
class RouteEvent:
    at: float  # time.time()
    deleted: bool
    dst: str
    rest: str  # the rest of the line: "via ... dev ... proto bird ..."


class RouteMonitor(_Background):
    """Every route change in ``ns``'s kernel from now on, with its time."""

    def __init__(self, ns: NetNS):
        super().__init__(ns, ["ip", "-ts", "monitor", "route"], "calico-routes-")
        # `ip monitor` subscribes before it prints anything; give it a moment to be there.
        time.sleep(0.05)

    def events(self) -> list[RouteEvent]:
        found = []
        for line in self.text().splitlines():
            if match := _MONITOR_LINE.match(line):
                stamp = datetime.datetime.fromisoformat(match.group(1)).timestamp()
                found.append(
                    RouteEvent(stamp, bool(match.group(2)), match.group(3), match.group(4))
                )
        return found

    def first(self, dst: str, deleted: bool = False, proto: str | None = None) -> float | None:
        """When a route to ``dst`` (without prefix length for a host route) was first added
        (or deleted), optionally only one with ``proto``; None if not (yet)."""
        for event in self.events():
            if event.dst == dst and event.deleted == deleted:
                if proto is None or f"proto {proto} " in event.rest + " ":
                    return event.at
        return None

    def wait_first(
        self, dst: str, deleted: bool = False, proto: str | None = None, timeout: float = 10.0
    ) -> float:
        deadline = time.monotonic() + timeout
        while (at := self.first(dst, deleted, proto)) is None:
            if time.monotonic() > deadline:
                what = "deletion" if deleted else "route"
                raise AssertionError(f"no {what} to {dst} within {timeout} s:\n{self.text()}")
            time.sleep(0.01)
        return at


class PingStream(_Background):
    """``ping -D -i <interval>`` from ``ns`` to ``addr`` until stopped (or ``count`` sent)."""

    def __init__(
        self, ns: NetNS, addr: str, interval: float = 0.1, count: int | None = None
    ) -> None:
        argv = ["ping", "-6" if ":" in addr else "-4", "-D", "-n", "-i", f"{interval:g}"]
        argv += ["-W", "1", *(["-c", str(count)] if count else []), addr]
        super().__init__(ns, argv, "calico-ping-")

    def replies(self) -> list[float]:
        """When each reply came (time.time()), in order."""
        return [
            float(match.group(1))
            for line in self.text().splitlines()
            if (match := _REPLY_LINE.match(line))
        ]

    def first_reply(self) -> float | None:
        replies = self.replies()
        return replies[0] if replies else None

    def finish(self, timeout: float = 60.0) -> tuple[int, int]:
        """Wait for a counted stream to end (or stop an endless one): (sent, answered)."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        self.stop()
        match = _SUMMARY.search(self.text())
        if match is None:
            raise AssertionError(f"no ping summary:\n{self.text()[-2000:]}")
        return int(match.group(1)), int(match.group(2))
