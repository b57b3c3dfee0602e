"""Benchmark: the scale curve of a big cloud, seen from one compute host (issue 15).

One calico-felix with 100 local endpoints (TAP-named veths in a lab namespace) while the rest of
the cloud grows: 10,000, 30,000 and 100,000 workload endpoints in all (100,000 is 1,000 hosts
of 100 VMs), with the calc-graph benchmark's 200 profiles (tags) and 100 policies of 800
selectors (bench/calc_graph.py), so every remote endpoint feeds tag and selector IP sets. At each
size, from a private etcd loaded before Felix starts:

* start to programmed: calico-felix started -> the driver's "Dataplane programmed";
* steady-state RSS of Felix and of its driver (VmRSS after the start-of-day cleanup and after
  the changes), and the etcd snapshot's size;
* one remote change: a remote VM joins a security group (its endpoint gains the profile
  ``prof0``, whose tag a local profile's rule names), timed from the etcd write until
  ``ipset test`` finds its address in the tag's set, then the revert timed the same way;
  median and p99 of the latency, and the CPU Felix and its driver spent per change.

Addresses: 10.65.0.0/16 holds 62,500 endpoints (250 per /24); endpoints beyond that are
IPv6-only (fd00:65::/64), so at 100,000 the sets hold 62,500 IPv4 and 37,500 IPv6 members.

Run as root: `.venv/bin/python bench/scale_curve.py [--sizes 10000 30000 100000] [--changes 20]
[--json out.json]` (in `make bench`). Everything runs in namespaces this script creates and
deletes; the root namespace is never touched.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import calc_graph as data
import report

from calico.common.selectors import tag_id
from calico.felix.dataplane import names
from calico.lab.etcd_server import EtcdServer
from calico.lab.netns import NetNS
from calico.lab.topology import ComputeHost
from dataplane import (
    CLEANUP_DELAY,
    add_taps,
    cpu_seconds,
    load_etcd,
    progress,
    put,
    python_processes,
    tap,
)

LOCAL = 100
HOSTS = 1000  # the cloud's compute hosts: the local one and 999 others
V4_ENDPOINTS = 62_500  # 250 addresses in each of the 256 /24s of 10.65.0.0/16
TAG = "prof0"  # the tag a remote VM gains; prof0's own inbound rule names it
POLL = 0.002
TIMEOUT = 60.0


def endpoint_key(i: int) -> str:
    host = data.LOCAL_HOST if i < LOCAL else f"host-{1 + i % (HOSTS - 1)}"
    return f"/calico/v1/host/{host}/workload/openstack/vm{i}/endpoint/ep{i}"


def address(i: int) -> tuple[list[str], list[str]]:
    """(ipv4_nets, ipv6_nets) of endpoint i."""
    if i < V4_ENDPOINTS:
        return [f"10.65.{i // 250}.{i % 250 + 1}/32"], []
    return [], [f"fd00:65::1:{i // 65536:x}:{i % 65536:x}/128"]


def endpoint_value(i: int, extra_profile: str | None = None) -> str:
    value = json.loads(data.endpoint_value(i % V4_ENDPOINTS, data.endpoint_labels(i)))
    value["name"] = data.interface_name(i)
    value["mac"] = f"02:00:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"
    value["ipv4_nets"], value["ipv6_nets"] = address(i)
    value["profile_ids"] = [f"prof{i % data.PROFILES}", f"prof{(i * 7) % data.PROFILES}"]
    if extra_profile is not None:
        value["profile_ids"].append(extra_profile)
    return json.dumps(value)


def datastore(endpoints: int) -> dict[str, str]:
    """Profiles and policies as the calc-graph benchmark's, `endpoints` endpoints over HOSTS."""
    keys = data.datastore(endpoints=0, local=0)
    for i in range(endpoints):
        keys[endpoint_key(i)] = endpoint_value(i)
    return keys


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def in_set(ns: NetNS, set_name: str, ip: str) -> bool:
    return ns.run(["ipset", "test", set_name, ip], check=False).returncode == 0


def timed_until(write: Any, done: Any) -> float:
    start = time.monotonic()
    write()
    while not done():
        if time.monotonic() - start > TIMEOUT:
            raise TimeoutError("the change did not reach the kernel")
        time.sleep(POLL)
    return time.monotonic() - start


def remote_changes(etcd: EtcdServer, ns: NetNS, total: int, count: int) -> dict[str, float]:
    """`count` remote VMs join the security group TAG and leave it again, one at a time."""
    set_name = names.ipset_name(tag_id(TAG), 4)
    candidates = [
        i
        for i in range(LOCAL, min(total, V4_ENDPOINTS), max(1, min(total, V4_ENDPOINTS) // 97))
        if TAG not in (f"prof{i % data.PROFILES}", f"prof{(i * 7) % data.PROFILES}")
    ][:count]
    joins: list[float] = []
    leaves: list[float] = []
    for i in candidates:
        ip = address(i)[0][0].split("/")[0]
        assert not in_set(ns, set_name, ip), ip
        joins.append(
            timed_until(
                lambda i=i: put(etcd, endpoint_key(i), json.loads(endpoint_value(i, TAG))),
                lambda ip=ip: in_set(ns, set_name, ip),
            )
        )
        time.sleep(0.05)  # let Felix settle: each change is measured alone
        leaves.append(
            timed_until(
                lambda i=i: put(etcd, endpoint_key(i), json.loads(endpoint_value(i))),
                lambda ip=ip: not in_set(ns, set_name, ip),
            )
        )
        time.sleep(0.05)
    both = sorted(joins + leaves)
    return {
        "changes": len(both),
        "median_ms": round(statistics.median(both) * 1000, 1),
        "p99_ms": round(both[max(0, int(len(both) * 0.99) - 1)] * 1000, 1),
        "join_median_ms": round(statistics.median(joins) * 1000, 1),
        "leave_median_ms": round(statistics.median(leaves) * 1000, 1),
    }


def one_size(total: int, count: int) -> dict[str, Any]:
    keys = datastore(total)
    with tempfile.TemporaryDirectory(prefix="calico-bench-") as tmp:
        work = Path(tmp)
        with EtcdServer(work / "etcd", name="scale") as etcd:
            progress(f"{total:,} endpoints: loading {len(keys):,} keys into etcd")
            load_s = load_etcd(etcd, keys)
            with ComputeHost(etcd, hostname=data.LOCAL_HOST, work_dir=work) as host:
                add_taps(host.ns, map(tap, range(LOCAL)))  # the endpoints' names
                progress(f"{total:,} endpoints: starting calico-felix")
                started = time.monotonic()
                felix = host.start_felix(
                    {},
                    FELIX_IPTABLESREFRESHINTERVAL="0",
                    FELIX_STARTUPCLEANUPDELAY=str(CLEANUP_DELAY),
                    FELIX_LOGSEVERITYFILE="none",
                    FELIX_LOGFILEPATH="none",
                )
                felix.wait_for("Dataplane programmed", timeout=900)
                programmed_s = time.monotonic() - started
                felix.wait_for("Start-of-day cleanup done", timeout=CLEANUP_DELAY + 300)
                procs = python_processes(felix.proc.pid)
                rss_start = {name: round(rss_mb(pid), 1) for name, pid in procs.items()}
                cpu_before = sum(cpu_seconds(pid) for pid in procs.values())
                progress(f"{total:,} endpoints: {count} remote VMs join and leave a group")
                change = remote_changes(etcd, host.ns, total, count)
                cpu_used = sum(cpu_seconds(pid) for pid in procs.values()) - cpu_before
                change["cpu_ms_per_change"] = round(cpu_used * 1000 / change["changes"], 1)
                rss_after = {name: round(rss_mb(pid), 1) for name, pid in procs.items()}
                members = set_members(host.ns)
                felix.stop()
    return {
        "endpoints": total,
        "remote_endpoints": total - LOCAL,
        "keys": len(keys),
        "etcd_load_s": round(load_s, 1),
        "start_to_programmed_s": round(programmed_s, 2),
        "rss_mb_steady": rss_start,
        "rss_mb_after_changes": rss_after,
        "remote_change": change,
        "ipset_members": members,
    }


def set_members(ns: NetNS) -> int:
    out = ns.run(["ipset", "list", "-t"]).stdout
    return sum(
        int(line.split(":")[1]) for line in out.splitlines() if line.startswith("Number of entries")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    parser.add_argument("--changes", type=int, default=20, help="remote VMs that join and leave")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    points = [one_size(total, args.changes) for total in args.sizes]
    report.emit(
        {"local_endpoints": LOCAL, "hosts": HOSTS, "points": points, **report.environment()},
        args.json,
    )


if __name__ == "__main__":
    main()
