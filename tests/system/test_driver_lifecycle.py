"""Felix and its dataplane driver live and die together (felix.md §7.1): the driver exits when
Felix goes, and Felix exits with the restart status when the driver goes."""

from __future__ import annotations

import os
import re
import signal
import sys
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


def test_a_fatal_driver_error_reaches_felix_log_with_its_reason(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 12, item 5: the driver's reason for stopping must be in Felix's log, not only on
    the driver's stderr. The real driver's main() with a build() that fails, then Felix's side
    (DriverProcess) reading the report from a driver that says why it stops."""
    from calico.felix.driver import main as driver
    from calico.felix.driver.config import default_driver_config
    from calico.felix.driver.connection import DriverProcess
    from calico.felix.driver.pipe import DriverFatal, DriverInit, FrameReader, FrameWriter

    def broken_build(config: object) -> object:
        raise RuntimeError("cannot program: the kernel said no")

    monkeypatch.setattr(driver, "build", broken_build)
    monkeypatch.setattr(driver.logs, "configure", lambda **kwargs: [])
    to_driver_r, to_driver_w = os.pipe()
    from_driver_r, from_driver_w = os.pipe()
    FrameWriter(to_driver_w).send([DriverInit(default_driver_config())])
    argv = ["--from-felix", str(to_driver_r), "--to-felix", str(from_driver_w)]
    assert driver.main(argv) == driver.EXIT_FATAL
    frames = FrameReader(from_driver_r).read()
    assert frames and isinstance(frames[0][0], DriverFatal)
    assert "the kernel said no" in frames[0][0].reason
    for fd in (to_driver_r, to_driver_w, from_driver_r, from_driver_w):
        os.close(fd)

    script = (
        "import sys\n"
        "from calico.felix.driver.pipe import DriverFatal, FrameWriter\n"
        "FrameWriter(int(sys.argv[sys.argv.index('--to-felix') + 1]))"
        ".send([DriverFatal('MetadataAddr is bad')])\n"
        "sys.exit(1)\n"
    )
    reasons: list[str] = []
    argv = [sys.executable, "-c", script]
    process = DriverProcess(default_driver_config(), on_exit=reasons.append, argv=argv)
    deadline = time.monotonic() + 10
    while not reasons and time.monotonic() < deadline:
        time.sleep(0.05)
    process.stop()
    assert reasons == ["the dataplane driver exited (status 1): MetadataAddr is bad"]
    assert "The dataplane driver failed: MetadataAddr is bad" in caplog.text


def _drivers_in(namespace: str) -> list[int]:
    """PIDs of dataplane drivers running in the named network namespace."""
    netns_inode = os.stat(f"/run/netns/{namespace}").st_ino
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            inode = os.stat(entry / "ns" / "net").st_ino
            state = (entry / "status").read_text()
        except OSError:
            continue  # gone meanwhile, or not ours to look at
        if b"calico.felix.driver" in cmdline and inode == netns_inode:
            if "\nState:\tZ" not in state:
                found.append(int(entry.name))
    return found


def test_a_crashed_felix_leaves_no_driver_and_a_restart_runs_exactly_one(lab: Lab) -> None:
    """Issue 19: Felix killed while its driver is not reading the pipe (stopped here, as if
    busy programming) must not leave that driver acting on stale state: it dies with Felix.
    After a restart exactly one driver runs, the new Felix's."""
    felix, driver_pid = _start(lab)
    os.kill(driver_pid, signal.SIGSTOP)  # it cannot notice the pipe closing now
    felix.proc.kill()
    felix.proc.wait()
    assert _gone(driver_pid, 5), "the driver outlived a killed Felix"
    again = lab.start()
    again.wait_for("Dataplane programmed", timeout=30)
    drivers = _drivers_in(lab.ns.name)
    assert len(drivers) == 1, drivers
    assert Path(f"/proc/{drivers[0]}/status").read_text().count(f"PPid:\t{again.proc.pid}\n")
