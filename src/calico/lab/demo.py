"""`make demo`: what Calico does, shown on a lab compute host with four VMs.

Everything runs against a private etcd on a free loopback port and inside network namespaces
this demo creates (the root namespace is never touched), and is torn down at the end, also
on Ctrl-C:

1. A compute host namespace with an uplink to an "external" machine, and four VM namespaces
   joined to it by veth pairs named like Nova's TAP devices.
2. The data Neutron's Calico driver would write: one endpoint per VM, three security groups
   (profiles) and a tier of policy that applies before them.
3. ``calico-felix`` in the host namespace programs routes, proxy ARP/NDP, ipsets and
   iptables; the demo prints who can reach whom (ping, tcp/80, tcp/5432, tcp/22).
4. A live change: one VM is labelled ``quarantine=true``. The demo times how long the change
   takes from the etcd write to the kernel, and prints the matrix again.
5. A config change in etcd makes Felix restart (it exits for its service manager).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from calico.common.datamodel_v1 import (
    HostConfigKey,
    PolicyKey,
    ProfileRulesKey,
    ProfileTagsKey,
    ReadyKey,
    TierMetadataKey,
)
from calico.felix.dataplane import names
from calico.lab import flows
from calico.lab.etcd_server import EtcdServer
from calico.lab.felix import FelixProcess
from calico.lab.flows import Flow
from calico.lab.probes import ping, wait_until
from calico.lab.topology import ComputeHost, Workload

HOST = "demo-host-1"
TIER = "platform"

# (name, IPv4, IPv6, security group, labels)
VMS = [
    ("web-1", "10.65.0.2", "fd00:65::2", "sg-web", {"role": "web"}),
    ("web-2", "10.65.0.3", "fd00:65::3", "sg-web", {"role": "web"}),
    ("db-1", "10.65.0.4", "fd00:65::4", "sg-db", {"role": "db"}),
    ("ops-1", "10.65.0.5", "fd00:65::5", "sg-ops", {"role": "ops"}),
]

# Security groups, as the Neutron driver writes them: every VM may send anything; what it
# accepts is decided by its inbound rules.
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

# A tier of policy evaluated before the security groups. "quarantine" matches nothing at
# first; "ops-access" lets the ops VM ping and ssh anything, then hands over to the next
# tier (here: the security groups).
POLICIES: dict[str, dict[str, object]] = {
    "quarantine": {
        "order": 1,
        "selector": "quarantine == 'true'",
        "inbound_rules": [{"action": "deny"}],
        "outbound_rules": [{"action": "deny"}],
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
            {"action": "next-tier"},
        ],
        "outbound_rules": [{"action": "next-tier"}],
    },
}

VM_NAMES = [vm[0] for vm in VMS]

PROBES = [
    ("ping", "icmp", None),
    ("tcp/80", "tcp", 80),
    ("tcp/5432", "tcp", 5432),
    ("tcp/22", "tcp", 22),
]

Matrix = dict[tuple[str, str, str], bool]


def expected_matrix(quarantined: frozenset[str] = frozenset()) -> Matrix:
    """What the profiles and the policy tier above say, worked out by hand."""
    role = {name: labels["role"] for name, _, _, _, labels in VMS}
    out: Matrix = {}
    for src in VM_NAMES:
        for dst in VM_NAMES:
            if src == dst:
                continue
            for column, _, port in PROBES:
                if src in quarantined or dst in quarantined:
                    allowed = False
                elif role[src] == "ops" and column in ("ping", "tcp/22"):
                    allowed = True
                elif role[dst] == "web":
                    allowed = port == 80 or (column == "ping" and role[src] == "web")
                elif role[dst] == "db":
                    allowed = role[src] == "web" and column in ("ping", "tcp/5432")
                else:
                    allowed = False
                out[(src, dst, column)] = allowed
    return out


def say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def put(etcd: EtcdServer, key: str, value: object) -> None:
    etcd.v2_put(key, value if isinstance(value, str) else json.dumps(value))


def load_policy(etcd: EtcdServer) -> None:
    put(etcd, ReadyKey().path, "true")
    for name, rules in PROFILES.items():
        put(etcd, ProfileRulesKey(name).path, rules)
        put(etcd, ProfileTagsKey(name).path, [name])
    put(etcd, TierMetadataKey(TIER).path, {"order": 10})
    for name, policy in POLICIES.items():
        put(etcd, PolicyKey(TIER, name).path, policy)


def measure(vms: dict[str, Workload]) -> Matrix:
    """Every cell of the matrix, probed once (in parallel: see calico.lab.flows.measure)."""
    cells = {
        Flow(src, dst, proto, port): (src, dst, column)
        for src in vms
        for dst in vms
        if src != dst
        for column, proto, port in PROBES
    }
    return {cells[flow]: ok for flow, ok in flows.measure(vms, cells).items()}


def print_matrix(result: Matrix, expected: Matrix) -> int:
    """Print the matrix; return how many results differ from the expectation."""
    header = "  from -> to       " + "".join(f"{column:>10}" for column, _, _ in PROBES)
    print(header)
    wrong = 0
    for src in VM_NAMES:
        for dst in VM_NAMES:
            if src == dst:
                continue
            cells = []
            for column, _, _ in PROBES:
                ok = result[(src, dst, column)]
                mark = "allow" if ok else "-"
                if ok != expected[(src, dst, column)]:
                    mark += "(!)"
                    wrong += 1
                cells.append(f"{mark:>10}")
            print(f"  {src:6} -> {dst:7}" + "".join(cells))
    if wrong:
        print(f"  (!) {wrong} result(s) differ from what the policy says")
    return wrong


def time_until(predicate: Callable[[], bool], timeout: float = 30.0) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.005)
    return None


def main() -> int:
    try:
        with tempfile.TemporaryDirectory(prefix="calico-demo-") as tmp:
            return run_demo(Path(tmp))
    except KeyboardInterrupt:
        print("\ninterrupted: everything the demo made has been removed", flush=True)
        return 130


def run_demo(work: Path) -> int:
    say("A private etcd (v2 and v3 APIs) on a free loopback port")
    with EtcdServer(work / "etcd", name="demo") as etcd:
        print(f"  etcd at {etcd.client_url} (pid {etcd.pid})")
        with ComputeHost(etcd, hostname=HOST, work_dir=work, external=True) as host:
            wrong = dataplane_demo(etcd, host)
            config_change_demo(etcd, host)
    say("Cleaned up: felix stopped, namespaces deleted, etcd stopped")
    return 1 if wrong else 0


def dataplane_demo(etcd: EtcdServer, host: ComputeHost) -> int:
    say(f"Compute host {HOST!r} = namespace {host.name}, uplink to an external machine")
    vms: dict[str, Workload] = {}
    for name, ip, ip6, _, _ in VMS:
        vms[name] = host.add_workload(ip, ip6, label=name.replace("-", ""))
        print(f"  VM {name:6} namespace {vms[name].ns.name}  {ip:10} {ip6:12} on {vms[name].tap}")

    say("What the Neutron driver would write to etcd")
    load_policy(etcd)
    for name, _, _, sg, labels in VMS:
        put(etcd, vms[name].endpoint_key(), vms[name].endpoint_json([sg], labels))
        print(f"  endpoint {name:6} security group {sg:7} labels {labels}")
    print("  sg-web: accepts tcp/80 from anyone, ping (v4 and v6) from sg-web members")
    print("  sg-db:  accepts tcp/5432 and ping (v4 and v6) from sg-web members")
    print("  sg-ops: accepts nothing")
    print(f"  tier {TIER!r} (before the security groups):")
    print("    quarantine  (order 1):  VMs labelled quarantine=true: deny everything")
    print("    ops-access  (order 10): all VMs: allow ping and tcp/22 from role=ops, then")
    print("                            next-tier (the security groups decide)")

    say("calico-felix in the compute host")
    felix = host.start_felix(FELIX_IPV6SUPPORT="true")
    started = time.monotonic()
    felix.wait_for("Dataplane programmed", timeout=60)
    print(f"  programmed {time.monotonic() - started:.1f} s after start; routes it added:")
    for line in host.run(["ip", "route", "show", "proto", "80"]).stdout.splitlines():
        print(f"    {line}")
    web1, web2 = vms["web-1"], vms["web-2"]
    wait_until(lambda: ping(web1.ns, web2), timeout=20)
    wait_until(lambda: ping(web1.ns, web2, v6=True), timeout=20)
    v6 = "allowed" if ping(web1.ns, web2, v6=True) else "denied"
    out = "allowed" if host.external and ping(web1.ns, host.external) else "denied"
    print(f"  web-1 -> web-2 over IPv6: {v6}; web-1 -> external 198.18.0.2: {out}")

    say("Who can reach whom ('allow' = the packet got through, '-' = dropped)")
    wrong = print_matrix(measure(vms), expected_matrix())

    say("Live change: label web-2 quarantine=true (one etcd write)")
    _, _, _, sg, labels = VMS[1]
    quarantine_chain = names.policy_chain(TIER, "quarantine", inbound=True)
    put(etcd, web2.endpoint_key(), web2.endpoint_json([sg], {**labels, "quarantine": "true"}))
    took = time_until(lambda: f"-j {quarantine_chain}" in host.iptables("-S"))
    if took is None:
        print("  the change did not reach the kernel within 30 s")
        return wrong + 1
    print(f"  etcd write -> iptables in the kernel: {took * 1000:.0f} ms")
    wait_until(lambda: not ping(web1.ns, web2), timeout=10)
    wrong += print_matrix(measure(vms), expected_matrix(frozenset({"web-2"})))
    felix.stop()
    return wrong


def config_change_demo(etcd: EtcdServer, host: ComputeHost) -> None:
    say("A Felix config change in etcd: Felix exits for its service manager to restart it")
    felix: FelixProcess = host.start_felix()
    felix.wait_for(r"In sync with the datastore", timeout=60)
    put(etcd, HostConfigKey(HOST, "ReportingIntervalSecs").path, "60")
    started = time.monotonic()
    code = felix.wait_exit(timeout=30)
    changed = felix.wait_for(r"Felix configuration changed in etcd: [^\n]*")
    print(f"  {changed.group(0)}")
    print(f"  felix exited with status {code} after {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
