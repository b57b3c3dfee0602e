"""The nftables side of the dataplane benchmarks (NFTablesMode=Enabled): reading what Felix
programmed in ``table inet felix``, its kernel floor, and when a change reached the kernel.

When: a helper process inside the lab namespace reads nf_tables' generation counter every
millisecond (one netlink GETGEN on a kept socket, about 10 microseconds;
calico.felix.kernel.nftables.GenerationReader) and reports
each new generation with its CLOCK_MONOTONIC time, which this process shares. A change counts
as in the kernel at the last new generation seen before a listing that shows it: the commit that
made it visible happened no later than that (so the figure is never too small), and the listing
itself (`nft list chain`, which costs nft 1.0.6 a whole-table cache fetch, tens to hundreds of
milliseconds at 1,000 endpoints) is not part of it. iptables-nft's restores are nf_tables
commits too, timed the same way (bench/dataplane.py, Kernel); only iptables-legacy is polled.
"""

from __future__ import annotations

import bisect
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from calico.lab.netns import NetNS

TABLE = ["inet", "felix"]
_WATCH = """
import errno, socket, struct, sys, threading, time
from calico.felix.kernel.nftables import GenerationReader
lock = threading.Lock()

def say(line):
    with lock:
        print(line, flush=True)

def names():
    # Who made each generation: the kernel's NFT_MSG_NEWGEN notification (group
    # NFNLGRP_NFTABLES) names the committing process ("iptables-restor", "ip6tables-resto").
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
    sock.setsockopt(socket.SOL_SOCKET, 33, 1 << 24)  # SO_RCVBUFFORCE
    sock.bind((0, 1 << 6))
    while True:
        try:
            data = sock.recv(1 << 20)
        except OSError as e:
            if e.errno == errno.ENOBUFS:
                continue  # (notifications lost: those generations stay unnamed)
            raise
        offset = 0
        while offset + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, offset)
            if length < 16:
                break
            if kind == (10 << 8) | 15:
                gen, name, at = None, None, offset + 20
                while at + 4 <= offset + length:
                    size, attr = struct.unpack_from("=HH", data, at)
                    if size < 4:
                        break
                    if attr == 1:
                        gen = struct.unpack_from(">I", data, at + 4)[0]
                    elif attr == 3:
                        name = data[at + 4 : at + size].split(b"\\0")[0].decode(errors="replace")
                    at += (size + 3) & ~3
                if gen is not None and name:
                    say(f"name {gen} {name.replace(' ', '_')}")
            offset += (length + 3) & ~3

threading.Thread(target=names, daemon=True).start()
read = GenerationReader()
last = None
while True:
    gen = read()
    if gen != last:
        say(f"{time.monotonic()} {gen}")
        last = gen
    time.sleep(0.001)
"""


class GenerationWatch:
    """New nf_tables generations in a namespace, with the monotonic time each was seen."""

    def __init__(self, ns: NetNS) -> None:
        self._proc = subprocess.Popen(
            ["ip", "netns", "exec", ns.name, sys.executable, "-c", _WATCH],
            stdout=subprocess.PIPE,
            text=True,
        )
        self._times: list[float] = []
        self._generations: list[int | None] = []  # (of each time)
        self._names: dict[int, str] = {}  # generation -> the process that committed it
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            words = line.split()
            with self._lock:
                if words[0] == "name":
                    self._names[int(words[1])] = words[2]
                    continue
                self._times.append(float(words[0]))
                self._generations.append(int(words[1]) if words[1].isdigit() else None)

    def next_after(self, moment: float, timeout: float) -> float | None:
        """The time of the first new generation seen after `moment` (waiting up to `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                i = bisect.bisect_right(self._times, moment)
                if i < len(self._times):
                    return self._times[i]
            time.sleep(0.0005)
        return None

    def newest(self) -> float:
        """The time of the newest generation seen so far (0.0 if none)."""
        with self._lock:
            return self._times[-1] if self._times else 0.0

    def last_before(self, moment: float, after: float, tool: str | None = None) -> float | None:
        """The time of the last new generation seen in (after, moment], or None. With `tool`,
        only generations that process (a name prefix, e.g. "iptables-") or an unknown one
        committed: what ip6tables-restore commits cannot make an IPv4 chain visible."""
        time.sleep(0.003)  # let the watcher report what it saw up to `moment`
        with self._lock:
            i = bisect.bisect_right(self._times, moment)
            while i and self._times[i - 1] > after:
                generation = self._generations[i - 1]
                name = self._names.get(generation) if generation is not None else None
                if tool is None or name is None or name.startswith(tool):
                    return self._times[i - 1]
                i -= 1
        return None

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(10)


def chain_rules(ns: NetNS, chain: str, follow_programs: bool = False) -> list[str]:
    """The rules of one chain ([] if it does not exist); with `follow_programs`, an endpoint
    chain's ``goto felix-pr-...`` is followed to the shared program's rules."""
    proc = ns.run(["nft", "list", "chain", *TABLE, chain], check=False)
    if proc.returncode != 0:
        return []
    lines = [line.strip() for line in proc.stdout.splitlines()]
    rules = [line for line in lines[2:-2] if line and not line.startswith("type ")]
    if follow_programs:
        for rule in list(rules):
            match = re.search(r"goto (felix-pr-\S+)", rule)
            if match:
                rules += chain_rules(ns, match.group(1))
    return rules


def dump(ns: NetNS) -> str:
    """Felix's table exactly as the kernel lists it (nft input that recreates it)."""
    return ns.run(["nft", "list", "table", *TABLE]).stdout


def count(text: str) -> dict[str, int]:
    chains = re.findall(r"^\tchain (\S+) \{", text, flags=re.MULTILINE)
    rules = sum(1 for line in text.splitlines() if line.startswith("\t\t") and " comment " in line)
    elements = 0
    for block in re.findall(r"elements = \{(.*?)\}", text, flags=re.DOTALL):
        elements += block.count(",") + 1
    return {"rules": rules, "chains": len(chains), "set_elements": elements}


def floor(text: str, runs: int) -> dict[str, float]:
    """Median seconds of ``nft -f`` of exactly that table into fresh namespaces."""
    samples = []
    for _ in range(runs):
        with NetNS() as ns:
            started = time.perf_counter()
            ns.run(["nft", "-f", "-"], input=text)
            samples.append(time.perf_counter() - started)
    return {
        "nft_f_s": round(statistics.median(samples), 3),
        "total_s": round(statistics.median(samples), 3),
    }


def to_commit(watch: GenerationWatch, run: Callable[[], object]) -> float:
    """Seconds from starting `run` (a command that commits once) to its nf_tables commit: the
    same end as a change is timed to, so that a floor and a change compare like with like (a
    big table's tool spends milliseconds after its commit freeing its copy of the table)."""
    started = time.monotonic()
    run()
    committed = watch.last_before(time.monotonic(), started)
    if committed is None:
        raise RuntimeError("the floor's command made no nf_tables commit")
    return committed - started


def incremental_floor(
    ns: NetNS, chains: list[str], runs: int = 5, watch: GenerationWatch | None = None
) -> float:
    """Median seconds of one ``nft -f -`` rewriting just these chains (their current rules):
    to its commit with a `watch`, else to its exit."""
    lines = []
    for chain in chains:
        lines.append(f"flush chain {' '.join(TABLE)} {chain}")
        for rule in chain_rules(ns, chain):
            lines.append(f"add rule {' '.join(TABLE)} {chain} {rule}")
    text = "\n".join(lines) + "\n"
    argv = ["nft", "-f", "-"]
    if watch is not None:
        return statistics.median(
            to_commit(watch, lambda: ns.run(argv, input=text)) for _ in range(runs)
        )
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        ns.run(argv, input=text)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def has_set_element(ns: NetNS, set_name: str, ip: str) -> bool:
    argv = ["nft", "get", "element", *TABLE, set_name, f"{{ {ip} }}"]
    return ns.run(argv, check=False).returncode == 0
