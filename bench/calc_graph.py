"""Benchmark: the calculation graph alone (no kernel, no etcd).

Scale (issue 3): 10,000 workload endpoints on 100 hosts, 1,000 of them on this host; 200 profiles
each with a tag and rules; policies whose rules use 800 distinct selectors, so that 1,000 distinct
selectors and tags are active. Measures:

* snapshot -> first flush: every key fed as one batch, then in-sync, then flush (median of 3);
* one endpoint label change -> flushed messages (median and p99 over many changes);
* memory: the process's RSS growth from building the graph, and tracemalloc's count of the
  graph's own allocations (retained and peak) in a second, identical snapshot.

Run: `make bench-calc` (or `.venv/bin/python bench/calc_graph.py [--json out.json]`).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import random
import statistics
import time
import tracemalloc

import report

from calico.common.etcd.syncer import SyncStatus
from calico.felix.calc.graph import CalcGraph

HOSTS = 100
ENDPOINTS = 10_000
LOCAL = 1_000
PROFILES = 200
POLICIES = 100
SELECTORS_PER_POLICY = 8  # 800 rule selectors + 200 tags = 1,000 active IP sets
LOCAL_HOST = "host-0"


def endpoint_labels(i: int) -> dict[str, str]:
    return {"role": f"r{i % 50}", "tier": f"t{i % 10}", "app": f"a{i % 100}", "env": "prod"}


def endpoint_key(i: int, local: int = LOCAL) -> str:
    host = LOCAL_HOST if i < local else f"host-{1 + i % (HOSTS - 1)}"
    return f"/calico/v1/host/{host}/workload/openstack/vm{i}/endpoint/ep{i}"


def interface_name(i: int) -> str:
    """Endpoint i's TAP, named as Neutron names one: "tap" and the first 11 characters of its
    port's UUID, random hex (sequential names would share a long prefix, which no cloud has,
    and one more would reshape the whole dispatch tree)."""
    return "tap" + hashlib.blake2b(f"port-{i}".encode()).hexdigest()[:11]


def endpoint_value(i: int, labels: dict[str, str]) -> str:
    return json.dumps(
        {
            "state": "active",
            "name": interface_name(i),
            "mac": f"02:00:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
            "profile_ids": [f"prof{i % PROFILES}", f"prof{(i * 7) % PROFILES}"],
            "ipv4_nets": [f"10.65.{i // 250}.{i % 250 + 1}/32"],
            "labels": labels,
        }
    )


def rule_selector(n: int) -> str:
    # A mix of simple-keyed and complex selectors; the trailing `seq != 's<n>'` (true for every
    # endpoint) makes each of the 800 distinct, as in a real deployment's many policies.
    distinct = f" && seq != 's{n}'"
    match n % 4:
        case 0:
            return f"role == 'r{n % 50}' && app == 'a{n % 100}'" + distinct
        case 1:
            return f"app in {{'a{n % 100}', 'a{(n + 1) % 100}'}} && env == 'prod'" + distinct
        case 2:
            return f"tier == 't{n % 10}' && role != 'r{n % 50}' && has(app)" + distinct
        case _:
            return f"role == 'r{n % 50}' && !has(never{n})" + distinct


def datastore(endpoints: int = ENDPOINTS, local: int = LOCAL) -> dict[str, str]:
    """The whole datastore: `endpoints` workload endpoints, the first `local` on LOCAL_HOST."""
    keys: dict[str, str] = {"/calico/v1/Ready": "true"}
    for i in range(endpoints):
        keys[endpoint_key(i, local)] = endpoint_value(i, endpoint_labels(i))
    for p in range(PROFILES):
        base = f"/calico/v1/policy/profile/prof{p}"
        keys[base + "/tags"] = json.dumps([f"prof{p}"])
        keys[base + "/labels"] = json.dumps({"profile": f"prof{p}"})
        keys[base + "/rules"] = json.dumps(
            {
                "inbound_rules": [
                    {"src_tag": f"prof{(p + 1) % PROFILES}"},
                    {"src_tag": f"prof{p}"},
                ],
                "outbound_rules": [{}],
            }
        )
    keys["/calico/v1/policy/tier/default/metadata"] = json.dumps({"order": 10})
    n = 0
    for q in range(POLICIES):
        rules = []
        for _ in range(SELECTORS_PER_POLICY):
            rules.append(
                {
                    "action": "allow",
                    "protocol": "tcp",
                    "dst_ports": [80, 443],
                    "src_selector": rule_selector(n),
                }
            )
            n += 1
        keys[f"/calico/v1/policy/tier/default/policy/pol{q}"] = json.dumps(
            {
                "selector": f"tier == 't{q % 10}'",
                "order": q,
                "inbound_rules": rules,
                "outbound_rules": [{"action": "allow"}],
            }
        )
    return keys


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def snapshot(keys: dict[str, str]) -> tuple[CalcGraph, list[object], float]:
    graph = CalcGraph(LOCAL_HOST, ["tap"])
    start = time.perf_counter()
    graph.on_updates(keys.items())
    graph.on_status(SyncStatus.IN_SYNC)
    first = graph.flush()
    return graph, list(first), time.perf_counter() - start


def run(changes: int, seed: int) -> dict[str, object]:
    keys = datastore()
    gc.collect()
    rss_before = rss_mb()
    graph, first, snapshot_secs = snapshot(keys)
    del first[:]
    gc.collect()
    graph_rss = rss_mb() - rss_before
    # Two more timed snapshots (each graph dropped at once): the median of three is what is
    # reported, as one run on a shared VM can be off by 20 %.
    snapshot_runs = [snapshot_secs]
    for _ in range(2):
        snapshot_runs.append(snapshot(keys)[2])
        gc.collect()
    # A second, identical snapshot under tracemalloc, for the graph's own allocations.
    tracemalloc.start()
    traced_graph, _, _ = snapshot(keys)
    traced_now, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del traced_graph
    active_sets = len(graph.active.active_sets())
    members = sum(len(graph.sequencer.ip_set_members(s)) for s in graph.active.active_sets())

    rng = random.Random(seed)
    latencies: list[float] = []
    sizes: list[int] = []
    for _ in range(changes):
        i = rng.randrange(ENDPOINTS)
        labels = endpoint_labels(i)
        labels["role"] = f"r{rng.randrange(50)}"
        labels["app"] = f"a{rng.randrange(100)}"
        value = endpoint_value(i, labels)
        path = endpoint_key(i)
        t0 = time.perf_counter()
        graph.on_update(path, value)
        out = graph.flush()
        latencies.append(time.perf_counter() - t0)
        sizes.append(len(out))
    latencies.sort()
    return {
        "scale": {
            "endpoints": ENDPOINTS,
            "hosts": HOSTS,
            "local_endpoints": LOCAL,
            "profiles": PROFILES,
            "policies": POLICIES,
            "active_ip_sets": active_sets,
            "ip_set_members": members,
            "keys": len(keys),
        },
        "snapshot_to_first_flush_s": round(statistics.median(snapshot_runs), 3),
        "snapshot_runs_s": [round(secs, 3) for secs in snapshot_runs],
        "label_change_ms": {
            "changes": changes,
            "median": round(statistics.median(latencies) * 1000, 3),
            "p99": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 3),
            "messages_median": statistics.median(sizes),
        },
        "memory_mb": {
            "graph_rss_growth": round(graph_rss, 1),
            "graph_tracemalloc_retained": round(traced_now / 2**20, 1),
            "graph_tracemalloc_peak": round(traced_peak / 2**20, 1),
        },
        **report.environment(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    results = run(args.changes, args.seed)
    report.emit(results, args.json)


if __name__ == "__main__":
    main()
