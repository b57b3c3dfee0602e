"""Felix and its dataplane driver live and die together (felix.md §7.1): the driver exits when
Felix goes, and Felix exits with the restart status when the driver goes."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_felix_start import Lab

from calico.lab.etcd_server import EtcdServer
from calico.lab.felix import FelixProcess
from calico.lab.netns import NetNS


@pytest.fixture
def lab(etcd: EtcdServer, netns: Callable[[], NetNS], tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(etcd, netns(), tmp_path, "v2")
    try:
        yield lab
    finally:
        lab.close()


def _start(lab: Lab) -> tuple[FelixProcess, int]:
    lab.put("/calico/v1/Ready", "true")
    felix = lab.start()
    felix.wait_for("Dataplane programmed", timeout=30)
    match = re.search(r"Started the dataplane driver \(pid (\d+)\)", felix.text())
    assert match is not None
    return felix, int(match.group(1))


def _gone(pid: int, timeout: float = 10) -> bool:
    """True once the process has exited (a zombie waiting for its reaper counts as exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return True
        if "\nState:\tZ" in state:
            return True
        time.sleep(0.1)
    return False


def test_felix_exits_for_a_restart_when_the_driver_dies(lab: Lab) -> None:
    felix, driver_pid = _start(lab)
    os.kill(driver_pid, signal.SIGKILL)
    assert felix.wait_exit(15) == 1
    assert "the dataplane driver exited" in felix.text()


def test_driver_exits_when_felix_is_killed(lab: Lab) -> None:
    felix, driver_pid = _start(lab)
    felix.proc.kill()
    felix.proc.wait()
    assert _gone(driver_pid), "the driver outlived Felix"


def test_sigterm_stops_both(lab: Lab) -> None:
    felix, driver_pid = _start(lab)
    assert felix.stop() == 0
    assert _gone(driver_pid)
    assert "Felix closed the pipe; the dataplane driver stops" in felix.text()
