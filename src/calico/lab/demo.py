"""`make demo`: a real calico-felix against a private etcd, in a lab network namespace.

Starts etcd on a free loopback port, loads sample data in the /calico/v1 layout (what the
Neutron driver writes for two VMs on this host and one elsewhere), creates a namespace for
the "compute host", shows Felix's resolved configuration, runs Felix until it is in sync,
shows that a config change in etcd makes it restart, and removes everything it made.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from calico.lab.etcd_server import EtcdServer
from calico.lab.felix import FelixProcess, felix_env, run_felix
from calico.lab.netns import NetNS
from calico.lab.relay import LoopbackRelay
from calico.lab.topology import ComputeHost, ping, tcp_ok, wait_until

HOST = "demo-host-1"

SAMPLE: dict[str, object] = {
    "/calico/v1/Ready": "true",
    "/calico/v1/config/InterfacePrefix": "cali,tap",
    "/calico/v1/config/EndpointReportingEnabled": "true",
    "/calico/v1/config/ClusterGUID": "0f1e2d3c4b5a49788796a5b4c3d2e1f0",
    f"/calico/v1/host/{HOST}/config/LogSeverityFile": "INFO",
    "/calico/v1/policy/profile/openstack-sg-default/rules": {
        "inbound_rules": [{"action": "allow", "src_tag": "openstack-sg-default"}],
        "outbound_rules": [{"action": "allow"}],
    },
    "/calico/v1/policy/profile/openstack-sg-default/tags": ["openstack-sg-default"],
    "/calico/v1/ipam/v4/pool/10.65.0.0-16": {"cidr": "10.65.0.0/16", "masquerade": False},
}


def _endpoint(host: str, port_id: str, ip: str, mac: str) -> tuple[str, dict[str, object]]:
    key = f"/calico/v1/host/{host}/workload/openstack/{port_id}/endpoint/{port_id}"
    return key, {
        "state": "active",
        "name": "tap" + port_id[:11],
        "mac": mac,
        "profile_ids": ["openstack-sg-default"],
        "ipv4_nets": [f"{ip}/32"],
        "ipv4_gateway": "10.65.0.1",
    }


ENDPOINTS = dict(
    [
        _endpoint(HOST, "5b2f7c9e-0a11-4c3b-9a55-1f6b0d1e2a01", "10.65.0.2", "fa:16:3e:00:00:02"),
        _endpoint(HOST, "8c4d2e1f-3b22-4d4c-8b66-2a7c1e2f3b02", "10.65.0.3", "fa:16:3e:00:00:03"),
        _endpoint(
            "demo-host-2", "9d5e3f20-4c33-4e5d-9c77-3b8d2f304c03", "10.65.1.2", "fa:16:3e:00:01:02"
        ),
    ]
)


def say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def load_sample(etcd: EtcdServer) -> int:
    data = {**SAMPLE, **ENDPOINTS}
    for key, value in data.items():
        etcd.v2_put(key, value if isinstance(value, str) else json.dumps(value))
    return len(data)


def show_config(ns: NetNS, env: dict[str, str]) -> None:
    proc = run_felix(ns, ["--show-config", "-c", "/nonexistent/felix.cfg"], env)
    if proc.returncode != 0:
        raise RuntimeError(f"--show-config failed ({proc.returncode}): {proc.stderr}")
    config = json.loads(proc.stdout)
    for name, entry in config.items():
        print(f"  {name:38} {json.dumps(entry['value']):42} ({entry['source']})")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="calico-demo-") as tmp:
        work = Path(tmp)
        say("Starting a private etcd (v2 and v3 APIs) on a free loopback port")
        with EtcdServer(work / "etcd", name="demo") as etcd:
            print(f"  etcd at {etcd.client_url} (pid {etcd.pid})")
            count = load_sample(etcd)
            print(f"  loaded {count} keys of sample data under /calico/v1")
            with NetNS() as ns, LoopbackRelay(ns.name, etcd.port):
                print(f"  compute host {HOST!r} = network namespace {ns.name}")
                env = felix_env(etcd.client_url, HOST, {"FELIX_METADATAPORT": "8775"})

                say("calico-felix --show-config (env > file > etcd host > etcd global > default)")
                show_config(ns, env)

                say("Running calico-felix in the namespace until it is in sync")
                felix = FelixProcess(ns, env, work / "felix.log")
                try:
                    match = felix.wait_for(r"In sync with the datastore[^\n]*")
                    print(f"  felix (pid {felix.proc.pid}): {match.group(0)}")

                    say("Changing LogSeverityFile for this host in etcd: Felix must restart")
                    etcd.v2_put(f"/calico/v1/host/{HOST}/config/LogSeverityFile", "DEBUG")
                    started = time.monotonic()
                    code = felix.wait_exit(timeout=30)
                    changed = felix.wait_for(r"Felix configuration changed in etcd: [^\n]*")
                    print(f"  {changed.group(0)}")
                    print(
                        f"  felix exited with status {code} after "
                        f"{time.monotonic() - started:.1f} s, for its service manager to "
                        "restart it"
                    )
                finally:
                    felix.stop()
                say("Log of the felix run")
                print(felix.text().rstrip())
            dataplane_demo(etcd, work)
        say("Cleaned up: felix stopped, namespaces deleted, etcd stopped")
    return 0


DP_HOST = "demo-host-2"


def dataplane_demo(etcd: EtcdServer, work: Path) -> None:
    """Three VMs on a second compute host: web-1 and web-2 share a security group that admits
    its own members; db-1's security group is missing from etcd, so it is denied everything."""
    say("Dataplane: a compute host with three VMs (TAP interfaces, /32 routes, security groups)")
    (work / "lab").mkdir()
    with ComputeHost(etcd, hostname=DP_HOST, work_dir=work / "lab") as host:
        web1 = host.add_workload("10.65.1.2", "fd00:65::1:2", label="web1")
        web2 = host.add_workload("10.65.1.3", "fd00:65::1:3", label="web2")
        db1 = host.add_workload("10.65.1.4", "fd00:65::1:4", label="db1")
        sg = "openstack-sg-web"
        etcd.v2_put(
            f"/calico/v1/policy/profile/{sg}/rules",
            json.dumps({"inbound_rules": [{"src_tag": sg}], "outbound_rules": [{}]}),
        )
        etcd.v2_put(f"/calico/v1/policy/profile/{sg}/tags", json.dumps([sg]))
        for vm in (web1, web2):
            etcd.v2_put(vm.endpoint_key(), vm.endpoint_json([sg]))
        etcd.v2_put(db1.endpoint_key(), db1.endpoint_json(["openstack-sg-missing"]))
        felix = host.start_felix()
        felix.wait_for("Dataplane programmed", timeout=60)
        print(f"  felix programmed {host.name}; routes there:")
        for line in host.run(["ip", "route", "show", "proto", "80"]).stdout.splitlines():
            print(f"    {line}")
        wait_until(lambda: ping(web1.ns, web2), timeout=20)
        wait_until(lambda: ping(web1.ns, web2, v6=True), timeout=20)  # neighbour discovery
        say("Connectivity (expected: web <-> web allowed; anything to or from db-1 denied)")
        vms = {"web-1": web1, "web-2": web2, "db-1": db1}
        for src_name, src in vms.items():
            for dst_name, dst in vms.items():
                if src is dst:
                    continue
                v4 = "allowed" if ping(src.ns, dst) else "denied"
                v6 = "allowed" if ping(src.ns, dst, v6=True) else "denied"
                tcp = "allowed" if tcp_ok(src.ns, dst, 80) else "denied"
                print(f"  {src_name:6} -> {dst_name:6}  ping {v4:8} ping6 {v6:8} tcp/80 {tcp}")
        felix.stop()


if __name__ == "__main__":
    sys.exit(main())
