"""Benchmark: reading a 100,000-key snapshot from etcd, our clients against etcd's own tools.

The keys are the calc-graph benchmark's data set (bench/calc_graph.py) grown to about 100,000
keys: workload endpoints (~330-byte JSON values), profiles and policies under /calico/v1. The
same keys are written to both of etcd 3.4's key spaces (v2 and v3 are separate there). Timed,
median of --runs, each a fresh client (new connection), as a restarting Felix pays it, after
two untimed reads of each API (etcd's own first reads after the load are 2-3x slower):

* v2: ``EtcdV2Client.read_prefix`` (one recursive GET + JSON parse + tree walk); the
  ``Syncer`` from start to in-sync (Ready check, snapshot, diff against nothing); ``curl`` of
  the same recursive GET (fetch only, to /dev/null); ``etcdctl ls --recursive`` (API 2: keys
  only, the closest etcdctl has to a recursive read);
* v3: ``EtcdV3Client.read_prefix`` (paged range over gRPC, grpc_range.py); the same client
  through etcd's JSON gateway alone (paged, base64: the way it reads where gRPC cannot be
  used); the ``Syncer``; ``etcdctl get --prefix`` (Go, gRPC, output to /dev/null); ``curl`` of
  one unpaged range through the JSON gateway (fetch only: the gateway's own time).

Values stay strings here; JSON decoding of each value happens later, in the calculation graph.

Run: `.venv/bin/python bench/datastore.py [--keys N] [--runs R] [--json F]` (no root needed;
a private etcd on loopback, deleted afterwards).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, urlencode

import requests

sys.path.insert(0, str(Path(__file__).parent))
import calc_graph as data
import report

from calico.common.etcd import EtcdSettings, connect
from calico.common.etcd.syncer import Syncer, SyncStatus, Update
from calico.common.etcd.v3 import EtcdV3Client
from calico.lab.etcd_server import EtcdServer

PREFIX = "/calico/v1"
# The data set outside the endpoints: Ready, 200 profiles x 3 keys, tier metadata, policies.
FIXED_KEYS = 1 + data.PROFILES * 3 + 1 + data.POLICIES
LOAD_CONNECTIONS = 16
WARM_UP_READS = 2  # untimed full reads of each API before any timed one
V3_TXN_PUTS = 100
CURL = ["curl", "-sf", "--noproxy", "*", "-o", "/dev/null"]  # etcd's default --max-txn-ops is 128


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- loading ----------------------------------------------------------------------------------


def _pipelined_puts(host: str, port: int, items: list[tuple[str, str]]) -> None:
    """v2 PUTs over one connection, HTTP/1.1-pipelined (etcd answers them in order).

    One PUT per request is all v2 offers; pipelining keeps the Python side off the critical
    path (a request/response loop in Python manages about 1,000 keys/s, this about 3,000).
    """
    requests_out = []
    for key, value in items:
        body = urlencode({"value": value}).encode()
        head = (
            f"PUT /v2/keys{quote(key)} HTTP/1.1\r\nHost: {host}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        requests_out.append(head.encode() + body)
    with socket.create_connection((host, port), timeout=120) as sock:
        sender = threading.Thread(target=sock.sendall, args=(b"".join(requests_out),))
        sender.start()
        with sock.makefile("rb") as answers:
            for key, _ in items:
                status = answers.readline()
                if not status.startswith((b"HTTP/1.1 200", b"HTTP/1.1 201")):
                    raise RuntimeError(f"v2 PUT {key}: {status!r}")
                length = 0
                while (line := answers.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                answers.read(length)
        sender.join()


def load_v2(etcd: EtcdServer, keys: dict[str, str]) -> float:
    started = time.monotonic()
    items = list(keys.items())
    parts = [items[i::LOAD_CONNECTIONS] for i in range(LOAD_CONNECTIONS)]
    with ThreadPoolExecutor(LOAD_CONNECTIONS) as pool:
        list(pool.map(lambda part: _pipelined_puts(etcd.host, etcd.port, part), parts))
    return time.monotonic() - started


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def load_v3(etcd: EtcdServer, keys: dict[str, str]) -> float:
    """v3 writes as transactions of V3_TXN_PUTS puts each (4 writers), over the gateway."""
    started = time.monotonic()
    items = list(keys.items())
    batches = [items[i : i + V3_TXN_PUTS] for i in range(0, len(items), V3_TXN_PUTS)]

    def write(part: list[list[tuple[str, str]]]) -> None:
        with requests.Session() as session:
            session.trust_env = False
            for batch in part:
                puts = [{"request_put": {"key": _b64(k), "value": _b64(v)}} for k, v in batch]
                url = f"{etcd.client_url}/v3/kv/txn"
                session.post(url, json={"success": puts}, timeout=60).raise_for_status()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, [batches[i::4] for i in range(4)]))
    return time.monotonic() - started


# -- readers ----------------------------------------------------------------------------------


# A reader returns (seconds it took, keys it saw; 0 when it cannot tell).
Reader = Callable[[], tuple[float, int]]


def client_read(etcd: EtcdServer, api: str, gateway_only: bool = False) -> Reader:
    def read() -> tuple[float, int]:
        started = time.perf_counter()
        settings = EtcdSettings((etcd.client_url,), timeout=120)
        client = (
            EtcdV3Client(settings, shuffle=False, use_grpc=False)  # as where gRPC cannot be used
            if gateway_only
            else connect(api, settings, shuffle=False)
        )
        try:
            count = len(client.read_prefix(PREFIX).items)
            return time.perf_counter() - started, count
        finally:
            client.close()

    return read


class _InSync:
    """A Syncer listener that only counts keys and notes when the syncer is in sync."""

    def __init__(self) -> None:
        self.keys = 0
        self.in_sync_at = 0.0
        self.done = threading.Event()

    def on_status(self, status: SyncStatus) -> None:
        if status == SyncStatus.IN_SYNC:
            self.in_sync_at = time.perf_counter()
            self.done.set()

    def on_updates(self, updates: list[Update]) -> None:
        self.keys += len(updates)


def syncer_read(etcd: EtcdServer, api: str) -> Reader:
    def read() -> tuple[float, int]:
        started = time.perf_counter()
        client = connect(api, EtcdSettings((etcd.client_url,), timeout=120), shuffle=False)
        listener = _InSync()
        # A short watch timeout, so the thread notices stop() soon after in-sync.
        syncer = Syncer(client, listener, watch_timeout=0.2)
        thread = threading.Thread(target=syncer.run, daemon=True)
        thread.start()
        listener.done.wait(timeout=300)
        syncer.stop()
        thread.join(timeout=10)
        client.close()
        return listener.in_sync_at - started, listener.keys

    return read


def command_read(argv: list[str], env: dict[str, str] | None = None) -> Reader:
    def read() -> tuple[float, int]:
        started = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, check=True, env=env, timeout=300)
        return time.perf_counter() - started, 0

    return read


def gateway_range_body(prefix: str) -> str:
    """The JSON of one unpaged range over every key under `prefix` (v3 gateway)."""
    start = prefix.rstrip("/") + "/"
    end = start[:-1] + chr(ord("/") + 1)
    return json.dumps({"key": _b64(start), "range_end": _b64(end)})


def etcdctl_env(api: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL")}
    env["ETCDCTL_API"] = api
    return env


def median_seconds(read: Reader, runs: int, expect: int) -> float:
    samples = []
    for _ in range(runs):
        took, got = read()
        samples.append(took)
        if got and got != expect:
            raise RuntimeError(f"read {got} keys, expected {expect}")
    return round(statistics.median(samples), 3)


def run(key_count: int, runs: int) -> dict[str, object]:
    keys = data.datastore(endpoints=max(1, key_count - FIXED_KEYS), local=data.LOCAL)
    size_mb = sum(len(k) + len(v) for k, v in keys.items()) / 1e6
    results: dict[str, dict[str, float]] = {"v2": {}, "v3": {}}
    load: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="calico-bench-") as tmp:
        with EtcdServer(Path(tmp) / "etcd", name="datastore") as etcd:
            progress(f"loading {len(keys)} keys into etcd v2 and v3")
            load["v2_s"] = round(load_v2(etcd, keys), 1)
            load["v3_s"] = round(load_v3(etcd, keys), 1)
            url = f"{etcd.client_url}/v2/keys{PREFIX}?recursive=true"
            range_url = f"{etcd.client_url}/v3/kv/range"
            readers: dict[str, dict[str, Reader]] = {
                "v2": {
                    "calico EtcdV2Client.read_prefix": client_read(etcd, "v2"),
                    "calico Syncer start -> in-sync": syncer_read(etcd, "v2"),
                    "curl recursive GET (fetch only)": command_read([*CURL, url]),
                    "etcdctl ls --recursive (keys only)": command_read(
                        ["etcdctl", f"--endpoints={etcd.client_url}", "ls", "--recursive", PREFIX],
                        etcdctl_env("2"),
                    ),
                },
                "v3": {
                    "calico EtcdV3Client.read_prefix": client_read(etcd, "v3"),
                    "calico EtcdV3Client.read_prefix, gateway only": client_read(
                        etcd, "v3", gateway_only=True
                    ),
                    "calico Syncer start -> in-sync": syncer_read(etcd, "v3"),
                    "etcdctl get --prefix": command_read(
                        ["etcdctl", f"--endpoints={etcd.client_url}", "get", "--prefix", PREFIX],
                        etcdctl_env("3"),
                    ),
                    # What the JSON gateway itself takes for the same range (one request):
                    # the part of our v3 read that is etcd's, not our client's.
                    "curl gateway range (fetch only)": command_read(
                        [*CURL, "-X", "POST", "-d", gateway_range_body(PREFIX), range_url]
                    ),
                },
            }
            # etcd's first two full reads after the load are slow on its own side (curl: 920
            # and 718 ms, then 315 ms): two untimed reads of each API first, so that no reader
            # is charged with etcd's warm-up for being the first measured.
            progress("warming etcd up: two untimed reads of each API")
            for _ in range(WARM_UP_READS):
                readers["v2"]["curl recursive GET (fetch only)"]()
                readers["v3"]["curl gateway range (fetch only)"]()
            for api, tools in readers.items():
                for name, read in tools.items():
                    progress(f"{api}: {name}")
                    results[api][name] = median_seconds(read, runs, len(keys))
    # Our client's read over the tool that fetches the same bytes (v2: curl; v3: etcdctl).
    v2, v3 = results["v2"], results["v3"]
    ratios = {
        "v2": round(
            v2["calico EtcdV2Client.read_prefix"] / v2["curl recursive GET (fetch only)"], 1
        ),
        "v3": round(v3["calico EtcdV3Client.read_prefix"] / v3["etcdctl get --prefix"], 1),
        # Where gRPC cannot be used: the client through the gateway, over the gateway's fetch.
        "v3_gateway": round(
            v3["calico EtcdV3Client.read_prefix, gateway only"]
            / v3["curl gateway range (fetch only)"],
            1,
        ),
    }
    return {
        "keys": len(keys),
        "data_mb": round(size_mb, 1),
        "runs": runs,
        "load": load,
        "snapshot_s": results,
        "ours_over_reference": ratios,
        **report.environment(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    report.emit(run(args.keys, args.runs), args.json)


if __name__ == "__main__":
    main()
