"""End to end: graceful restart (felix.md §4.4, §5.10 "Graceful restart", §5.13).

``kill -9`` Felix: its dataplane driver must notice the closed pipe and exit by itself, and the
kernel state they left keeps working: allowed flows keep flowing, denied ones stay denied. While
Felix is down the datastore changes (an endpoint and its profile go away, a rule changes). The
restarted Felix must not disturb flows that stay allowed while it starts (probed continuously
from a background thread), must program the new state once in sync, and must keep the previous
run's now-orphaned ``felix-`` chains and ipsets until ``StartupCleanupDelay`` after in-sync, then
remove them.

=====  =====  ===========  ===========  ==============================================
VM     octet  profile      own labels   inbound rules
=====  =====  ===========  ===========  ==============================================
A, B   2, 3   web          --           tcp/80 and ICMP from tag ``web``
C      4      db           --           tcp/5432 from ``web`` (6000 after the change)
D      5      gone         role=admin   tcp/22 from ``role == 'admin'`` (D is deleted)
=====  =====  ===========  ===========  ==============================================
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab_support import ALLOW, DENY, Expectation, Flow, Lab, reset_etcd

from calico.felix.dataplane import names
from calico.lab.etcd_server import EtcdServer
from calico.lab.flows import measure
from calico.lab.probes import wait_until

HOST = "e2e-restart-1"
CLEANUP_DELAY = 12  # StartupCleanupDelay (s): long enough to look at the orphans in between
DRIVER_EXIT_TIMEOUT = 10.0
PREFIXES = ("tap",)

WEB_RULES = {
    "inbound_rules": [
        {"protocol": "tcp", "dst_ports": [80], "src_tag": "web"},
        {"protocol": "icmp", "ip_version": 4, "src_tag": "web"},
        {"protocol": "icmpv6", "ip_version": 6, "src_tag": "web"},
    ],
    "outbound_rules": [{"action": "allow"}],
}
DB_RULES = {
    "inbound_rules": [{"protocol": "tcp", "dst_ports": [5432], "src_tag": "web"}],
    "outbound_rules": [{"action": "allow"}],
}
DB_RULES_CHANGED = {
    "inbound_rules": [{"protocol": "tcp", "dst_ports": [6000], "src_tag": "web"}],
    "outbound_rules": [{"action": "allow"}],
}
GONE_RULES = {
    "inbound_rules": [{"protocol": "tcp", "dst_ports": [22], "src_selector": "role == 'admin'"}],
    "outbound_rules": [{"action": "allow"}],
}
VMS: dict[str, tuple[int, str, dict[str, str]]] = {  # name: (octet, profile, own labels)
    "A": (2, "web", {}),
    "B": (3, "web", {}),
    "C": (4, "db", {}),
    "D": (5, "gone", {"role": "admin"}),
}


def tcp(src: str, dst: str, port: int, v6: bool = False) -> Flow:
    return Flow(src, dst, "tcp", port, v6)


def icmp(src: str, dst: str, v6: bool = False) -> Flow:
    return Flow(src, dst, "icmp", None, v6)


# Flows whose verdict the change in etcd does not touch: they must hold throughout.
STEADY: list[Expectation] = [
    (icmp("A", "B"), ALLOW),
    (icmp("B", "A", v6=True), ALLOW),
    (tcp("A", "B", 80), ALLOW),
    (tcp("B", "A", 80, v6=True), ALLOW),
    (tcp("C", "A", 80), DENY),  # C is not a web member
    (icmp("C", "B"), DENY),
]
BEFORE: list[Expectation] = [
    *STEADY,
    (tcp("D", "C", 5432), DENY),  # (D is deleted later: no rows from it after that)
    (tcp("A", "C", 5432), ALLOW),
    (tcp("A", "C", 6000), DENY),
]
AFTER: list[Expectation] = [
    *STEADY,
    (tcp("A", "C", 5432), DENY),
    (tcp("A", "C", 6000), ALLOW),
    (tcp("B", "C", 6000, v6=True), ALLOW),
]
# Probed in a loop while the new Felix starts: quick ones (ping; a denied ping costs 1 s).
DURING_START: list[Expectation] = [
    (icmp("A", "B"), ALLOW),
    (icmp("B", "A", v6=True), ALLOW),
    (tcp("A", "B", 80), ALLOW),
    (icmp("C", "B"), DENY),
]


def build(lab: Lab) -> None:
    for name, (octet, _, _) in VMS.items():
        lab.add_vm(name, octet)
    lab.put("/calico/v1/Ready", "true")
    lab.put_profile("web", WEB_RULES, tags=["web"])
    lab.put_profile("db", DB_RULES, tags=["db"])
    lab.put_profile("gone", GONE_RULES, tags=["gone"])
    for name, (_, profile, labels) in VMS.items():
        lab.put_endpoint(name, [profile], labels)


@pytest.fixture(scope="module")
def lab(
    backend: str, etcd_server: EtcdServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Lab]:
    reset_etcd(etcd_server)
    lab = Lab(etcd_server, tmp_path_factory.mktemp("restart"), HOST, "rst")
    try:
        build(lab)
        yield lab
    finally:
        lab.close()


# -- kernel state helpers ------------------------------------------------------------------------


def felix_chains(lab: Lab, v6: bool = False) -> set[str]:
    """Names of Felix's chains (iptables: the filter table of one family; nftables: its
    table, which serves both)."""
    return lab.view.chains(v6)


def felix_ipsets(lab: Lab) -> dict[str, set[str]]:
    """Felix's IP sets (ipsets, or the nftables table's address sets) and their members."""
    return lab.view.sets()


def endpoint_chains(lab: Lab, vm: str) -> set[str]:
    tap = lab.vms[vm].tap
    return {names.endpoint_chain(d, tap, PREFIXES) for d in ("to", "from")}


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (gone, or a zombie nobody has reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def driver_pid(lab: Lab) -> int:
    assert lab.felix is not None
    match = re.search(r"Started the dataplane driver \(pid (\d+)\)", lab.felix.text())
    assert match, "Felix did not log its dataplane driver's PID"
    return int(match.group(1))


class Prober(threading.Thread):
    """Probes one flow over and over until stopped; records every wrong verdict. One thread
    per flow, so a denied probe (which waits out its timeout) does not thin out the others."""

    def __init__(self, lab: Lab, flow: Flow, expected: bool, stop: threading.Event):
        super().__init__(name=f"probe {flow}", daemon=True)
        self.lab = lab
        self.flow = flow
        self.expected = expected
        self.stop = stop
        self.count = 0
        self.wrong: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        started = time.monotonic()
        try:
            while not self.stop.is_set():
                if measure(self.lab.vms, [self.flow])[self.flow] != self.expected:
                    verdict = "denied" if self.expected else "allowed"
                    self.wrong.append(f"{time.monotonic() - started:.1f} s: {self.flow} {verdict}")
                self.count += 1
        except BaseException as e:  # reported by the test, not lost in the thread
            self.error = e


def log_time(text: str, message: str) -> float:
    """The time (s since the epoch) of the first log line containing ``message``."""
    for line in text.splitlines():
        if message in line:
            stamp = time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")
            return time.mktime(stamp) + int(line[20:23]) / 1000
    raise AssertionError(f"no log line {message!r}")


# -- the test --------------------------------------------------------------------------------


def test_kill_restart_keeps_flows_and_sweeps_orphans_after_the_delay(lab: Lab) -> None:
    delay = str(CLEANUP_DELAY)
    first = lab.start_felix(FELIX_STARTUPCLEANUPDELAY=delay)
    lab.wait_pings("A", "B", timeout=20)
    lab.expect(BEFORE, what="first Felix")
    # Let the first run finish its own start-of-day cleanup, so what we see later is ours.
    first.wait_for("Start-of-day cleanup", timeout=CLEANUP_DELAY + 30)
    d = lab.vms["D"]
    old_chains = felix_chains(lab)
    old_chains6 = felix_chains(lab, v6=True)
    old_sets = felix_ipsets(lab)
    assert endpoint_chains(lab, "D") <= old_chains
    gone_profile = {names.profile_chain("gone", inbound) for inbound in (True, False)}
    assert gone_profile <= old_chains
    # The selector "role == 'admin'" matches D alone: its v4 and v6 sets hold just D's IPs.
    admin_sets = {n for n, members in old_sets.items() if members in ({d.ip}, {d.ip6})}
    assert len(admin_sets) == 2, f"expected D's selector sets (v4, v6) in {old_sets}"

    # kill -9 Felix. Its driver must see the pipe close and exit on its own.
    pid = driver_pid(lab)
    first.proc.kill()
    first.proc.wait(10)
    if not wait_until(lambda: process_gone(pid), DRIVER_EXIT_TIMEOUT):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:  # it exited after all, just too late
            cmdline = b""
        if b"calico.felix.driver" in cmdline:  # ours, not a reused PID
            os.kill(pid, signal.SIGKILL)
        pytest.fail(f"the dataplane driver (pid {pid}) outlived Felix by {DRIVER_EXIT_TIMEOUT} s")
    assert felix_chains(lab) == old_chains, "the dying driver changed the dataplane"
    lab.expect(BEFORE, need_felix=False, what="Felix and its driver dead")

    # Change the datastore while nothing watches it.
    lab.delete_endpoint("D")
    lab.delete("/calico/v1/policy/profile/gone", recursive=True)
    lab.put_profile("db", DB_RULES_CHANGED)

    # Restart, probing all the while.
    stop = threading.Event()
    probers = [Prober(lab, flow, expected, stop) for flow, expected in DURING_START]
    for prober in probers:
        prober.start()
    try:
        second = lab.host.start_felix(FELIX_IPV6SUPPORT="true", FELIX_STARTUPCLEANUPDELAY=delay)
        lab.felix = second
        second.wait_for("Dataplane programmed", timeout=40)
        # Right after in-sync: the orphans are still there (graceful restart).
        chains, chains6, sets = felix_chains(lab), felix_chains(lab, v6=True), felix_ipsets(lab)
        cleaned_early = "Start-of-day cleanup" in second.text()
        counts = [prober.count for prober in probers]
        # Keep probing a little after in-sync too: every flow at least twice more.
        wait_until(lambda: all(p.count >= c + 2 for p, c in zip(probers, counts, strict=True)), 30)
    finally:
        stop.set()
        for prober in probers:
            prober.join(30)
    for prober in probers:
        if prober.error is not None:
            raise prober.error
    wrong = [line for prober in probers for line in prober.wrong]
    summary = ", ".join(f"{p.flow}: {p.count} probes" for p in probers)
    print(f"probes during the restart: {summary}")
    if wrong:
        lab.fail(f"wrong verdicts while Felix restarted ({summary}):\n" + "\n".join(wrong))
    assert all(p.count >= 3 for p in probers), summary
    assert not cleaned_early, "the cleanup ran before we could look (machine too slow?)"
    missing = (old_chains - chains) | {f"v6 {c}" for c in old_chains6 - chains6}
    assert not missing, f"chains removed before StartupCleanupDelay: {sorted(missing)}"
    assert set(old_sets) <= set(sets), f"ipsets removed early: {set(old_sets) - set(sets)}"

    # The new state is in force at once.
    lab.expect(AFTER, what="restarted Felix")
    assert lab.host.route_to(d.ip) is None, "the deleted endpoint's route is still there"

    # After the delay the previous run's orphans go, and only they.
    orphans = endpoint_chains(lab, "D") | gone_profile
    second.wait_for("Start-of-day cleanup", timeout=CLEANUP_DELAY + 30)
    text = second.text()
    # Felix logs its in-sync just after sending it to the driver (hence a little slack).
    in_sync = log_time(text, "In sync with the datastore for the first time")
    waited = log_time(text, "Start-of-day cleanup") - in_sync
    assert waited >= CLEANUP_DELAY - 0.5, f"the cleanup ran {waited:.2f} s after in-sync"
    for v6 in (False, True):
        if not wait_until(lambda v6=v6: not (orphans & felix_chains(lab, v6)), 10):
            left = sorted(orphans & felix_chains(lab, v6))
            lab.fail(f"v{6 if v6 else 4} orphan chains left after the cleanup: {left}")
    assert wait_until(lambda: not (admin_sets & set(felix_ipsets(lab))), 10), "orphan ipsets"
    still_wanted = set().union(*(endpoint_chains(lab, vm) for vm in "ABC"))
    still_wanted |= {names.profile_chain(p, inbound) for p in ("web", "db") for inbound in (1, 0)}
    still_wanted |= {names.CHAIN_FORWARD, names.CHAIN_FROM_ENDPOINT, names.CHAIN_TO_ENDPOINT}
    assert still_wanted <= felix_chains(lab), sorted(still_wanted - felix_chains(lab))
    assert set(old_sets) - admin_sets <= set(felix_ipsets(lab))
    lab.expect(AFTER, what="after the cleanup")
