"""`make demo`: a small Calico cloud on one machine, and what it does.

Everything runs inside network namespaces this demo creates (the root namespace is never
touched) against a private etcd cluster on loopback ports, and is torn down at the end, also on
Ctrl-C:

1. A three-member etcd cluster (Debian's etcd on 127.0.0.1).
2. A fabric (a bridge inside its own namespace) and three compute hosts on it, each running
   BIRD, ``calico-bgp`` and ``calico-felix``; the BGP sessions of the mesh, from ``calico-bgp
   status``.
3. Five VMs spread over the hosts, three security groups and a tier of policy, as Neutron's
   Calico driver would write them; the routes BGP carried between the hosts.
4. Who can reach whom across hosts (ping, ping6, tcp/80, tcp/5432, tcp/22), every cell checked
   against what the policy says.
5. A live change: one VM is labelled ``quarantine=true``; the time from the etcd write to each
   far host's kernel (the quarantine selector's IP set there), then the matrix again.
6. A VM deleted: its route withdrawn from the other hosts (timed), its address unreachable.
7. The etcd leader killed: the matrix still holds, and a change made afterwards still reaches
   every host.
"""

from __future__ import annotations

import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType

from calico.common.datamodel_v1 import PolicyKey, ProfileRulesKey, ProfileTagsKey, TierMetadataKey
from calico.common.selectors import parse_selector
from calico.felix.dataplane import names
from calico.lab import flows
from calico.lab.cloud import Cloud
from calico.lab.dataplane_view import DataplaneView
from calico.lab.etcd_cluster import EtcdCluster
from calico.lab.fabric import FabricHost
from calico.lab.flows import Flow
from calico.lab.probes import ping, wait_until
from calico.lab.watch import RouteMonitor

TIER = "platform"
HOSTS = ["compute-1", "compute-2", "compute-3"]
QUARANTINE = "quarantine == 'true'"

# (name, host index, security group, labels)
VMS = [
    ("web-1", 0, "sg-web", {"role": "web"}),
    ("ops-1", 0, "sg-ops", {"role": "ops"}),
    ("web-2", 1, "sg-web", {"role": "web"}),
    ("db-1", 2, "sg-db", {"role": "db"}),
    ("web-3", 2, "sg-web", {"role": "web"}),
]
ROLE = {name: labels["role"] for name, _, _, labels in VMS}
QUARANTINED = "web-2"
DELETED = "web-3"

# Security groups, as the Neutron driver writes them: every VM may send anything; what it
# accepts is decided by its inbound rules (tags name the other members of a group, wherever
# they run).
PROFILES: dict[str, dict[str, object]] = {
    "sg-web": {
        "inbound_rules": [
            {"action": "allow", "protocol": "tcp", "dst_ports": [80]},
            {"action": "allow", "protocol": "icmp", "src_tag": "sg-web"},
            {"action": "allow", "protocol": "icmpv6", "src_tag": "sg-web"},
        ],
        "outbound_rules": [{"action": "allow"}],
    },
    "sg-db": {
        "inbound_rules": [
            {"action": "allow", "protocol": "tcp", "dst_ports": [5432], "src_tag": "sg-web"},
            {"action": "allow", "protocol": "icmp", "src_tag": "sg-web"},
            {"action": "allow", "protocol": "icmpv6", "src_tag": "sg-web"},
        ],
        "outbound_rules": [{"action": "allow"}],
    },
    "sg-ops": {"inbound_rules": [], "outbound_rules": [{"action": "allow"}]},
}

# A tier of policy evaluated before the security groups. "quarantine" applies to every VM and
# cuts it off from any VM labelled quarantine=true (nobody is, at first): a label change on one
# host changes the selector's IP set on every host. "ops-access" lets the ops VM ping and ssh
# anything, then hands over to the next tier (here: the security groups).
POLICIES: dict[str, dict[str, object]] = {
    "quarantine": {
        "order": 1,
        "selector": "all()",
        "inbound_rules": [{"action": "deny", "src_selector": QUARANTINE}],
        "outbound_rules": [{"action": "deny", "dst_selector": QUARANTINE}],
    },
    "ops-access": {
        "order": 10,
        "selector": "all()",
        "inbound_rules": [
            {
                "action": "allow",
                "protocol": "tcp",
                "dst_ports": [22],
                "src_selector": "role == 'ops'",
            },
            {"action": "allow", "protocol": "icmp", "src_selector": "role == 'ops'"},
            {"action": "allow", "protocol": "icmpv6", "src_selector": "role == 'ops'"},
            {"action": "next-tier"},
        ],
        "outbound_rules": [{"action": "next-tier"}],
    },
}

# (column, protocol, port, IPv6)
PROBES = [
    ("ping", "icmp", None, False),
    ("ping6", "icmp", None, True),
    ("tcp/80", "tcp", 80, False),
    ("tcp/5432", "tcp", 5432, False),
    ("tcp/22", "tcp", 22, False),
]

Matrix = dict[tuple[str, str, str], bool]


def expected_matrix(vms: Iterable[str] = ROLE, quarantined: frozenset[str] = frozenset()) -> Matrix:
    """What the profiles and the policy tier above say, worked out by hand."""
    present = list(vms)
    out: Matrix = {}
    for src in present:
        for dst in present:
            if src == dst:
                continue
            for column, _, port, _ in PROBES:
                ping_column = column.startswith("ping")
                if src in quarantined or dst in quarantined:
                    allowed = False
                elif ROLE[src] == "ops" and (ping_column or column == "tcp/22"):
                    allowed = True
                elif ROLE[dst] == "web":
                    allowed = port == 80 or (ping_column and ROLE[src] == "web")
                elif ROLE[dst] == "db":
                    allowed = ROLE[src] == "web" and (ping_column or column == "tcp/5432")
                else:
                    allowed = False
                out[(src, dst, column)] = allowed
    return out


def say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def measure(cloud: Cloud) -> Matrix:
    """Every cell of the matrix, probed once (in parallel: see calico.lab.flows.measure)."""
    cells = {
        Flow(src, dst, proto, port, v6=v6): (src, dst, column)
        for src in cloud.vms
        for dst in cloud.vms
        if src != dst
        for column, proto, port, v6 in PROBES
    }
    return {cells[flow]: ok for flow, ok in flows.measure(cloud.workloads(), cells).items()}


def print_matrix(cloud: Cloud, result: Matrix, expected: Matrix) -> int:
    """Print the matrix; return how many results differ from the expectation."""
    where = {name: vm.host.hostname.removeprefix("compute-") for name, vm in cloud.vms.items()}
    print("  from (host) -> to (host)   " + "".join(f"{c:>10}" for c, _, _, _ in PROBES))
    wrong = 0
    for src in cloud.vms:
        for dst in cloud.vms:
            if src == dst:
                continue
            cells = []
            for column, _, _, _ in PROBES:
                ok = result[(src, dst, column)]
                mark = "allow" if ok else "-"
                if ok != expected[(src, dst, column)]:
                    mark += "(!)"
                    wrong += 1
                cells.append(f"{mark:>10}")
            row = f"{src} ({where[src]}) -> {dst} ({where[dst]})"
            print(f"  {row:26}" + "".join(cells))
    if wrong:
        print(f"  (!) {wrong} result(s) differ from what the policy says")
    else:
        print(f"  every one of the {len(result)} cells is what the policy says")
    return wrong


def check_matrix(cloud: Cloud, quarantined: frozenset[str] = frozenset()) -> int:
    """Measure, and re-measure once the cells that disagree (a first IPv6 neighbour lookup
    can outlast a probe); print the matrix; the number of wrong cells."""
    expected = expected_matrix(cloud.vms, quarantined)
    result = measure(cloud)
    if any(result[cell] != expected[cell] for cell in result):
        time.sleep(1.0)
        result = measure(cloud)
    return print_matrix(cloud, result, expected)


def main() -> int:
    def on_sigterm(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with tempfile.TemporaryDirectory(prefix="calico-demo-") as tmp:
            return run_demo(Path(tmp))
    except KeyboardInterrupt:
        print("\ninterrupted: everything the demo made has been removed", flush=True)
        return 130


def run_demo(work: Path) -> int:
    started = time.monotonic()
    say("A three-member etcd cluster (Debian's etcd) on loopback ports")
    with EtcdCluster(work / "etcd", size=3, name="demo") as etcd:
        leader = etcd.leader()
        for m in etcd.members:
            print(f"  {m.name}: {m.client_url} (pid {m.pid}){'  leader' if m is leader else ''}")
        say("A fabric and three compute hosts, each running BIRD, calico-bgp and calico-felix")
        with Cloud(etcd, len(HOSTS), hostnames=HOSTS, work_dir=work / "cloud") as cloud:
            wrong = cloud_demo(etcd, cloud)
    say(
        "Cleaned up: Felix, calico-bgp and BIRD stopped, namespaces deleted, etcd stopped "
        f"({time.monotonic() - started:.0f} s in all)"
    )
    return 1 if wrong else 0


def cloud_demo(etcd: EtcdCluster, cloud: Cloud) -> int:
    fabric = cloud.fabric
    print(f"  fabric: namespace {fabric.ns.name}, bridge br0 {fabric.gateway}/24")
    for host in cloud.hosts:
        print(f"  {host.hostname}: namespace {host.ns.name}, eth0 {host.ip} {host.ip6}")
    began = time.monotonic()
    cloud.start()
    took = time.monotonic() - began
    print(f"  every BGP session Established and every host programmed {took:.1f} s after start")

    say("BGP sessions: `calico-bgp status` on compute-1")
    print("  " + cloud.bgp_status(cloud.hosts[0]).strip().replace("\n", "\n  "))
    for host in cloud.hosts[1:]:
        sessions = cloud.sessions(host)
        up = sum(info == "Established" for _, info in sessions.values())
        print(f"  {host.hostname}: {up} of {len(sessions)} sessions Established")

    say("VMs, and what the Neutron driver would write to etcd")
    load_policy(cloud)
    for name, index, group, labels in VMS:
        vm = cloud.add_vm(name, cloud.hosts[index], [group], labels)
        print(
            f"  {name:6} on {vm.host.hostname}  {vm.ip:10} {vm.ip6:14} {vm.workload.tap}  "
            f"{group:7} {labels}"
        )
    print("  sg-web: accepts tcp/80 from anyone, ping (v4 and v6) from sg-web members")
    print("  sg-db:  accepts tcp/5432 and ping (v4 and v6) from sg-web members")
    print("  sg-ops: accepts nothing")
    print(f"  tier {TIER!r} (before the security groups), for every VM:")
    print("    quarantine  (order 1):  deny anything from or to a VM labelled quarantine=true")
    print("    ops-access  (order 10): allow ping and tcp/22 from role=ops, then next-tier")

    if not wait_until(lambda: all(cloud.routed_everywhere(v) for v in cloud.vms.values()), 30):
        print("  (!) not every VM was routed everywhere within 30 s")
        return 1
    say("Routes BIRD learnt by BGP and installed (`ip route show proto bird`, IPv4)")
    show_learned_routes(cloud)
    web1, web2 = cloud.vms["web-1"].workload, cloud.vms["web-2"].workload
    wait_until(lambda: ping(web1, web2) and ping(web1, web2, v6=True), timeout=20)

    say("Who can reach whom across hosts ('allow' = the packet got through, '-' = dropped)")
    wrong = check_matrix(cloud)
    quarantined = frozenset({QUARANTINED})
    wrong += live_change(cloud, quarantined)
    wrong += delete_vm(cloud)
    wrong += kill_leader(etcd, cloud, quarantined)
    return wrong


def load_policy(cloud: Cloud) -> None:
    for name, rules in PROFILES.items():
        cloud.put(ProfileRulesKey(name).path, rules)
        cloud.put(ProfileTagsKey(name).path, [name])
    cloud.put(TierMetadataKey(TIER).path, {"order": 10})
    for name, policy in POLICIES.items():
        cloud.put(PolicyKey(TIER, name).path, policy)


def show_learned_routes(cloud: Cloud) -> None:
    owner = {vm.ip: f"{vm.name} on {vm.host.hostname}" for vm in cloud.vms.values()}
    for host in cloud.hosts:
        learnt = host.bird_routes()
        v6 = len(host.bird_routes(v6=True))
        print(f"  {host.hostname}: {len(learnt)} IPv4 and {v6} IPv6 routes from its peers")
        for dst, route in sorted(learnt.items()):
            print(f"    {dst:10} via {route.get('gateway', '?'):11} ({owner.get(dst, '?')})")


def time_to_sets(
    cloud: Cloud, set_name: str, ip: str, write: Callable[[], None]
) -> dict[str, float]:
    """Make the change (``write``); the seconds until ``ip`` is in (or, if it was there, out
    of) ``set_name`` in each host's kernel."""
    views = {host.hostname: DataplaneView(host.ns) for host in cloud.hosts}
    present = {h: ip in v.sets().get(set_name, set()) for h, v in views.items()}
    seen: dict[str, float] = {}
    started = time.monotonic()
    write()
    while len(seen) < len(views) and time.monotonic() - started < 30:
        for hostname, view in views.items():
            if (
                hostname not in seen
                and (ip in view.sets().get(set_name, set())) != present[hostname]
            ):
                seen[hostname] = time.monotonic() - started
    return seen


def print_times(cloud: Cloud, times: dict[str, float], owner: FabricHost, what: str) -> int:
    wrong = 0
    for host in cloud.hosts:
        kind = "its own host" if host is owner else "a far host"
        took = times.get(host.hostname)
        if took is None:
            print(f"  (!) {host.hostname} ({kind}): not in the kernel within 30 s")
            wrong += 1
        else:
            print(f"  etcd write -> {what} on {host.hostname} ({kind}): {ms(took)}")
    return wrong


def live_change(cloud: Cloud, quarantined: frozenset[str]) -> int:
    vm = cloud.vms[QUARANTINED]
    say(f"Live change: label {vm.name} on {vm.host.hostname} quarantine=true (one etcd write)")
    set_name = names.ipset_name(parse_selector(QUARANTINE).unique_id, 4)
    labels = {**vm.labels, "quarantine": "true"}
    times = time_to_sets(
        cloud, set_name, vm.ip, lambda: cloud.write_endpoint(vm.name, labels=labels)
    )
    wrong = print_times(cloud, times, vm.host, "the quarantine IP set")
    web1 = cloud.vms["web-1"].workload
    wait_until(lambda: not ping(web1, vm.workload), timeout=10)
    return wrong + check_matrix(cloud, quarantined)


def delete_vm(cloud: Cloud) -> int:
    vm = cloud.vms[DELETED]
    say(f"A VM deleted: {vm.name} on {vm.host.hostname} (its endpoint removed from etcd)")
    others = [host for host in cloud.hosts if host is not vm.host]
    monitors = {host.hostname: RouteMonitor(host.ns) for host in [vm.host, *others]}
    try:
        sent = time.time()
        cloud.delete_endpoint(vm.name)
        gone = wait_until(lambda: cloud.withdrawn_everywhere(vm), timeout=10, interval=0.02)
        for host in [vm.host, *others]:
            at = monitors[host.hostname].first(vm.ip, deleted=True)
            what = "Felix's route to the TAP" if host is vm.host else "BIRD's route"
            took = ms(at - sent) if at is not None else "never"
            print(f"  etcd delete -> {what} gone on {host.hostname}: {took}")
    finally:
        for monitor in monitors.values():
            monitor.close()
    reached = ping(cloud.vms["web-1"].workload, vm.workload)
    print(f"  web-1 -> {vm.name} ({vm.ip}): {'answered (!)' if reached else 'no answer'}")
    cloud.delete_vm(vm.name, endpoint=False)
    return 0 if gone and not reached else 1


def kill_leader(etcd: EtcdCluster, cloud: Cloud, quarantined: frozenset[str]) -> int:
    leader = etcd.leader()
    say(f"The etcd leader {leader.name} (pid {leader.pid}) killed with SIGKILL")
    etcd.kill(leader)
    began = time.monotonic()
    new = etcd.leader(timeout=20)
    print(f"  {new.name} leads {time.monotonic() - began:.1f} s later; two members of three run")
    print("  the matrix again, without the deleted VM:")
    wrong = check_matrix(cloud, quarantined)
    vm = cloud.vms[QUARANTINED]
    say(f"A change after the kill: the quarantine of {vm.name} lifted")
    set_name = names.ipset_name(parse_selector(QUARANTINE).unique_id, 4)
    labels = {k: v for k, v in vm.labels.items() if k != "quarantine"}
    times = time_to_sets(
        cloud, set_name, vm.ip, lambda: cloud.write_endpoint(vm.name, labels=labels)
    )
    wrong += print_times(cloud, times, vm.host, "out of the quarantine IP set")
    return wrong + check_matrix(cloud)


if __name__ == "__main__":
    sys.exit(main())
