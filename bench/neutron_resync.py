"""Benchmark: one resync of the Neutron driver at 10,000 ports and 1,000 security groups.

The periodic resync (calico.openstack.resync, openstack.md §4.1) makes etcd match Neutron's DB.
This measures its own cost against a private etcd (v2 and v3 APIs): the first pass, which
writes every subnet, profile and endpoint, and a second pass that finds nothing to change and
must write nothing. For each: wall time, this process's CPU, and the etcd requests made (by
kind). Neutron's side is given as data (the resync reads Neutron through its NeutronData
interface; in Neutron that is calico.openstack.neutron_reader's DB queries, which are
Neutron's own cost and are not in these figures).

The data: 1,000 security groups of 5 rules (two naming another group, which become tags),
10,000 ports on 100 compute hosts, 40 subnets of 10.65.0.0/16, each port in 2 groups.

Run: `.venv/bin/python bench/neutron_resync.py [--ports N] [--groups N] [--json out.json]`
(in `make bench`). Only a private etcd on loopback; no namespace, nothing in the kernel.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import report

from calico.common.etcd import connect
from calico.common.etcd.base import KVStore, settings_for_endpoints
from calico.lab.etcd_server import EtcdServer
from calico.openstack.endpoints import FloatingIP, endpoint_data, is_endpoint_port
from calico.openstack.resync import resync
from calico.openstack.store import CalicoStore

HOSTS = 100
SUBNETS = 40
PORTS_PER_SUBNET = 250


class Counting:
    """A KVStore that counts the requests made through it, by method."""

    def __init__(self, client: KVStore) -> None:
        self._client = client
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attribute(*args, **kwargs)

        return counted


class Neutron:
    """Neutron's DB as the resync reads it (the NeutronData protocol), from memory."""

    def __init__(self, ports: int, groups: int) -> None:
        self._subnets = {
            f"subnet-{s}": {
                "id": f"subnet-{s}",
                "network_id": "net-1",
                "cidr": f"10.65.{s}.0/24",
                "gateway_ip": f"10.65.{s}.1",
                "host_routes": [],
                "dns_nameservers": ["198.18.0.53"],
                "enable_dhcp": True,
            }
            for s in range(SUBNETS)
        }
        self._groups = {f"sg-{g:05d}": self._rules(g, groups) for g in range(groups)}
        self._ports = [self._port(p, groups) for p in range(ports)]

    @staticmethod
    def _rules(g: int, groups: int) -> list[dict[str, Any]]:
        def rule(n: int, **fields: Any) -> dict[str, Any]:
            base = {"id": f"rule-{g}-{n}", "ethertype": "IPv4", "direction": "ingress"}
            return {**base, **fields}

        other = f"sg-{(g + 1) % groups:05d}"
        fabric = {"remote_ip_prefix": "198.18.0.0/16"}
        return [
            rule(0, protocol="tcp", port_range_min=22, port_range_max=22),
            rule(1, protocol="tcp", port_range_min=80, port_range_max=80, remote_group_id=other),
            rule(2, protocol="icmp", remote_group_id=f"sg-{g:05d}"),
            rule(3, protocol="udp", port_range_min=5000, port_range_max=5100, **fabric),
            rule(4, direction="egress"),
        ]

    @staticmethod
    def _port(p: int, groups: int) -> dict[str, Any]:
        subnet, offset = divmod(p, PORTS_PER_SUBNET)
        return {
            "id": f"port-{p:06d}",
            "device_id": f"vm-{p:06d}",
            "device_owner": "compute:nova",
            "binding:host_id": f"compute-{p % HOSTS}",
            "binding:vif_type": "tap",
            "mac_address": f"fa:16:3e:{p >> 16 & 255:02x}:{p >> 8 & 255:02x}:{p & 255:02x}",
            "fixed_ips": [
                {"subnet_id": f"subnet-{subnet}", "ip_address": f"10.65.{subnet}.{offset + 2}"}
            ],
            "security_groups": [f"sg-{p % groups:05d}", f"sg-{(p * 7) % groups:05d}"],
        }

    def subnets(self) -> dict[str, dict[str, Any]]:
        return dict(self._subnets)

    def profiles(self) -> dict[str, tuple[list[Any], dict[str, list[str]]]]:
        return {sg: (list(rules), {}) for sg, rules in self._groups.items()}

    def endpoint_ports(self) -> list[dict[str, Any]]:
        return [port for port in self._ports if is_endpoint_port(port)]

    def floating_ips(self) -> dict[str, list[FloatingIP]]:
        return {}

    def endpoint(
        self, port: dict[str, Any], subnets: dict[str, Any], fips: dict[str, list[FloatingIP]]
    ) -> dict[str, Any]:
        return endpoint_data(port, subnets, port["security_groups"], fips.get(port["id"], ()))


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one_pass(store: CalicoStore, counting: Counting, neutron: Neutron) -> dict[str, Any]:
    counting.calls.clear()
    cpu, started = cpu_s(), time.perf_counter()
    outcome = resync(store, neutron)
    wall, cpu = time.perf_counter() - started, cpu_s() - cpu
    writes = sum(
        counts.get(kind, 0)
        for counts in outcome.values()
        for kind in ("created", "updated", "deleted")
    )
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "etcd_requests": dict(sorted(counting.calls.items())),
        "objects_written": writes,
        "report": outcome,
    }


def run(ports: int, groups: int) -> dict[str, Any]:
    neutron = Neutron(ports, groups)
    results: dict[str, Any] = {"ports": ports, "security_groups": groups, "subnets": SUBNETS}
    for api in ("v2", "v3"):
        with tempfile.TemporaryDirectory(prefix="calico-bench-") as tmp:
            with EtcdServer(Path(tmp) / "etcd", name="resync") as etcd:
                counting = Counting(connect(api, settings_for_endpoints(etcd.client_url)))
                store = CalicoStore(counting)  # type: ignore[arg-type]
                first = one_pass(store, counting, neutron)
                second = one_pass(store, counting, neutron)
                counting.close()
        if second["objects_written"]:
            raise SystemExit(f"{api}: a resync with nothing to change wrote {second}")
        results[api] = {"first": first, "nothing_to_change": second}
        print(f"{api}: first {first['wall_s']} s, again {second['wall_s']} s", file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports", type=int, default=10_000)
    parser.add_argument("--groups", type=int, default=1_000)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    report.emit({**run(args.ports, args.groups), **report.environment()}, args.json)


if __name__ == "__main__":
    main()
