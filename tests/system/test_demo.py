"""`make demo` is the README's first command: it must run to the end (under two minutes) with
every probe in the connectivity matrices agreeing with the policy (the demo exits non-zero
otherwise), and leave nothing behind when interrupted."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from calico.lab import demo
from calico.lab.netns import list_namespaces

DEMO = [sys.executable, "-m", "calico.lab.demo"]


def test_expected_matrix_follows_the_tier_and_profiles() -> None:
    before = demo.expected_matrix()
    after = demo.expected_matrix(quarantined=frozenset({"web-2"}))
    assert before[("ops-1", "db-1", "tcp/22")]  # the policy tier's allow
    assert not before[("web-1", "ops-1", "ping")]  # next-tier, then sg-ops accepts nothing
    assert before[("db-1", "web-1", "tcp/80")] and not before[("db-1", "web-1", "ping6")]
    assert before[("web-3", "db-1", "tcp/5432")] and not before[("web-3", "db-1", "tcp/80")]
    assert not after[("ops-1", "web-2", "tcp/22")]  # quarantine (order 1) wins
    changed = {k for k in before if before[k] != after[k]}
    assert changed and all("web-2" in k[:2] for k in changed)
    without = demo.expected_matrix([n for n in demo.ROLE if n != "web-3"])
    assert len(without) == 4 * 3 * len(demo.PROBES)
    assert {host for _, host, _, _ in demo.VMS} == {0, 1, 2}  # VMs on every host


def test_demo_runs_and_every_matrix_matches_the_policy() -> None:
    started = time.monotonic()
    proc = subprocess.run(DEMO, capture_output=True, text=True, timeout=300, check=False)
    took = time.monotonic() - started
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "(!)" not in out
    assert out.count("  leader") == 1  # three members, one leader
    assert out.count("| Established |") == 4  # compute-1's v4 and v6 sessions
    assert "compute-2: 4 of 4 sessions Established" in out
    assert "compute-3: 4 of 4 sessions Established" in out
    assert re.search(r"10\.65\.2\.1 +via 198\.18\.0\.2 +\(web-2 on compute-2\)", out)
    for host in ("compute-1", "compute-3"):
        assert f"the quarantine IP set on {host} (a far host):" in out
        assert f"out of the quarantine IP set on {host} (a far host):" in out
    assert "BIRD's route gone on compute-1" in out and "(10.65.3.2): no answer" in out
    assert re.search(r"demo\d leads [\d.]+ s later", out)
    assert out.count("every one of the 100 cells is what the policy says") == 2
    assert out.count("every one of the 60 cells is what the policy says") == 2
    assert "Cleaned up" in out
    assert took < 120, f"the demo took {took:.0f} s"


def _children(pid: int) -> dict[int, str]:
    """The direct children of ``pid`` and their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found[int(entry.name)] = cmdline
    return found


def _alive(pid: int, cmdline: str) -> bool:
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()) == cmdline
    except OSError:
        return False


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_demo_leaves_nothing_behind(tmp_path: Path, how: str) -> None:
    """Ctrl-C reaches every process of the terminal's foreground job (the daemons too); a
    SIGTERM reaches the demo alone, which must stop every daemon itself."""
    out_path = tmp_path / "demo.out"
    with open(out_path, "w") as out:
        # Its own process group, as a terminal's foreground job: Ctrl-C reaches every process.
        proc = subprocess.Popen(DEMO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "=== BGP sessions" not in out_path.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, out_path.read_text()
            time.sleep(0.1)
        daemons = _children(proc.pid)
        text = out_path.read_text()
        namespaces = set(re.findall(r"namespace (calt-[\w-]+)", text))
        assert len(namespaces) == 4 and len(daemons) >= 3 * 3 + 3, (text, daemons)
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "everything the demo made has been removed" in out_path.read_text()
    assert not namespaces & set(list_namespaces())
    assert not [pid for pid, cmdline in daemons.items() if _alive(pid, cmdline)]
