"""`make demo` is the README's first command: it must run to the end with every probe in the
connectivity matrix agreeing with the policy (the demo exits non-zero otherwise)."""

from __future__ import annotations

import subprocess
import sys

from calico.lab import demo


def test_expected_matrix_follows_the_tier_and_profiles() -> None:
    before = demo.expected_matrix()
    after = demo.expected_matrix(frozenset({"web-2"}))
    assert before[("ops-1", "db-1", "tcp/22")]  # the policy tier's allow
    assert not before[("web-1", "ops-1", "ping")]  # next-tier, then sg-ops accepts nothing
    assert before[("db-1", "web-1", "tcp/80")] and not before[("db-1", "web-1", "ping")]
    assert not after[("ops-1", "web-2", "tcp/22")]  # quarantine (order 1) wins
    changed = {k for k in before if before[k] != after[k]}
    assert changed and all("web-2" in k[:2] for k in changed)


def test_demo_runs_and_the_matrix_matches_the_policy() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "calico.lab.demo"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "(!)" not in out
    assert "etcd write -> iptables in the kernel:" in out
    assert "web-1 -> web-2 over IPv6: allowed" in out
    assert "felix exited with status 1" in out
    assert "Cleaned up" in out
