"""Benchmark: what the calico driver adds to Neutron's API calls, through the real API.

The same real Neutron server (the lab's: sqlite, noauth; src/calico/lab/neutron.py) runs
twice: as ML2 without any mechanism driver (Neutron alone), and with `core_plugin = calico`
(ML2 with the calico mechanism driver, writing to a private etcd). In each, against one network,
subnet and security group, it times one at a time:

* port create: a VM's port bound to a compute host (with calico: bound to the host's Felix
  agent, which a Felix status key in etcd makes alive, and its endpoint written to etcd; without
  a driver the binding fails, which is Neutron's own cost of trying);
* security-group rule create (with calico: the group's profile rewritten in etcd).

Median and p90 of each, and their difference: the time the driver adds. Run:
`.venv/bin/python bench/neutron_api.py [--calls N] [--json out.json]` (in `make bench`).
Only loopback servers; no namespace, nothing in the kernel.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).parent))
import report

from calico.common.datamodel_v1 import FelixStatusKey
from calico.lab.etcd_server import EtcdServer
from calico.lab.neutron import NeutronServer
from calico.lab.probes import wait_until
from calico.openstack.constants import AGENT_TYPE_FELIX

HOST = "compute-1"
ML2_ALONE = """
[ml2]
type_drivers = local,flat
tenant_network_types = local
mechanism_drivers =
"""


def timed(call: Callable[[], Any], count: int) -> dict[str, float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    samples.sort()
    return {
        "median_ms": round(statistics.median(samples) * 1000, 1),
        "p90_ms": round(samples[int(len(samples) * 0.9) - 1] * 1000, 1),
    }


def measure(neutron: NeutronServer, count: int) -> dict[str, Any]:
    n = neutron.call
    net = n("POST", "networks", {"network": {"name": "bench", "shared": True}})["network"]
    subnet = {"network_id": net["id"], "ip_version": 4, "cidr": "10.65.0.0/16"}
    n("POST", "subnets", {"subnet": subnet})
    sg = n("POST", "security-groups", {"security_group": {"name": "bench"}})["security_group"]
    made = {"ports": 0, "rules": 0}

    def port() -> None:
        made["ports"] += 1
        body = {
            "network_id": net["id"],
            "name": f"vm-{made['ports']}",
            "device_owner": "compute:nova",
            "device_id": f"instance-{made['ports']}",
            "binding:host_id": HOST,
            "security_groups": [sg["id"]],
        }
        n("POST", "ports", {"port": body})

    def rule() -> None:
        made["rules"] += 1
        body = {
            "security_group_id": sg["id"],
            "direction": "ingress",
            "ethertype": "IPv4",
            "protocol": "tcp",
            "port_range_min": 1000 + made["rules"],
            "port_range_max": 1000 + made["rules"],
            "remote_ip_prefix": "198.18.0.0/16",
        }
        n("POST", "security-group-rules", {"security_group_rule": body})

    port()  # warm-up: the first call of each kind loads code paths
    rule()
    result = {"port_create": timed(port, count), "sg_rule_create": timed(rule, count)}
    vif = n("GET", f"ports?network_id={net['id']}&limit=1")["ports"][0]["binding:vif_type"]
    result["binding:vif_type"] = vif
    return result


def endpoints_in(etcd: EtcdServer) -> int:
    """How many workload endpoint keys etcd holds (the calico run's ports that were written)."""
    url = f"{etcd.client_url}/v2/keys/calico/v1/host?recursive=true"
    listing = requests.get(url, timeout=30).json()
    count, nodes = 0, [listing.get("node", {})]
    while nodes:
        node = nodes.pop()
        nodes += node.get("nodes", [])
        count += "/endpoint/" in node.get("key", "") and not node.get("dir")
    return count


def run(count: int) -> dict[str, Any]:
    results: dict[str, Any] = {"calls": count}
    with tempfile.TemporaryDirectory(prefix="calico-bench-") as tmp:
        work = Path(tmp)
        with EtcdServer(work / "etcd", name="api") as etcd:
            for mode, plugin, extra in (
                ("neutron_alone", "ml2", ML2_ALONE),
                ("with_calico", "calico", ""),
            ):
                print(f"{mode}: starting Neutron", file=sys.stderr)
                with NeutronServer(
                    work / mode, etcd.port, core_plugin=plugin, extra_config=extra
                ) as neutron:
                    if plugin == "calico":
                        etcd.v2_put(FelixStatusKey(HOST).path, '{"time": "now"}')

                        def alive(neutron: NeutronServer = neutron) -> bool:
                            agents = neutron.call("GET", "agents")["agents"]
                            return any(
                                a["agent_type"] == AGENT_TYPE_FELIX and a["alive"] for a in agents
                            )

                        if not wait_until(alive, 60, 0.5):
                            raise SystemExit("the Felix agent never came alive in Neutron")
                    results[mode] = measure(neutron, count)
            results["with_calico"]["endpoints_in_etcd"] = endpoints_in(etcd)
    for call in ("port_create", "sg_rule_create"):
        alone = results["neutron_alone"][call]["median_ms"]
        calico = results["with_calico"][call]["median_ms"]
        results[f"{call}_added_ms"] = round(calico - alone, 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50, help="calls of each kind")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    report.emit({**run(args.calls), **report.environment()}, args.json)


if __name__ == "__main__":
    main()
