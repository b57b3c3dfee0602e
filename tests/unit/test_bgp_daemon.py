"""calico-bgp's loop without etcd or BIRD (fakes of both), and its file writer with the real
`bird -p`: write only a changed text, reload only after a write (and once at start), keep the
file current and retry while BIRD is down, never retry a text BIRD refused, coalesce bursts,
exit 1 on a fatal syncer error; the atomic write keeps the old file when BIRD refuses the new
one; the `bird -p` helper dies with its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from calico.bgp import metrics
from calico.bgp.birdctl import BirdError, BirdUnavailable, ReplyLine
from calico.bgp.config_file import ConfigFile
from calico.bgp.daemon import EXIT_RESTART, EXIT_STOPPED, BgpDaemon
from calico.bgp.peers import LocalHost
from calico.bgp.render import RenderOptions

H = "/calico/bgp/v1/host"
ME = LocalHost("h1", "198.18.0.1", None)


class FakeFile:
    def __init__(self, text: str | None = None, refuse: bool = False):
        self.path = Path("/etc/bird/bird.conf")
        self.text = text
        self.refuse = refuse
        self.disk_full = False
        self.writes: list[str] = []

    def current(self) -> str | None:
        return self.text

    def write(self, text: str) -> str | None:
        if self.disk_full:
            raise OSError(28, "No space left on device")
        self.writes.append(text)
        if self.refuse:
            return "bird.conf:1:1 syntax error"
        self.text = text
        return None


class FakeBird:
    def __init__(self) -> None:
        self.down = False
        self.refuse = False
        self.reloads: list[str] = []

    def configure(self, path: str) -> str:
        if self.down:
            raise BirdUnavailable("no socket")
        if self.refuse:
            raise BirdError(8002, "bad file")
        self.reloads.append(path)
        return "Reconfigured"

    def show_protocols(self) -> list[ReplyLine]:
        if self.down:
            raise BirdUnavailable("no socket")
        return [ReplyLine(1002, "Mesh_198_18_0_2 BGP --- up 2026-01-01 00:00:00 Established")]


def daemon(file: FakeFile, bird: FakeBird) -> BgpDaemon:
    return BgpDaemon({}, ME, file, bird, RenderOptions(), settle=0.05, max_delay=0.5)  # type: ignore[arg-type]


def feed(d: BgpDaemon, hosts: int) -> None:
    d.on_updates([(f"{H}/h{i}/ip_addr_v4", f"198.18.0.{i}") for i in range(1, hosts + 1)])


def test_writes_and_reloads_only_when_the_text_changes() -> None:
    file, bird = FakeFile(), FakeBird()
    d = daemon(file, bird)
    feed(d, 2)
    d.apply()
    assert len(file.writes) == 1 and len(bird.reloads) == 1
    assert "Mesh_198_18_0_2" in file.writes[0]
    d.apply()
    d.on_updates([("/calico/v1/host/h9/config/X", "1"), (f"{H}/h2/ip_addr_v4", "198.18.0.2")])
    d.apply()
    assert len(file.writes) == 1 and len(bird.reloads) == 1  # nothing changed
    feed(d, 3)
    d.apply()
    assert len(file.writes) == 2 and len(bird.reloads) == 2


def test_one_reload_at_start_when_the_file_is_already_current() -> None:
    first = FakeFile()
    d = daemon(first, FakeBird())
    feed(d, 2)
    d.apply()
    file, bird = FakeFile(first.text), FakeBird()
    d = daemon(file, bird)
    feed(d, 2)
    d.apply()
    d.apply()
    assert file.writes == [] and len(bird.reloads) == 1


def test_bird_down_keeps_the_file_current_and_reloads_when_it_is_back() -> None:
    file, bird = FakeFile(), FakeBird()
    bird.down = True
    d = daemon(file, bird)
    feed(d, 2)
    d.apply()
    feed(d, 3)
    d.apply()
    assert len(file.writes) == 2 and "Mesh_198_18_0_3" in file.writes[-1]
    assert d.reload_pending and bird.reloads == []
    assert d.poll() is None and metrics.BIRD_UP._value.get() == 0
    bird.down = False
    protocols = d.poll()
    assert protocols is not None and len(bird.reloads) == 1 and not d.reload_pending
    assert metrics.BIRD_UP._value.get() == 1 and metrics.PEERS_ESTABLISHED._value.get() == 1


def test_a_refused_text_is_not_retried_and_counted() -> None:
    file, bird = FakeFile("old", refuse=True), FakeBird()
    d = daemon(file, bird)
    before = metrics.RENDER_FAILURES._value.get()
    feed(d, 2)
    d.apply()
    d.apply()
    assert len(file.writes) == 1 and file.text == "old"
    assert metrics.RENDER_FAILURES._value.get() == before + 1
    file.refuse = False
    feed(d, 3)
    d.apply()
    assert len(file.writes) == 2 and file.text is not None and "Mesh_198_18_0_3" in file.text


def test_a_write_that_fails_is_tried_again_at_the_next_poll() -> None:
    file, bird = FakeFile(), FakeBird()
    file.disk_full = True
    d = daemon(file, bird)
    feed(d, 2)
    d.apply()
    d.poll()
    assert file.writes == [] and bird.reloads == [] and d.retry_write
    file.disk_full = False
    d.poll()
    assert len(file.writes) == 1 and len(bird.reloads) == 1 and not d.retry_write


def test_a_reload_bird_refuses_is_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    file, bird = FakeFile(), FakeBird()
    bird.refuse = True
    d = daemon(file, bird)
    before = metrics.RELOAD_FAILURES._value.get()
    for hosts in (2, 3):
        feed(d, hosts)
        d.apply()
    assert metrics.RELOAD_FAILURES._value.get() == before + 2
    assert sum("BIRD refused to reload" in r.getMessage() for r in caplog.records) == 1


def test_hostile_keys_change_nothing_and_are_counted() -> None:
    file, bird = FakeFile(), FakeBird()
    d = daemon(file, bird)
    feed(d, 2)
    d.apply()
    d.on_updates([(f"{H}/h\n3/ip_addr_v4", "198.18.0.3"), (f"{H}/h4/ip_addr_v4", '1.2.3.4"')])
    d.apply()
    assert len(file.writes) == 1
    assert metrics.REFUSED_KEYS._value.get() == 2


def _run(d: BgpDaemon, stop: threading.Event) -> tuple[threading.Thread, list[int]]:
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(d.run(stop)), daemon=True)
    thread.start()
    return thread, result


def test_a_burst_of_changes_is_rendered_once() -> None:
    file, bird = FakeFile(), FakeBird()
    d = daemon(file, bird)
    stop = threading.Event()
    thread, result = _run(d, stop)
    try:
        for i in range(1, 60):
            d.on_updates([(f"{H}/h{i}/ip_addr_v4", f"198.18.0.{i}")])
        deadline = time.monotonic() + 5
        while not file.writes and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        assert len(file.writes) == 1 and "Mesh_198_18_0_59" in file.writes[0]
    finally:
        stop.set()
        thread.join(5)
    assert result == [EXIT_STOPPED]


def test_an_unexpected_error_is_logged_and_the_loop_carries_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    file, bird = FakeFile(), FakeBird()
    d = daemon(file, bird)
    calls = []

    def broken() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        BgpDaemon.apply(d)

    d.apply = broken  # type: ignore[method-assign]
    stop = threading.Event()
    thread, result = _run(d, stop)
    try:
        feed(d, 2)
        deadline = time.monotonic() + 5
        while len(calls) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        feed(d, 3)
        while not file.writes and time.monotonic() < deadline:
            time.sleep(0.01)
        assert file.writes and "Mesh_198_18_0_3" in file.writes[-1]
        assert any("failed to broken" in r.getMessage() for r in caplog.records)
    finally:
        stop.set()
        thread.join(5)
    assert result == [EXIT_STOPPED]


def test_a_fatal_syncer_error_exits_for_a_restart() -> None:
    d = daemon(FakeFile(), FakeBird())
    thread, result = _run(d, threading.Event())
    d.fatal("the etcd cluster ID changed")
    thread.join(5)
    assert result == [EXIT_RESTART]


# -- the real file writer and the bird -p helper ------------------------------------------------


def test_the_file_is_checked_then_replaced_keeping_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "bird.conf"
    path.write_text("# old\n")
    path.chmod(0o640)
    config = ConfigFile(str(path))
    assert config.write("router id 1.2.3.4;\nprotocol device {}\n") is None
    assert path.read_text().startswith("router id") and path.stat().st_mode & 0o777 == 0o640
    problem = config.write("router id 1.2.3.4;\nprotocol nonsense {}\n")
    assert problem is not None and "syntax error" in problem.lower()
    assert path.read_text().startswith("router id")  # the old file stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bird.conf"]  # no temporary left
    fresh = ConfigFile(str(tmp_path / "new" / "bird.conf"))
    assert fresh.write("router id 1.2.3.4;\nprotocol device {}\n") is None
    assert fresh.path.stat().st_mode & 0o777 == 0o644


def test_no_bird_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no-such-bird"):
        ConfigFile(str(tmp_path / "bird.conf"), bird="no-such-bird")


def test_the_check_helper_refuses_to_run_for_a_parent_that_is_gone(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "calico.bgp.check", "1", "/bin/true", "/dev/null"]
    assert subprocess.run(argv, check=False, timeout=30).returncode == 125


def test_the_check_helper_dies_with_its_parent(tmp_path: Path) -> None:
    slow_bird = tmp_path / "slow-bird"
    slow_bird.write_text("#!/bin/sh\nexec sleep 60\n")
    slow_bird.chmod(0o755)
    code = (
        "from pathlib import Path; from calico.bgp.config_file import ConfigFile; "
        f"ConfigFile('{tmp_path}/bird.conf', '{slow_bird}').check(Path('/dev/null'))"
    )
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        child = None
        deadline = time.monotonic() + 20
        while child is None and time.monotonic() < deadline:
            children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()
            for pid in children:
                if "sleep" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    child = int(pid)
            time.sleep(0.05)
        assert child is not None, "the helper never became bird (sleep)"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{child}").exists(), "the helper outlived calico-bgp"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
