"""Felix ↔ dataplane driver transport: framed batches of messages over a pair of OS pipes.

Felix starts the driver as a child process and passes it two extra file descriptors, as Felix
2.0 did (felix.md §7.1): fd 3 carries batches from Felix to the driver, fd 4 carries the
driver's reports back. Each frame is an 8-byte little-endian length followed by a pickled list
of messages (`calc.messages` values, plus `DriverInit` as the very first frame).

Why pickle: both ends are this package, the pipes are private to the two processes, and the
messages are frozen dataclasses, so pickle carries them exactly with no schema to keep in sync.
Nothing from outside the host ever reaches these pipes.

Either side seeing end-of-file knows the other has gone and exits: the service manager then
restarts Felix, which restarts the driver.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pickle
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from calico.felix.driver.config import DriverConfig

log = logging.getLogger(__name__)

HEADER = struct.Struct("<Q")
TO_DRIVER_FD = 3
FROM_DRIVER_FD = 4
_READ_SIZE = 1 << 20


class DataplaneGone(RuntimeError):
    """The dataplane cannot take messages any more (its process died)."""


@dataclass(frozen=True)
class DriverInit:
    """First frame to the driver: the part of Felix's configuration it uses, typed."""

    config: DriverConfig


@dataclass(frozen=True)
class DriverReady:
    """Report from the driver: the first in-sync state has been programmed into the kernel."""

    seconds_since_in_sync: float


@dataclass(frozen=True)
class DriverFatal:
    """Report from the driver, just before it exits on an error it cannot handle: the reason,
    so that it reaches Felix's log (the driver's own stderr may go nowhere)."""

    reason: str


@dataclass(frozen=True)
class BatchReceived:
    """First message of a frame to the driver, when the frame comes from datastore updates: the
    `time.monotonic()` at which Felix received the oldest of them. CLOCK_MONOTONIC is
    system-wide, so the driver measures convergence latency (received → programmed) with its
    own clock."""

    monotonic: float


@dataclass(frozen=True)
class EndpointStatusReport:
    """Report from the driver: endpoints whose oper status changed since the last report.
    Keys are `WorkloadEndpointKey`/`HostEndpointKey`; the value is "up", "down", "error", or
    None when the endpoint is gone (felix.md §5.12)."""

    statuses: Mapping[Any, str | None]


class FrameWriter:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def send(self, batch: list[Any]) -> None:
        """Write one frame (blocking until the pipe takes it all). Its header and its payload
        are written one after the other: joining them copied the payload, and the first
        in-sync batch's is megabytes (Felix's memory peak at 1,000 endpoints)."""
        payload = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
        self._write_all(HEADER.pack(len(payload)))
        self._write_all(payload)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# What the pipe to the driver holds (F_SETPIPE_SZ; Linux's default is 64 KiB). While the driver
# applies one batch, Felix queues the next ones there; with 64 KiB it blocked after ~130 new
# endpoints of a burst, and the driver then took the rest in several more applies.
PIPE_SIZE = 1 << 20
_DEFAULT_PIPE_SIZE = 1 << 16  # (Linux's: no smaller size is worth asking for)


def widen_pipe(fd: int, size: int = PIPE_SIZE) -> None:
    """Let the pipe `fd` hold `size` bytes, or the most below that the host allows (without
    root, fs.pipe-max-size); best effort: a smaller pipe only means more, smaller applies."""
    while size > _DEFAULT_PIPE_SIZE:
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
            return
        except OSError:
            size //= 2
    log.debug("Cannot widen the pipe to the dataplane driver; keeping its size")


class FrameReader:
    """Reads frames from a pipe fd; `read()` blocks for at least one read and returns every frame
    completed so far, or None at end of file."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()

    def fileno(self) -> int:
        return self._fd

    def read(self) -> list[list[Any]] | None:
        chunk = os.read(self._fd, _READ_SIZE)
        if not chunk:
            return None
        self._buffer += chunk
        return self._complete_frames()

    def _complete_frames(self) -> list[list[Any]]:
        frames: list[list[Any]] = []
        offset = 0
        buffer = self._buffer
        while len(buffer) - offset >= HEADER.size:
            (length,) = HEADER.unpack_from(buffer, offset)
            end = offset + HEADER.size + length
            if len(buffer) < end:
                break
            frames.append(pickle.loads(buffer[offset + HEADER.size : end]))  # noqa: S301 (see module doc)
            offset = end
        del buffer[:offset]
        return frames

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
