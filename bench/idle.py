"""Benchmark: what calico-felix costs when nothing changes.

The dataplane benchmark's lab (bench/dataplane.py: N local endpoints, default 1,000, plus
10,000 remote endpoints, 200 profiles, 100 policies in a private etcd), Felix started with
its default timers (status reports every 30 s, iptables refresh every 60 s), programmed, past
its start-of-day cleanup; then sampled once a second for --seconds with no datastore change:

* CPU % of one core, of Felix and of its dataplane driver, each counting the CPU of the
  children it has reaped (iptables-save/restore, ipset) in the window;
* RSS (VmRSS) of both, largest sample and mean, and their sum.

Targets (issue 7): CPU under 2 % of one core; RSS under 200 MB for both processes together.

Run as root: `.venv/bin/python bench/idle.py [--local N] [--seconds S] [--json F]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import report

import dataplane

TICK = os.sysconf("SC_CLK_TCK")


def cpu_with_children(pid: int) -> float:
    """utime + stime + cutime + cstime, in seconds (children: the reaped ones)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(fields[k]) for k in (11, 12, 13, 14)) / TICK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def felix_and_driver(felix_pid: int) -> dict[str, int]:
    """Felix (``ip netns exec`` execs it in place: the PID we started) and its driver child.

    Only direct children are looked at, and only for the driver's own command line: a child
    caught between fork and exec still shows its parent's command line, so a deeper search
    can pick a short-lived iptables-restore on its way to exec.
    """
    for child in dataplane.children(felix_pid):
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        if "calico.felix.driver" in cmdline:
            return {"felix": felix_pid, "driver": child}
    raise RuntimeError("calico-felix has no dataplane driver child")


def sample(procs: dict[str, int], seconds: float) -> dict[str, dict[str, float]]:
    """CPU % over the window and RSS once a second, per process."""
    cpu_start = {name: cpu_with_children(pid) for name, pid in procs.items()}
    rss: dict[str, list[float]] = {name: [] for name in procs}
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        for name, pid in procs.items():
            rss[name].append(rss_mb(pid))
        time.sleep(1.0)
    elapsed = time.monotonic() - started
    return {
        name: {
            "cpu_percent": round((cpu_with_children(pid) - cpu_start[name]) / elapsed * 100, 2),
            "rss_mb_max": round(max(rss[name]), 1),
            "rss_mb_mean": round(statistics.mean(rss[name]), 1),
        }
        for name, pid in procs.items()
    }


def run(local: int, seconds: float, refresh: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="calico-bench-") as tmp:
        with dataplane.lab(local, Path(tmp)) as (_etcd, host, info):
            dataplane.progress("starting calico-felix")
            felix = host.start_felix(
                # Default 60 (the lab's is 5 s, for tests): a refresh is part of the idle cost.
                FELIX_IPTABLESREFRESHINTERVAL=str(refresh),
                FELIX_STARTUPCLEANUPDELAY=str(dataplane.CLEANUP_DELAY),
                FELIX_LOGSEVERITYFILE="none",
                FELIX_LOGFILEPATH="none",
            )
            felix.wait_for("Dataplane programmed", timeout=600)
            felix.wait_for("Start-of-day cleanup done", timeout=dataplane.CLEANUP_DELAY + 120)
            procs = felix_and_driver(felix.proc.pid)
            dataplane.progress(f"sampling {sorted(procs)} for {seconds:.0f} s")
            try:
                per_process = sample(procs, seconds)
            except FileNotFoundError:
                # A process went away while idle: that is a crash, and its output says why.
                raise RuntimeError(f"Felix or its driver exited:\n{felix.text()[-3000:]}") from None
            felix.stop()
    return {
        "local_endpoints": local,
        "remote_endpoints": dataplane.REMOTE,
        "keys": info["keys"],
        "seconds": seconds,
        "iptables_refresh_interval_s": refresh,
        "processes": per_process,
        "cpu_percent_total": round(sum(p["cpu_percent"] for p in per_process.values()), 2),
        "rss_mb_total_max": round(sum(p["rss_mb_max"] for p in per_process.values()), 1),
        "targets": {"cpu_percent_total": 2.0, "rss_mb_total_max": 200.0},
        **report.environment(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local", type=int, default=1000, help="local endpoints")
    parser.add_argument("--seconds", type=float, default=60.0, help="sampling window")
    parser.add_argument(
        "--refresh-interval", type=int, default=60, help="Felix IptablesRefreshInterval (0: off)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    report.emit(run(args.local, args.seconds, args.refresh_interval), args.json)


if __name__ == "__main__":
    main()
