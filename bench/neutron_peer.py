"""Benchmark: Neutron's own iptables firewall against calico-felix, same ports, same rules.

The peer is ``neutron.agent.linux.iptables_firewall.IptablesFirewallDriver`` from the pinned
neutron (29.0.0, the `openstack` extra), driven as the L2 agent's ``SecurityGroupAgentRpc``
drives it: every operation inside one ``defer_apply()`` block. One security group holds
tcp/22 from anywhere, tcp/80-81, icmp, a remote-group rule to itself (an ipset of every port's
IP) and egress IPv4/IPv6. Timed, with N ports (default 500):

* batch: N ports prepared in one ``defer_apply`` (the agent starting with N ports);
* add one port with N present (with the group's member update), and remove it again.

The same scenario through calico-felix: one profile with the equivalent rules (its tag is the
remote group), N endpoints on TAP-named veths; batch = N endpoint keys written to etcd while
Felix runs (by 8 writer processes, as Neutron's API workers would) -> every endpoint's chains in
the kernel, IPv4 and IPv6; add one = one key written -> its chain and its IP in the tag's ipset.
Felix's figures end at the nf_tables commit that made the change visible (dataplane.Kernel),
not at a poll of the kernel: polling took one of the machine's two cores from Felix. Ratios are
Neutron's time over Felix's; the targets are >= 10x for one add and >= 3x for the batch.

The Neutron driver runs inside a lab namespace: this script re-executes itself under
``ip netns exec`` (``--inner``), with Neutron's root helper empty and oslo.privsep in
in-process mode, so every command runs directly (we are already root; no sudo).

``--backend nftables``: calico-felix runs NFTablesMode=Enabled (chains listed with ``nft list
chain``, the tag's set tested with ``nft get element``).

Run as root: `.venv/bin/python bench/neutron_peer.py [--ports N] [--runs R] [--backend B]
[--json F]`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from multiprocessing import Pool
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import nft_kernel
import report

import dataplane
from calico.felix.dataplane import names
from calico.lab.etcd_server import EtcdServer
from calico.lab.netns import NetNS
from calico.lab.topology import ComputeHost

SG_ID = "5f0c6a1e-0000-4000-8000-000000000001"
PROFILE = "sg1"
HOSTNAME = "host-0"
NET_ID = "9a1b2c3d-0000-4000-8000-000000000002"


def port_ip(i: int) -> str:
    return f"10.66.{i // 250}.{i % 250 + 1}"


def port_mac(i: int) -> str:
    return f"02:00:01:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"


def tap_name(i: int) -> str:
    # The varying digits first: Neutron names a port's chains after the first 10 characters
    # after "tap" (as from "tap" + the port UUID), so those must differ between ports.
    return f"tap{i:05d}abcdef"


# -- Neutron, inside the namespace ------------------------------------------------------------


def neutron_rules() -> list[dict[str, Any]]:
    """The security group, in the form the L2 agent hands the driver."""
    return [
        {
            "ethertype": "IPv4",
            "direction": "ingress",
            "protocol": "tcp",
            "port_range_min": 22,
            "port_range_max": 22,
            "source_ip_prefix": "0.0.0.0/0",
        },
        {
            "ethertype": "IPv4",
            "direction": "ingress",
            "protocol": "tcp",
            "port_range_min": 80,
            "port_range_max": 81,
        },
        {"ethertype": "IPv4", "direction": "ingress", "protocol": "icmp"},
        {"ethertype": "IPv4", "direction": "ingress", "remote_group_id": SG_ID},
        {"ethertype": "IPv4", "direction": "egress"},
        {"ethertype": "IPv6", "direction": "egress"},
    ]


def neutron_port(i: int) -> dict[str, Any]:
    return {
        "admin_state_up": True,
        "device": tap_name(i),
        "device_owner": "compute:nova",
        "fixed_ips": [port_ip(i)],
        "mac_address": port_mac(i),
        "port_security_enabled": True,
        "security_groups": [SG_ID],
        "status": "ACTIVE",
        "network_id": NET_ID,
    }


def members(count: int) -> dict[str, list[tuple[str, str]]]:
    """The group's members as the agent passes them: (IP, MAC) per port."""
    return {"IPv4": [(port_ip(i), port_mac(i)) for i in range(count)], "IPv6": []}


def make_driver(lock_dir: str) -> Any:
    """Neutron's driver configured to run commands directly (we are root, in the namespace)."""
    # Chains are named after the agent binary, which iptables_manager reads from sys.argv[0]
    # when it is imported: so set it first, then import (and only in the inner process).
    sys.argv[0] = "neutron-linuxbridge-agent"
    from neutron import privileged  # noqa: PLC0415
    from neutron.agent.linux import ip_conntrack, iptables_firewall  # noqa: PLC0415
    from neutron.conf.agent import common as agent_config  # noqa: PLC0415
    from neutron.conf.agent import securitygroups_rpc  # noqa: PLC0415
    from oslo_concurrency import lockutils  # noqa: PLC0415
    from oslo_config import cfg  # noqa: PLC0415

    agent_config.register_root_helper(cfg.CONF)
    securitygroups_rpc.register_securitygroups_opts(cfg.CONF)
    cfg.CONF([], project="neutron")
    # The iptables manager takes an external (file) lock around every apply.
    lockutils.set_defaults(lock_dir)
    # An empty root helper: commands run as they are, not under sudo/rootwrap.
    cfg.CONF.set_override("root_helper", "", "AGENT")
    cfg.CONF.set_override("enable_ipset", True, "SECURITYGROUP")
    # privsep in-process, as Neutron's functional tests run it: no privsep-helper daemon.
    privileged.default.set_client_mode(False)

    def no_worker(_self: Any) -> None:
        """The conntrack-cleanup thread never ends; nothing here needs it (as in Neutron's
        own functional tests, which mock it out)."""

    ip_conntrack.IpConntrackManager._process_queue_worker = no_worker  # type: ignore[method-assign]
    return iptables_firewall.IptablesFirewallDriver()


def neutron_inner(ports: int, runs: int) -> dict[str, object]:
    """Runs inside the namespace: time the driver; returns seconds (medians)."""
    with tempfile.TemporaryDirectory(prefix="neutron-lock-") as lock_dir:
        return time_driver(make_driver(lock_dir), ports, runs)


def time_driver(driver: Any, ports: int, runs: int) -> dict[str, object]:
    started = time.perf_counter()
    with driver.defer_apply():
        driver.update_security_group_rules(SG_ID, neutron_rules())
        driver.update_security_group_members(SG_ID, members(ports))
        for i in range(ports):
            driver.prepare_port_filter(neutron_port(i))
    batch = time.perf_counter() - started
    add: list[float] = []
    remove: list[float] = []
    for _ in range(runs):
        new = neutron_port(ports)
        started = time.perf_counter()
        with driver.defer_apply():
            driver.update_security_group_members(SG_ID, members(ports + 1))
            driver.prepare_port_filter(new)
        add.append(time.perf_counter() - started)
        started = time.perf_counter()
        with driver.defer_apply():
            driver.update_security_group_members(SG_ID, members(ports))
            driver.remove_port_filter(new)
        remove.append(time.perf_counter() - started)
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    return {
        "batch_s": round(batch, 4),
        "add_one_s": round(statistics.median(add), 4),
        "remove_one_s": round(statistics.median(remove), 4),
        "iptables_rules_v4": sum(1 for line in rules.splitlines() if line.startswith("-A ")),
    }


def neutron(ports: int, runs: int) -> dict[str, object]:
    """Run neutron_inner in a fresh lab namespace (a child process under `ip netns exec`)."""
    with NetNS() as ns:
        proc = ns.run(
            [sys.executable, __file__, "--inner", "--ports", str(ports), "--runs", str(runs)],
            timeout=1800,
        )
    return dict(json.loads(proc.stdout.splitlines()[-1]))


# -- calico-felix -----------------------------------------------------------------------------


def felix_keys() -> dict[str, str]:
    """The profile equivalent to the security group (its tag plays the remote group)."""
    base = f"/calico/v1/policy/profile/{PROFILE}"
    return {
        "/calico/v1/Ready": "true",
        base + "/tags": json.dumps([PROFILE]),
        base + "/rules": json.dumps(
            {
                "inbound_rules": [
                    {"protocol": "tcp", "dst_ports": [22], "src_net": "0.0.0.0/0"},
                    {"protocol": "tcp", "dst_ports": ["80:81"]},
                    {"protocol": "icmp"},
                    {"src_tag": PROFILE},
                ],
                "outbound_rules": [{}],
            }
        ),
    }


def endpoint_key(i: int) -> str:
    return f"/calico/v1/host/{HOSTNAME}/workload/openstack/vm{i}/endpoint/ep{i}"


def endpoint_value(i: int) -> str:
    return json.dumps(
        {
            "state": "active",
            "name": tap_name(i),
            "mac": port_mac(i),
            "profile_ids": [PROFILE],
            "ipv4_nets": [f"{port_ip(i)}/32"],
        }
    )


def rules_of(ns: NetNS, chain: str, nftables: bool) -> list[str]:
    return nft_kernel.chain_rules(ns, chain) if nftables else dataplane.chain_rules(ns, chain)


def programmed(ns: NetNS, i: int, nftables: bool = False) -> bool:
    chain = names.endpoint_chain("to", tap_name(i), dataplane.PREFIXES)
    return bool(rules_of(ns, chain, nftables))


def chains_with_rules(ns: NetNS, nftables: bool = False, tool: str = "iptables") -> set[str]:
    """Every chain that holds a rule: one listing of the whole table (iptables: `tool`'s)."""
    if not nftables:
        listed = ns.run([tool, "-w", "-S"]).stdout.splitlines()
        return {line.split()[1] for line in listed if line.startswith("-A ")}
    found: set[str] = set()
    chain = None
    for line in nft_kernel.dump(ns).splitlines():
        if line.startswith("\tchain "):
            chain = line.split()[1]
        elif chain and line.startswith("\t\t") and not line.strip().startswith("type "):
            found.add(chain)
        elif line.startswith("\t}"):
            chain = None
    return found


def all_programmed(ns: NetNS, ports: int, nftables: bool = False) -> bool:
    """Whether every one of the first `ports` endpoints has its chain, for IPv4 and IPv6 (as
    Neutron's batch writes both): the 8 writers end their shares in any order, so the last key
    written is not the last to be programmed. (nftables: one table holds both families.)"""
    wanted = {names.endpoint_chain("to", tap_name(i), dataplane.PREFIXES) for i in range(ports)}
    if nftables:
        return wanted <= chains_with_rules(ns, nftables)
    return all(wanted <= chains_with_rules(ns, False, tool) for tool in ("iptables", "ip6tables"))


def tag_set_name(ns: NetNS, nftables: bool = False) -> str:
    """The kernel name of the profile tag's set, as the profile's inbound chain uses it."""
    for rule in rules_of(ns, names.profile_chain(PROFILE, inbound=True), nftables):
        if "--match-set " in rule:
            return rule.split("--match-set ", 1)[1].split()[0]
        if "ip saddr @" in rule:
            return rule.split("ip saddr @", 1)[1].split()[0]
    raise RuntimeError("the profile chain has no remote-group (tag) rule")


def in_set(ns: NetNS, set_name: str, i: int, nftables: bool = False) -> bool:
    if nftables:
        return nft_kernel.has_set_element(ns, set_name, port_ip(i))
    return ns.run(["ipset", "test", set_name, port_ip(i)], check=False).returncode == 0


WRITERS = 8
# The burst's listing of the whole table waits for this long without a commit (Kernel.timed).
BURST_SETTLE = 0.03


def _write_share(job: tuple[str, list[tuple[str, str]]]) -> float:
    """One writer's share of the burst, on its own connection; the monotonic time it ended.

    http.client, not requests: a third of the CPU a write (requests spent 0.6 ms of CPU on
    each, and the writers share this machine's two cores with Felix; Neutron's server and etcd
    run on controllers, not on the compute host)."""
    url, items = job
    parsed = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname or "", parsed.port, timeout=30)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    try:
        for key, value in items:
            body = urllib.parse.urlencode({"value": value})
            connection.request("PUT", f"/v2/keys{urllib.parse.quote(key)}", body, headers)
            reply = connection.getresponse()
            reply.read()
            if reply.status not in (200, 201):
                raise RuntimeError(f"PUT {key}: HTTP {reply.status}")
    finally:
        connection.close()
    return time.monotonic()


class BurstWriter:
    """Writes a burst as Neutron's server would: each of its API workers is a process that
    writes the ports it creates. (Threads of this one process spent the 500 writes waiting for
    the interpreter's lock: 724 ms where 8 processes take 110-170 ms, hiding Felix's own time.)
    The processes start before the timing does."""

    def __init__(self, etcd: EtcdServer) -> None:
        self.url = etcd.client_url
        self.pool = Pool(WRITERS)
        self.pool.map(abs, range(WRITERS))  # every worker started

    def write(self, keys: dict[str, str]) -> float:
        """Write every key; the seconds from now until the last write was answered."""
        items = list(keys.items())
        started = time.monotonic()
        ends = self.pool.map(_write_share, [(self.url, items[i::WRITERS]) for i in range(WRITERS)])
        return max(ends) - started

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


def felix(ports: int, runs: int, backend: str = "iptables") -> dict[str, object]:
    nft = backend == "nftables"
    with tempfile.TemporaryDirectory(prefix="calico-bench-") as tmp:
        work = Path(tmp)
        with (
            EtcdServer(work / "etcd", name="peer") as etcd,
            ComputeHost(etcd, hostname=HOSTNAME, work_dir=work) as host,
        ):
            dataplane.load_etcd(etcd, felix_keys())
            dataplane.add_taps(host.ns, map(tap_name, range(ports + 1)))
            proc = host.start_felix(
                FELIX_NFTABLESMODE="Enabled" if nft else "Disabled",
                FELIX_IPTABLESREFRESHINTERVAL="0",
                FELIX_STARTUPCLEANUPDELAY=str(dataplane.CLEANUP_DELAY),
                FELIX_LOGSEVERITYFILE="none",
                FELIX_LOGFILEPATH="none",
            )
            proc.wait_for("Dataplane programmed", timeout=120)
            proc.wait_for("Start-of-day cleanup done", timeout=dataplane.CLEANUP_DELAY + 60)
            # Timed to the nf_tables commit that programmed it (dataplane.Kernel): a poll loop
            # of `iptables -S` would take one of the two cores from Felix while it works.
            writer = BurstWriter(etcd)  # (forked before the kernel watch starts its thread)
            kernel = dataplane.Kernel(host.ns, backend)
            try:
                # Batch: every endpoint key written at once (8 writer processes), until the last
                # is in.
                burst = {endpoint_key(i): endpoint_value(i) for i in range(ports)}
                writes: list[float] = []
                batch = kernel.timed(
                    lambda: writes.append(writer.write(burst)),
                    lambda: all_programmed(host.ns, ports, nft),
                    settle=BURST_SETTLE,
                    both_families=True,
                )
                write_s = writes[0]
                set_name = tag_set_name(host.ns, nft)
                add: list[float] = []
                remove: list[float] = []
                for _ in range(runs):
                    # (the set's member is written before the rules that use it: see backends.py)
                    add.append(
                        kernel.timed(
                            lambda: etcd.v2_put(endpoint_key(ports), endpoint_value(ports)),
                            lambda: (
                                programmed(host.ns, ports, nft)
                                and in_set(host.ns, set_name, ports, nft)
                            ),
                        )
                    )
                    time.sleep(0.05)
                    remove.append(
                        kernel.timed(
                            lambda: etcd.v2_delete(endpoint_key(ports)),
                            lambda: not programmed(host.ns, ports, nft),
                        )
                    )
                    time.sleep(0.05)
            finally:
                writer.close()
                kernel.close()
            if nft:
                rules_v4 = nft_kernel.count(nft_kernel.dump(host.ns))["rules"]
            else:
                saved = host.ns.run(["iptables-save"]).stdout
                rules_v4 = sum(1 for line in saved.splitlines() if line.startswith("-A "))
            proc.stop()
    return {
        "batch_s": round(batch, 4),
        # Of batch_s, the etcd writes alone (8 writer processes): the rest is Felix.
        "batch_etcd_write_s": round(write_s, 4),
        "add_one_s": round(statistics.median(add), 4),
        "remove_one_s": round(statistics.median(remove), 4),
        # IPv4 iptables rules (nftables: every rule of Felix's table, both families).
        "iptables_rules_v4": rules_v4,
    }


def run(ports: int, runs: int, backend: str = "iptables") -> dict[str, object]:
    dataplane.progress(f"Neutron IptablesFirewallDriver, {ports} ports")
    peer = neutron(ports, runs)
    dataplane.progress(f"calico-felix ({backend}), {ports} ports")
    ours = felix(ports, runs, backend)
    return {
        "backend": backend,
        "ports": ports,
        "runs": runs,
        "neutron": peer,
        "felix": ours,
        "ratio_add_one": round(float(peer["add_one_s"]) / float(ours["add_one_s"]), 1),
        "ratio_batch": round(float(peer["batch_s"]) / float(ours["batch_s"]), 1),
        "ratio_remove_one": round(float(peer["remove_one_s"]) / float(ours["remove_one_s"]), 1),
        "targets": {"ratio_add_one": 10, "ratio_batch": 3},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5, help="repetitions of add/remove one")
    parser.add_argument("--backend", choices=("iptables", "nftables"), default="iptables")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        print(json.dumps(neutron_inner(args.ports, args.runs)))
        return
    report.emit(run(args.ports, args.runs, args.backend), args.json)


if __name__ == "__main__":
    main()
