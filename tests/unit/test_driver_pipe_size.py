"""The pipe from Felix to its dataplane driver holds a burst: while the driver applies one
batch, Felix queues the next ones there instead of blocking after 64 KiB (Linux's default), which
split a burst of 500 new endpoints into more, smaller applies."""

from __future__ import annotations

import fcntl
import os
import sys
import tempfile
import time
from pathlib import Path

from calico.felix.driver.config import default_driver_config
from calico.felix.driver.connection import DriverProcess
from calico.felix.driver.pipe import PIPE_SIZE, widen_pipe


def host_limit() -> int:
    return int(Path("/proc/sys/fs/pipe-max-size").read_text())


def test_widen_pipe_sets_the_size() -> None:
    r, w = os.pipe()
    try:
        assert fcntl.fcntl(w, fcntl.F_GETPIPE_SZ) < PIPE_SIZE
        widen_pipe(w)
        assert fcntl.fcntl(r, fcntl.F_GETPIPE_SZ) == PIPE_SIZE
    finally:
        os.close(r)
        os.close(w)


def test_widen_pipe_never_raises_on_what_is_not_a_pipe() -> None:
    with tempfile.TemporaryFile() as f:
        widen_pipe(f.fileno())  # (logged; the caller goes on with what it has)


def test_the_driver_reads_from_a_widened_pipe() -> None:
    """Felix's side (DriverProcess) widens the pipe it starts the driver with: a stand-in
    driver reports the size of the pipe it reads from."""
    script = (
        "import fcntl, sys\n"
        "from calico.felix.driver.pipe import DriverFatal, FrameWriter\n"
        "fd = int(sys.argv[sys.argv.index('--from-felix') + 1])\n"
        "size = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)\n"
        "FrameWriter(int(sys.argv[sys.argv.index('--to-felix') + 1]))"
        ".send([DriverFatal(f'pipe size {size}')])\n"
        "sys.exit(1)\n"
    )
    reasons: list[str] = []
    process = DriverProcess(
        default_driver_config(), on_exit=reasons.append, argv=[sys.executable, "-c", script]
    )
    deadline = time.monotonic() + 10
    while not reasons and time.monotonic() < deadline:
        time.sleep(0.05)
    process.stop()
    expected = PIPE_SIZE if os.geteuid() == 0 else min(PIPE_SIZE, host_limit())  # (root: any)
    assert reasons == [f"the dataplane driver exited (status 1): pipe size {expected}"]
