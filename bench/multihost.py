"""Benchmark: many compute hosts on one machine (issue 14, "Performance").

Every host is a lab namespace on a fabric bridge (calico.lab.cloud) running real BIRD 2,
calico-bgp and (where said) calico-felix, against a private three-member etcd cluster on
loopback; nothing touches the root namespace. Three parts:

* convergence: two compute hosts A and B, each with Felix. A VM on A (its TAP already there, as
  Nova plugs it) gets its endpoint written to etcd; a `ping -D -i 0.002` from a VM on B has
  been running at it since before the write. Times from the start of the write to Felix's
  route in A's kernel, BIRD's route in B's kernel (`ip -ts monitor route` in each, no polling)
  and the first echo reply at B; then the endpoint is deleted and the withdrawal from B timed.
  The gap between A's route and B's says whether BIRD learns kernel routes at once (netlink)
  or at its next scan (`scan time 2`).
* scale (bench/multihost_scale.py): 1,000 VMs per host on three hosts, every route installed
  everywhere, twice: TAP-like interfaces with `proto 80` routes added in one `ip -batch` per
  host (BGP alone), and 1,000 endpoints per host written to etcd for each host's Felix to
  program (the whole path); the time, and BIRD's memory.
* cloud (bench/multihost_scale.py): ten compute hosts behind two route reflectors, each host a
  Felix and a BIRD: one VM added on one host, timed until every other host's VM gets an echo
  reply from it (median and p99 over the samples); then an eleventh host joins and is timed
  until it has every route; sessions, etcd connections, memory and CPU of each kind of daemon.

Run as root: `.venv/bin/python bench/multihost.py [--quick] [--json F]` (or only some parts:
`--parts convergence,scale,cloud`). Check the load first (`uptime`): it is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import report

from calico.lab.cloud import Cloud
from calico.lab.etcd_cluster import EtcdCluster
from calico.lab.fabric import FabricHost
from calico.lab.watch import PingStream, RouteMonitor

OPEN = {"inbound_rules": [{"action": "allow"}], "outbound_rules": [{"action": "allow"}]}
PING_INTERVAL = 0.002  # seconds between echo requests of a reachability probe
SAMPLE_TIMEOUT = 30.0
# Calmer than the lab's 1 s (calico-bgp's default is 5 s): many calico-bgps share two cores.
BGP_ARGS = ["--poll-interval", "5"]


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def summary(samples_s: Sequence[float]) -> dict[str, float | int]:
    """Median, p99 (nearest rank), min and max of a list of seconds, in milliseconds, and how
    many samples took over half a second."""
    ordered = sorted(samples_s)
    if not ordered:
        return {"count": 0}
    p99 = ordered[max(0, -(-len(ordered) * 99 // 100) - 1)]
    return {
        "count": len(ordered),
        "median_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
        "min_ms": round(ordered[0] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
        "over_500ms": sum(x > 0.5 for x in ordered),
    }


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages (other work shares this machine)."""
    return [round(x, 2) for x in os.getloadavg()]


def rss_mb(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of ``pid`` (not its children)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.01) -> float:
    """Seconds until ``predicate()``; RuntimeError after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"not within {timeout} s: {what}")
        time.sleep(step)
    return time.monotonic() - started


@contextmanager
def etcd_cluster(work: Path) -> Iterator[EtcdCluster]:
    with EtcdCluster(work / "etcd", size=3, name="bench") as etcd:
        etcd.v2_put("/calico/v1/policy/profile/open/rules", json.dumps(OPEN))
        yield etcd


# -- convergence ------------------------------------------------------------------------------


def convergence(work: Path, samples: int, sysctls_first: bool = False) -> dict[str, Any]:
    """A VM added on A until B reaches it; its deletion until B's route is gone.

    ``sysctls_first``: the TAP's proxy ARP is turned on before the endpoint is written, as if
    Felix configured an interface before routing to it (it routes first: see
    docs/benchmarks.md)."""
    with (
        etcd_cluster(work) as etcd,
        Cloud(etcd, 2, work_dir=work / "cloud", bgp_args=BGP_ARGS) as c,
    ):
        c.start(timeout=180)
        a, b = c.hosts
        probe = c.add_vm("probe", b, ["open"])
        vms = [c.add_vm(f"vm{i}", a, ["open"], write=False) for i in range(samples)]
        wait_for(lambda: c.routed_everywhere(probe), 30, "the probe VM routed")
        on_a, on_b = RouteMonitor(a.ns), RouteMonitor(b.ns)
        rows: list[dict[str, float]] = []
        try:
            for i, vm in enumerate(vms):
                if sysctls_first:
                    tap_sysctls_first(a, vm.workload.tap)
                with PingStream(probe.workload.ns, vm.ip, PING_INTERVAL) as stream:
                    time.sleep(0.05)
                    sent = time.time()
                    c.write_endpoint(vm.name)
                    written = time.time()
                    wait_for(stream.first_reply, SAMPLE_TIMEOUT, f"an echo reply from {vm.ip}")
                    reply = stream.first_reply()
                felix_a = on_a.wait_first(vm.ip, proto="80")
                bird_b = on_b.wait_first(vm.ip, proto="bird")
                sent_del = time.time()
                c.delete_endpoint(vm.name)
                felix_gone = on_a.wait_first(vm.ip, deleted=True, timeout=SAMPLE_TIMEOUT)
                bird_gone = on_b.wait_first(vm.ip, deleted=True, timeout=SAMPLE_TIMEOUT)
                assert reply is not None
                rows.append(
                    {
                        "etcd_write": written - sent,
                        "felix_route_a": felix_a - sent,
                        "bird_route_b": bird_b - sent,
                        "bgp_hop": bird_b - felix_a,
                        "reachable_from_b": reply - sent,
                        "felix_route_gone_a": felix_gone - sent_del,
                        "bird_route_gone_b": bird_gone - sent_del,
                        "withdraw_hop": bird_gone - felix_gone,
                    }
                )
                if i % 10 == 9:
                    progress(f"convergence: {i + 1} of {samples} samples")
                time.sleep(0.2)
        finally:
            on_a.close()
            on_b.close()
        scan = c.hosts[0].bird.config.read_text() if c.hosts[0].bird else ""
    measures = {key: summary([row[key] for row in rows]) for key in rows[0]}
    return {
        "hosts": 2,
        "samples": samples,
        "ping_interval_ms": PING_INTERVAL * 1000,
        "tap_sysctls_first": sysctls_first,
        "bird_scan_time_s": _scan_time(scan),
        "measures": measures,
        "load_after": load(),
    }


def tap_sysctls_first(host: FabricHost, tap: str) -> None:
    """What Felix sets on a TAP for IPv4 (proxy ARP, answered at once), set ahead of it."""
    host.sysctl(f"net.ipv4.conf.{tap}.proxy_arp", "1")
    host.sysctl(f"net.ipv4.neigh.{tap}.proxy_delay", "0")


def _scan_time(config: str) -> int | None:
    """The kernel protocol's ``scan time`` in BIRD's file (its line says ``learn``)."""
    for line in config.splitlines():
        if "learn;" in line and (match := re.search(r"scan time (\d+)", line)):
            return int(match.group(1))
    return None


# -- main -------------------------------------------------------------------------------------

PARTS = ("convergence", "scale", "cloud")


def main() -> None:
    import multihost_scale  # noqa: PLC0415 - its heavier parts, in their own module

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small version")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated parts to run")
    parser.add_argument("--samples", type=int, help="convergence samples (50; quick 10)")
    parser.add_argument("--per-host", type=int, help="VMs per host at scale (1000; quick 100)")
    parser.add_argument("--cloud-hosts", type=int, help="compute hosts of the cloud (10; quick 4)")
    parser.add_argument(
        "--cloud-reflectors", type=int, default=2, help="route reflectors of the cloud (0: mesh)"
    )
    parser.add_argument(
        "--tap-sysctls-first",
        action="store_true",
        help="turn on a new VM's proxy ARP before its endpoint is written (an experiment)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    quick = bool(args.quick)
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    result: dict[str, Any] = {"quick": quick, "load_before": load(), **report.environment()}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="calico-bench-mh-") as tmp:
        work = Path(tmp)
        if "convergence" in parts:
            samples = args.samples or (10 if quick else 50)
            progress(f"convergence: {samples} VMs added on one host, reached from another")
            result["convergence"] = convergence(
                work / "convergence", samples, args.tap_sysctls_first
            )
        if "scale" in parts:
            per_host = args.per_host or (100 if quick else 1000)
            progress(f"scale: {per_host} VMs on each of three hosts")
            result["scale"] = multihost_scale.scale(work / "scale", per_host)
        if "cloud" in parts:
            hosts = args.cloud_hosts or (4 if quick else 10)
            progress(f"cloud: {hosts} compute hosts, {args.cloud_reflectors} route reflectors")
            result["cloud"] = multihost_scale.bigger_cloud(
                work / "cloud",
                hosts,
                samples=5 if quick else 20,
                background=20 if quick else 100,
                sysctls_first=args.tap_sysctls_first,
                reflectors=args.cloud_reflectors,
            )
    result["load_after"] = load()
    result["duration_s"] = round(time.monotonic() - started, 1)
    report.emit(result, args.json)


if __name__ == "__main__":
    main()
