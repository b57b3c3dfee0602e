"""Benchmark: calico-felix programming a real kernel, against the kernel's own floor.

Scale (issue 4): N local endpoints (default 1,000) on TAP-named veths in a lab compute-host
namespace, plus 10,000 remote endpoints feeding ipsets, 200 profiles and 100 policies with 800
distinct selectors (the calc-graph benchmark's data set, bench/calc_graph.py). A private etcd on
loopback holds it all before Felix starts. Measures, in one run:

* cold start: calico-felix process start (etcd already loaded) -> the driver's "Dataplane
  programmed" (everything applied); peak RSS and CPU seconds of both processes;
* the floor: ``iptables-restore`` of exactly the ruleset Felix programmed (iptables-save of
  every table, v4 and v6) plus ``ipset restore`` of its sets, into a fresh namespace, on the
  nft and the legacy backend;
* change latency at that scale, from the etcd write to the nf_tables commit that made the change
  visible (iptables-nft commits to nf_tables too; on the legacy backend, to the first
  ``iptables -S <chain>`` poll that shows it): profile rule change, policy rule change, endpoint
  label change (moves it between policies), endpoint add, endpoint delete; beside each, the
  incremental floor: one ``iptables-restore --noflush`` rewriting just the chains that changed
  (for a delete: the dispatch chains that held the endpoint, and two endpoint chains emptied
  and deleted).

With ``--backend nftables`` Felix runs NFTablesMode=Enabled: the floor is ``nft -f`` of exactly
the table it programmed (``nft list table inet felix``), and a change is timed to the nf_tables
commit that made it visible (bench/nft_kernel.py says how).

Run as root: `make bench-dataplane` (or `.venv/bin/python bench/dataplane.py [--local N]
[--changes K] [--backend iptables|nftables] [--json out.json]`). Everything runs in namespaces
this script creates and deletes; the root namespace is never touched.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).parent))
import calc_graph as data
import nft_kernel
import report

from calico.felix.dataplane import names
from calico.lab.etcd_server import EtcdServer
from calico.lab.felix import FelixProcess
from calico.lab.netns import NetNS
from calico.lab.topology import ComputeHost

REMOTE = 10_000
PREFIXES = ("tap",)
POLL_INTERVAL = 0.002
CHANGE_TIMEOUT = 30.0  # seconds: a change not in the kernel by then is a failed sample
CLEANUP_DELAY = 2  # StartupCleanupDelay, seconds (default 30)


def load_etcd(etcd: EtcdServer, keys: dict[str, str]) -> float:
    """Write every key (8 connections in parallel); return the seconds it took."""
    started = time.monotonic()
    items = list(keys.items())

    def put_slice(part: list[tuple[str, str]]) -> None:
        with requests.Session() as session:
            for key, value in part:
                url = f"{etcd.client_url}/v2/keys{key}"
                session.put(url, data={"value": value}, timeout=30).raise_for_status()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put_slice, [items[i::8] for i in range(8)]))
    return time.monotonic() - started


def put(etcd: EtcdServer, key: str, value: object) -> None:
    etcd.v2_put(key, value if isinstance(value, str) else json.dumps(value))


def tap(i: int) -> str:
    return json.loads(data.endpoint_value(i, {}))["name"]


def add_taps(ns: NetNS, names: Iterable[str]) -> None:
    """Host-side TAP stand-ins: veth pairs whose both ends stay in the host namespace (the
    peer of `tapX` is `tapXp`)."""
    lines = []
    for name in names:
        lines += [
            f"link add {name} type veth peer name {name}p",
            f"link set {name} up",
            f"link set {name}p up",
        ]
    subprocess.run(
        ["ip", "-n", ns.name, "-batch", "-"], input="\n".join(lines) + "\n", text=True, check=True
    )


# -- process accounting ---------------------------------------------------------------------


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(c) for c in text]
    return out


def process_tree(pid: int) -> list[int]:
    tree = [pid]
    for child in children(pid):
        tree += process_tree(child)
    return tree


def python_processes(root: int) -> dict[str, int]:
    """calico-felix and its dataplane driver under ``ip netns exec``."""
    found: dict[str, int] = {}
    for pid in process_tree(root):
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        if "calico.felix.driver" in cmd or "dataplane.driver" in cmd:
            found["driver"] = pid
        elif "calico-felix" in cmd and "netns" not in cmd:
            found["felix"] = pid
    return found


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the kernel floor -----------------------------------------------------------------------


def dump_ruleset(ns: NetNS) -> dict[str, str]:
    """iptables-save of both families and ipset save, as Felix left them."""
    return {
        "v4": ns.run(["iptables-save"]).stdout,
        "v6": ns.run(["ip6tables-save"]).stdout,
        "ipset": ns.run(["ipset", "save"]).stdout,
    }


def count_rules(dump: dict[str, str]) -> dict[str, int]:
    lines = (dump["v4"] + dump["v6"]).splitlines()
    return {
        "rules": sum(1 for line in lines if line.startswith("-A ")),
        "chains": sum(1 for line in lines if line.startswith(":felix-")),
        "ipset_members": sum(1 for line in dump["ipset"].splitlines() if line.startswith("add ")),
    }


def timed(ns: NetNS, argv: list[str], stdin: str) -> float:
    started = time.perf_counter()
    ns.run(argv, input=stdin)
    return time.perf_counter() - started


def floor(dump: dict[str, str], backend: str, runs: int) -> dict[str, float]:
    """Median seconds to load the dump into fresh namespaces (ipsets first: rules use them)."""
    ipset, iptables = [], []
    for _ in range(runs):
        with NetNS() as ns:
            ipset.append(timed(ns, ["ipset", "restore"], dump["ipset"]))
            iptables.append(
                timed(ns, [f"iptables-{backend}-restore"], dump["v4"])
                + timed(ns, [f"ip6tables-{backend}-restore"], dump["v6"])
            )
    return {
        "iptables_restore_s": round(statistics.median(iptables), 3),
        "ipset_restore_s": round(statistics.median(ipset), 3),
        "total_s": round(statistics.median(iptables) + statistics.median(ipset), 3),
    }


def incremental_floor(
    ns: NetNS, chains: list[str], runs: int = 5, watch: nft_kernel.GenerationWatch | None = None
) -> float:
    """Median seconds of one restore that rewrites just these chains (their current content):
    to its nf_tables commit with a `watch` (as the changes are timed then), else to its exit."""
    lines = ["*filter"] + [f":{chain} - [0:0]" for chain in chains]
    for chain in chains:
        lines += [line for line in chain_rules(ns, chain) if line.startswith("-A ")]
    text = "\n".join([*lines, "COMMIT"]) + "\n"
    argv = ["iptables-restore", "--noflush"]
    if watch is not None:
        samples = [
            nft_kernel.to_commit(watch, lambda: ns.run(argv, input=text)) for _ in range(runs)
        ]
    else:
        samples = [timed(ns, argv, text) for _ in range(runs)]
    return statistics.median(samples)


def delete_floor(
    ns: NetNS,
    rewritten: list[str],
    template: list[str],
    runs: int = 5,
    watch: nft_kernel.GenerationWatch | None = None,
) -> float:
    """Median seconds of one restore like an endpoint delete's: `rewritten` (the dispatch
    chains that held the endpoint, those that still exist) rewritten with their current rules,
    and two endpoint chains emptied and deleted. Those two are copies of `template` (a live
    endpoint's chains) under names outside Felix's `felix-` (so its refresh leaves them alone),
    made before each sample and not timed. Timed as incremental_floor."""

    def appended(chain: str) -> list[str]:
        return [rule for rule in chain_rules(ns, chain) if rule.startswith("-A ")]

    rules = {chain: appended(chain) for chain in template}
    rewritten = [chain for chain in rewritten if chain_rules(ns, chain)]
    rewrite = [rule for chain in rewritten for rule in appended(chain)]
    argv = ["iptables-restore", "--noflush"]
    samples = []
    for k in range(runs):
        copies = {f"bench-del{k}-{j}": chain for j, chain in enumerate(template)}
        made = [f":{copy} - [0:0]" for copy in copies]
        for copy, chain in copies.items():
            made += [r.replace(f"-A {chain} ", f"-A {copy} ", 1) for r in rules[chain]]
        before = time.monotonic()
        ns.run(argv, input="\n".join(["*filter", *made, "COMMIT"]) + "\n")
        deleted = False
        try:
            if watch is not None and watch.next_after(before, 5.0) is None:
                raise RuntimeError("the copies' restore made no nf_tables commit")
            declares = [f":{chain} - [0:0]" for chain in [*rewritten, *copies]]
            deletes = [f"-X {copy}" for copy in copies]
            text = "\n".join(["*filter", *declares, *rewrite, *deletes, "COMMIT"]) + "\n"
            if watch is not None:
                restore = functools.partial(ns.run, argv, input=text)
                samples.append(nft_kernel.to_commit(watch, restore))
            else:
                samples.append(timed(ns, argv, text))
            deleted = True
        finally:
            for copy in [] if deleted else copies:
                ns.run(["iptables", "-w", "-F", copy], check=False)
                ns.run(["iptables", "-w", "-X", copy], check=False)
    return statistics.median(samples)


# -- change latency -------------------------------------------------------------------------


def chain_rules(ns: NetNS, chain: str) -> list[str]:
    proc = ns.run(["iptables", "-w", "-S", chain], check=False)
    return proc.stdout.splitlines() if proc.returncode == 0 else []


def dispatch_chains_holding(ns: NetNS, interface: str) -> list[str]:
    """The dispatch chains whose rules send `interface` to its endpoint chains: the root, or the
    leaf for its group of names. An endpoint add rewrites them along with the endpoint's own
    chains, so the incremental floor of an add restores them too."""
    holding = []
    for root, flag in ((names.CHAIN_FROM_ENDPOINT, "-i"), (names.CHAIN_TO_ENDPOINT, "-o")):
        for rule in chain_rules(ns, root):
            parts = rule.split()  # -A <root> -i <name or prefix+> -g <chain>
            if len(parts) < 6 or parts[2] != flag:
                continue
            name = parts[3]
            if name == interface:
                holding.append(root)
            elif name.endswith("+") and interface.startswith(name[:-1]):
                holding.append(parts[5])
    return holding


def probe_cost_ms(ns: NetNS, runs: int = 10) -> float:
    """Median milliseconds of one `iptables -S <chain>` poll at this scale."""
    chain = names.profile_chain("prof0", inbound=True)
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        chain_rules(ns, chain)
        samples.append(time.perf_counter() - started)
    return round(statistics.median(samples) * 1000, 1)


def has_port(ns: NetNS, chain: str, port: int) -> bool:
    return any(f"--dports {port} " in rule + " " for rule in chain_rules(ns, chain))


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class ChangeTimeout(Exception):
    """A change did not reach the kernel within CHANGE_TIMEOUT."""


def time_until(predicate: Callable[[], bool], timeout: float = CHANGE_TIMEOUT) -> float:
    """Poll until `predicate()`; the monotonic time at which its successful call started."""
    started = time.perf_counter()
    while True:
        checked = time.monotonic()
        if predicate():
            return checked
        if time.perf_counter() - started > timeout:
            raise ChangeTimeout(f"the change did not reach the kernel within {timeout:.0f} s")
        time.sleep(POLL_INTERVAL)


class Kernel:
    """Reading one rules backend's chains, and timing a change to the kernel (iptables: until a
    poll shows it, the poll included; nftables: to the commit, see bench/nft_kernel.py)."""

    def __init__(self, ns: NetNS, backend: str) -> None:
        self.ns = ns
        self.nftables = backend == "nftables"
        # iptables-nft's restores are nf_tables commits too: a change is timed to its commit,
        # as with nftables, not to a poll of `iptables -S` (2.7 ms a poll at 1,000 endpoints,
        # and a poll loop takes one of this machine's two cores from Felix while it works).
        version = ns.run(["iptables", "--version"], check=False).stdout
        self.commits = self.nftables or "nf_tables" in version
        self.watch = nft_kernel.GenerationWatch(ns) if self.commits else None

    def rules(self, chain: str) -> list[str]:
        """A chain's rules; with nftables also those of the shared program an endpoint chain
        goes to (its tiers and profiles, bench/nft_kernel.py)."""
        if not self.nftables:
            return chain_rules(self.ns, chain)
        return nft_kernel.chain_rules(self.ns, chain, follow_programs=True)

    def has_port(self, chain: str, port: int) -> bool:
        needle = f"dport {port} " if self.nftables else f"--dports {port} "
        return any(needle in rule + " " for rule in self.rules(chain))

    def timed(
        self,
        write: Callable[[], None],
        done: Callable[[], bool],
        settle: float = 0.0,
        both_families: bool = False,
    ) -> float:
        """Seconds from the start of `write()` until `done()`; with commits to watch, until the
        last commit before the listing that showed it done. `settle`: list only once no commit
        came for that long (a burst: Felix commits again and again, and a listing each time
        would take the CPU from it; the result is the same commit, listed later).

        With iptables, `done` reads IPv4 chains (`iptables -S`), so only iptables-restore's
        commits count, unless `both_families`: ip6tables-restore's follows Felix's IPv4 commit
        by about 20 ms, and a listing at 1,000 endpoints takes about as long, so it often landed
        inside the listing and was taken for the change's commit."""
        if self.watch is None:
            started = time.perf_counter()
            write()
            time_until(done)
            return time.perf_counter() - started
        # nftables: list the chain only after a new generation, once for all the commits seen
        # by then (a listing costs a cache fetch of the whole table, which would compete with
        # Felix for the CPU: a burst commits several times while it is written), and time the
        # change to the last commit before the listing that shows it ended.
        started = time.monotonic()
        write()
        seen = started
        while True:
            bump = self.watch.next_after(seen, CHANGE_TIMEOUT)
            if bump is None:
                raise ChangeTimeout(f"no nftables commit within {CHANGE_TIMEOUT:.0f} s")
            seen = max(bump, self.watch.newest())
            while settle and self.watch.next_after(seen, settle) is not None:
                seen = self.watch.newest()
            if done():
                tool = None if self.nftables or both_families else "iptables-"
                committed = self.watch.last_before(time.monotonic(), started, tool)
                assert committed is not None
                return committed - started

    def incremental_floor(self, chains: list[str]) -> float:
        if self.nftables:
            return nft_kernel.incremental_floor(self.ns, chains, watch=self.watch)
        return incremental_floor(self.ns, chains, watch=self.watch)

    def delete_floor(self, rewritten: list[str], template: list[str]) -> float | None:
        """iptables only: the nftables delete is timed against its own target (< 10 ms)."""
        if self.nftables:
            return None
        return delete_floor(self.ns, rewritten, template, watch=self.watch)

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()


class Changes:
    """Each change is one etcd write, then a poll of the chain that must show it."""

    def __init__(self, etcd: EtcdServer, host: ComputeHost, local: int, kernel: Kernel):
        self.etcd, self.ns, self.local, self.kernel = etcd, host.ns, local, kernel
        self.next_new = data.ENDPOINTS + REMOTE  # indices for added endpoints
        self.version = 0
        self.added: list[int] = []  # endpoints endpoint_add made, for endpoint_delete

    def _timed(self, write: Callable[[], None], done: Callable[[], bool]) -> float:
        return self.kernel.timed(write, done)

    def profile_rule(self, k: int) -> tuple[float, list[str]]:
        self.version += 1
        port = 1000 + self.version
        profile = f"prof{k % data.PROFILES}"
        chain = names.profile_chain(profile, inbound=True)
        rules = {
            "inbound_rules": [{"protocol": "tcp", "dst_ports": [port]}],
            "outbound_rules": [{}],
        }
        key = f"/calico/v1/policy/profile/{profile}/rules"
        took = self._timed(
            lambda: put(self.etcd, key, rules),
            lambda: self.kernel.has_port(chain, port),
        )
        return took, [chain]

    def policy_rule(self, k: int) -> tuple[float, list[str]]:
        self.version += 1
        port = 2000 + self.version
        q = k % data.POLICIES
        chain = names.policy_chain("default", f"pol{q}", inbound=True)
        policy = {
            "selector": f"tier == 't{q % 10}'",
            "order": q,
            "inbound_rules": [{"action": "allow", "protocol": "tcp", "dst_ports": [port]}],
            "outbound_rules": [{"action": "allow"}],
        }
        took = self._timed(
            lambda: put(self.etcd, f"/calico/v1/policy/tier/default/policy/pol{q}", policy),
            lambda: self.kernel.has_port(chain, port),
        )
        return took, [chain]

    def label_change(self, k: int) -> tuple[float, list[str]]:
        """Move a local endpoint to another `tier` label, so other policies apply to it."""
        i = k % self.local
        labels = data.endpoint_labels(i)
        old_tier = labels["tier"]
        labels["tier"] = f"t{(int(old_tier[1:]) + 1 + self.version % 9) % 10}"
        self.version += 1
        new_policy = names.policy_chain("default", f"pol{int(labels['tier'][1:])}", True)
        chain = names.endpoint_chain("to", tap(i), PREFIXES)
        took = self._timed(
            lambda: put(
                self.etcd, data.endpoint_key(i, self.local), data.endpoint_value(i, labels)
            ),
            lambda: any(new_policy in r for r in self.kernel.rules(chain)),
        )
        put(
            self.etcd,
            data.endpoint_key(i, self.local),
            data.endpoint_value(i, data.endpoint_labels(i)),
        )
        # Wait for the revert too, so it does not overlap (and slow) the next measured change.
        try:
            time_until(lambda: not any(new_policy in r for r in self.kernel.rules(chain)))
        except ChangeTimeout:
            progress(f"the revert of label change {k} did not reach the kernel")
        return took, [chain, names.endpoint_chain("from", tap(i), PREFIXES)]

    def endpoint_add(self, _k: int) -> tuple[float, list[str]]:
        i = self.next_new
        self.next_new += 1
        add_taps(self.ns, [tap(i)])
        chain = names.endpoint_chain("to", tap(i), PREFIXES)
        key = data.endpoint_key(i, local=i + 1)  # on this host
        self.added.append(i)  # (also if it times out: the key is written either way)
        took = self._timed(
            lambda: put(self.etcd, key, data.endpoint_value(i, data.endpoint_labels(i))),
            lambda: bool(self.kernel.rules(chain)),
        )
        touched = [chain, names.endpoint_chain("from", tap(i), PREFIXES)]
        if not self.kernel.nftables:  # (nftables: the dispatch is a map, changed by element)
            touched += dispatch_chains_holding(self.ns, tap(i))
        return took, touched

    def endpoint_delete(self, _k: int) -> tuple[float, list[str]]:
        i = self.added.pop()
        chain = names.endpoint_chain("to", tap(i), PREFIXES)
        key = data.endpoint_key(i, local=i + 1)
        holding = [] if self.kernel.nftables else dispatch_chains_holding(self.ns, tap(i))
        took = self._timed(
            lambda: self.etcd.v2_delete(key),
            lambda: not self.kernel.rules(chain),
        )
        return took, holding

    def floor(self, kind: str, chains: list[str]) -> float | None:
        """The incremental floor of a change that touched `chains` (see measure_changes)."""
        if kind != "endpoint delete":
            return self.kernel.incremental_floor(chains)
        # The deleted endpoint's chains are gone: a live endpoint's stand in for them.
        template = [names.endpoint_chain(d, tap(0), PREFIXES) for d in ("to", "from")]
        return self.kernel.delete_floor(chains, template)


def measure_changes(
    changes: Changes, count: int, alive: Callable[[], bool] = lambda: True
) -> dict[str, dict[str, float]]:
    """`alive`: whether Felix still runs (a timeout after it died ends the run instead)."""
    results: dict[str, dict[str, float]] = {}
    kinds: list[tuple[str, Callable[[int], tuple[float, list[str]]]]] = [
        ("profile rule change", changes.profile_rule),
        ("policy rule change", changes.policy_rule),
        ("endpoint label change", changes.label_change),
        ("endpoint add", changes.endpoint_add),
        ("endpoint delete", changes.endpoint_delete),
    ]
    for name, change in kinds:
        progress(f"{count} x {name}")
        samples: list[float] = []
        chains: list[str] = []
        timeouts = 0
        for k in range(count):
            try:
                took, changed = change(k * 7 + 3)
            except ChangeTimeout as e:
                if not alive():
                    raise RuntimeError("calico-felix exited during the change measurements") from e
                # A failed sample, recorded as the time waited (so it shows in the p99), not
                # the end of the run: the other measurements are still worth having.
                progress(f"{name} {k}: {e}")
                took, changed = CHANGE_TIMEOUT, []
                timeouts += 1
            samples.append(took)
            chains = changed or chains
            time.sleep(0.05)  # let Felix settle: each change is measured alone
        samples.sort()
        entry = {
            "median_ms": round(statistics.median(samples) * 1000, 1),
            "p99_ms": round(samples[max(0, int(len(samples) * 0.99) - 1)] * 1000, 1),
            "changes": count,
            "timeouts": timeouts,
        }
        floor_s = changes.floor(name, chains) if chains else None
        if floor_s is not None:
            entry["incremental_floor_ms"] = round(floor_s * 1000, 1)
        results[name] = entry
    return results


# -- the run --------------------------------------------------------------------------------


@contextmanager
def lab(local: int, work: Path) -> Iterator[tuple[EtcdServer, ComputeHost, dict[str, float]]]:
    keys = data.datastore(endpoints=local + REMOTE, local=local)
    with EtcdServer(work / "etcd", name="bench") as etcd:
        progress(f"loading {len(keys)} keys into etcd")
        load_secs = load_etcd(etcd, keys)
        with ComputeHost(etcd, hostname=data.LOCAL_HOST, work_dir=work) as host:
            started = time.monotonic()
            add_taps(host.ns, map(tap, range(local)))
            info = {"keys": len(keys), "etcd_load_s": round(load_secs, 2)}
            info["taps_s"] = round(time.monotonic() - started, 2)
            yield etcd, host, info


def run(
    local: int,
    count: int,
    floor_runs: int,
    felix_log: Path | None,
    interface_poll: str | None = None,
    backend: str = "iptables",
) -> dict[str, object]:
    nftables = backend == "nftables"
    with tempfile.TemporaryDirectory(prefix="calico-bench-") as tmp:
        with lab(local, Path(tmp)) as (etcd, host, info):
            progress(f"starting calico-felix ({backend})")
            # Felix's default HostInterfacePollInterval unless asked (to isolate its cost).
            poll = {"FELIX_HOSTINTERFACEPOLLINTERVAL": interface_poll} if interface_poll else {}
            poll["FELIX_NFTABLESMODE"] = "Enabled" if nftables else "Disabled"
            started = time.monotonic()
            felix: FelixProcess = host.start_felix(
                poll,
                FELIX_IPTABLESREFRESHINTERVAL="0",
                FELIX_STARTUPCLEANUPDELAY=str(CLEANUP_DELAY),
                FELIX_LOGSEVERITYFILE="none",
                FELIX_LOGFILEPATH="none",
            )
            felix.wait_for("Dataplane programmed", timeout=600)
            cold_start = time.monotonic() - started
            # Changes are timed in the steady state: after the one-off start-of-day cleanup (a
            # full re-read of the kernel), which would otherwise land in the middle of them.
            felix.wait_for("Start-of-day cleanup done", timeout=CLEANUP_DELAY + 120)
            procs = python_processes(felix.proc.pid)
            rss = {name: round(peak_rss_mb(pid), 1) for name, pid in procs.items()}
            cpu = {name: round(cpu_seconds(pid), 2) for name, pid in procs.items()}
            if nftables:
                table = nft_kernel.dump(host.ns)
                sizes = nft_kernel.count(table)
            else:
                dump = dump_ruleset(host.ns)
                sizes = count_rules(dump)
            kernel = Kernel(host.ns, backend)
            try:
                latency = measure_changes(
                    Changes(etcd, host, local, kernel),
                    count,
                    alive=lambda: felix.proc.poll() is None,
                )
            finally:
                kernel.close()
            rss_after = {name: round(peak_rss_mb(pid), 1) for name, pid in procs.items()}
            probe_ms = probe_cost_ms(host.ns) if not nftables else None
            felix.stop()
            if felix_log is not None:
                felix_log.write_text(felix.text())
        progress("kernel floor")
        if nftables:
            floors = {"nft -f": nft_kernel.floor(table, floor_runs)}
            own_floor = floors["nft -f"]["total_s"]
        else:
            floors = {b: floor(dump, b, floor_runs) for b in ("nft", "legacy")}
            own_floor = floors["nft"]["total_s"]
    return {
        "backend": backend,
        "scale": {"local_endpoints": local, "remote_endpoints": REMOTE, **info, **sizes},
        "cold_start_s": round(cold_start, 2),
        "floor": floors,
        "cold_start_over_nft_floor": round(cold_start / own_floor, 2),
        "peak_rss_mb_after_start": rss,
        "peak_rss_mb_after_changes": rss_after,
        "cpu_s_at_programmed": cpu,
        "change_latency": latency,
        # What one poll of a chain (`iptables -S <chain>`) costs: the resolution of the change
        # timings above when they include the poll that sees the change ("poll": the legacy
        # backend); "commit": timed to the nf_tables commit, bench/nft_kernel.py.
        "probe_ms": probe_ms,
        "change_timing": "commit" if kernel.commits else "poll",
        "host_interface_poll_interval": interface_poll or "default",
        **report.environment(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local", type=int, default=1000, help="local endpoints")
    parser.add_argument("--changes", type=int, default=50, help="changes of each kind")
    parser.add_argument("--floor-runs", type=int, default=3)
    parser.add_argument("--backend", choices=("iptables", "nftables"), default="iptables")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--felix-log", type=Path, help="keep calico-felix's output here")
    parser.add_argument(
        "--interface-poll", help="HostInterfacePollInterval for Felix (default: Felix's own)"
    )
    args = parser.parse_args()
    result = run(
        args.local,
        args.changes,
        args.floor_runs,
        args.felix_log,
        args.interface_poll,
        args.backend,
    )
    report.emit(result, args.json)


if __name__ == "__main__":
    main()
