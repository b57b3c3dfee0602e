"""The full stack, all real, in namespaces: OpenStack networking with Calico from the Neutron
REST API down to packets (issue 6, "Tests", third bullet).

    Neutron API server (core_plugin = calico, sqlite, noauth) + neutron-periodic-workers
        |  REST: network, subnet (DHCP), security groups, ports, router, floating IP
        v
    etcd (127.0.0.1, root namespace) <--- relay ---+
                                                   |
    +-- compute host "compute-1" (namespace) -------+-----------------+
    | calico-felix   calico-dhcp-agent + dnsmasq   metadata stand-in   |--ext0-- external host
    |   tap<port a1>    tap<port a2>    tap<port b1>   127.0.0.1:8775  |         198.18.0.2
    +------|----------------|---------------|--------------------------+
         VM a1            VM a2           VM b1      (namespaces, eth0 = port MAC, no address
                                                      until busybox udhcpc gets the lease)

Security groups: ``app`` admits tcp/22 and icmp from members of ``app`` only (remote-group
rules); ``web`` admits icmp and tcp/80 from anywhere. a1 and a2 are in ``app``, b1 in ``web``,
and b1 has a floating IP on the external network.

Proven, in order: Felix's liveness becomes an alive Felix agent row, so the ports bind to the
host (vif_type tap); each VM gets exactly its port's address by DHCP; Neutron shows the ports
ACTIVE; the security-group matrix holds with packets (members of ``app`` reach each other on
tcp/22 and icmp, b1 does not; anyone reaches b1 on icmp and tcp/80, nobody on tcp/22); the
floating IP answers the external host (ping replies from the floating IP, an HTTP server in b1
sees the external host's own address); a tcp/22 rule for ``web`` whose remote is an address
group admits exactly the group's members, also after its addresses change; 169.254.169.254:80
reaches the stand-in metadata server on the host (Felix's default MetadataAddr 127.0.0.1:8775);
rule changes through the API change what passes (a remote-group rule for ``web`` in ``app``
admits b1 on tcp/22, deleting ``web``'s tcp/80 rule shuts it); deleting a port cuts its VM off
(to and from other VMs, and from the metadata server) while the others keep working.

Every check is an expect-allowed / expect-denied row retried for a bounded time; a denied row
also requires a host route to the destination and a resolved neighbour at the source, so only
policy can have denied it. On failure the test prints Felix's log, the DHCP agent's log,
Neutron's log tails and the host's iptables-save.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from full_stack_support import (
    AGENT_TYPE_FELIX,
    ALLOW,
    DENY,
    SETTLE_TIMEOUT,
    Flow,
    FullStack,
)

from calico.lab.echo import EchoServer, ping_reply_from
from calico.lab.etcd_server import EtcdServer
from calico.lab.neutron import NeutronServer
from calico.lab.probes import wait_until

pytestmark = pytest.mark.root

HOST = "compute-1"
CIDR = "10.65.0.0/24"
GATEWAY = "10.65.0.1"
DNS = "10.65.255.53"
EXT_CIDR = "198.19.0.0/24"  # floating IPs: routed by the external host via the compute host
METADATA_IP = "169.254.169.254"
METADATA_PORT = 8775  # Felix's default MetadataPort, on its default MetadataAddr 127.0.0.1
WEB_PORT = 80
NEUTRON_TIMEOUT = 60.0  # a worker's poll reaching Neutron's DB on a loaded machine


@pytest.fixture
def neutron(etcd: EtcdServer, tmp_path: Path) -> Iterator[NeutronServer]:
    server = NeutronServer(tmp_path / "neutron", etcd.port)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def stack(neutron: NeutronServer, etcd: EtcdServer, tmp_path: Path) -> Iterator[FullStack]:
    work_dir = tmp_path / "host"
    work_dir.mkdir()
    stack = FullStack(neutron, etcd, HOST, work_dir)
    try:
        yield stack
    finally:
        stack.close()


def test_full_stack(stack: FullStack) -> None:
    try:
        run_full_stack(stack)
    except BaseException:
        # Shown by pytest with the failure (captured stdout).
        print(stack.diagnostics())
        raise


def run_full_stack(stack: FullStack) -> None:
    n = stack.neutron.call
    etcd = stack.etcd

    # Felix fails fast on a Felix config change in etcd, so start it only after the driver has
    # written its config keys and Ready (the elected worker's first resync does that).
    assert wait_until(lambda: etcd.v2_get("/calico/v1/Ready") == "true", NEUTRON_TIMEOUT, 0.5), (
        "the Neutron driver never wrote /calico/v1/Ready"
    )
    # A short reporting interval: Felix's liveness key is what makes Neutron bind ports here.
    stack.start_felix(FELIX_REPORTINGINTERVALSECS="5")
    stack.start_dhcp_agent()

    def felix_agent_alive() -> bool:
        agents = n("GET", "agents")["agents"]
        return any(
            a["agent_type"] == AGENT_TYPE_FELIX and a["host"] == HOST and a["alive"] for a in agents
        )

    assert wait_until(felix_agent_alive, NEUTRON_TIMEOUT, 0.5), "no live Felix agent in Neutron"

    # -- tenant network, security groups, ports --------------------------------------------------
    net = n("POST", "networks", {"network": {"name": "calico", "shared": True}})["network"]
    subnet = n(
        "POST",
        "subnets",
        {
            "subnet": {
                "network_id": net["id"],
                "ip_version": 4,
                "cidr": CIDR,
                "gateway_ip": GATEWAY,
                "enable_dhcp": True,
                "dns_nameservers": [DNS],
            }
        },
    )["subnet"]
    app = n("POST", "security-groups", {"security_group": {"name": "app"}})["security_group"]
    web = n("POST", "security-groups", {"security_group": {"name": "web"}})["security_group"]

    def rule(sg: dict[str, Any], protocol: str, port: int | None = None, **remote: str) -> str:
        body: dict[str, Any] = {
            "security_group_id": sg["id"],
            "direction": "ingress",
            "ethertype": "IPv4",
            "protocol": protocol,
            **remote,
        }
        if port is not None:
            body.update(port_range_min=port, port_range_max=port)
        made = n("POST", "security-group-rules", {"security_group_rule": body})
        return str(made["security_group_rule"]["id"])

    rule(app, "tcp", 22, remote_group_id=app["id"])
    rule(app, "icmp", remote_group_id=app["id"])
    rule(web, "icmp", remote_ip_prefix="0.0.0.0/0")
    web_http = rule(web, "tcp", WEB_PORT, remote_ip_prefix="0.0.0.0/0")

    def port(name: str, sg: dict[str, Any]) -> dict[str, Any]:
        body = {
            "network_id": net["id"],
            "name": name,
            "device_owner": "compute:nova",
            "device_id": f"instance-{name}",
            "binding:host_id": HOST,
            "security_groups": [sg["id"]],
        }
        made: dict[str, Any] = n("POST", "ports", {"port": body})["port"]
        assert made["binding:vif_type"] == "tap", made
        return made

    ports = {"a1": port("a1", app), "a2": port("a2", app), "b1": port("b1", web)}

    # -- the external network, a router and b1's floating IP --------------------------------------
    ext_net = stack.neutron.external_network(EXT_CIDR, subnet["id"])
    fip = n(
        "POST",
        "floatingips",
        {"floatingip": {"floating_network_id": ext_net["id"], "port_id": ports["b1"]["id"]}},
    )["floatingip"]
    fip_ip = fip["floating_ip_address"]

    # -- VMs: plugged as Nova plugs them, addressed by DHCP ----------------------------------------
    for name, p in ports.items():
        vm = stack.plug_vm(name, p)
        assert stack.addresses(vm) == [], "a VM must start without an address"
    for name, vm in stack.vms.items():
        lease = stack.dhcp(vm)
        assert lease == {"ip": vm.ip, "mask": "24", "router": GATEWAY}, (name, lease)
        assert stack.addresses(vm) == [f"{vm.ip}/24"]

    # -- Neutron's view: ports ACTIVE, the Felix agent alive --------------------------------------
    def all_active() -> bool:
        listed = n("GET", f"ports?device_owner=compute:nova&network_id={net['id']}")["ports"]
        status = {p["id"]: p["status"] for p in listed}
        return all(status.get(p["id"]) == "ACTIVE" for p in ports.values())

    assert wait_until(all_active, NEUTRON_TIMEOUT, 0.5), "ports never became ACTIVE"
    assert felix_agent_alive()

    # -- the security-group matrix ---------------------------------------------------------------
    ssh = {(s, d): Flow(s, d, "tcp", 22) for s in ports for d in ports if s != d}
    icmp = {(s, d): Flow(s, d, "icmp") for s in ports for d in ports if s != d}
    http = {(s, d): Flow(s, d, "tcp", WEB_PORT) for s in ports for d in ports if s != d}
    stack.expect(
        "security groups as created",
        [
            (ssh["a2", "a1"], ALLOW),  # remote group app: a member
            (ssh["b1", "a1"], DENY),  # not a member of app
            (icmp["a1", "a2"], ALLOW),
            (icmp["b1", "a2"], DENY),
            (icmp["a1", "b1"], ALLOW),  # web: icmp from anywhere
            (http["a2", "b1"], ALLOW),
            (ssh["a1", "b1"], DENY),  # web has no tcp/22 rule
        ],
    )

    # -- a remote address group admits exactly its addresses (issue 12: it admitted everyone) ---
    a1_ip, a2_ip = stack.vms["a1"].ip, stack.vms["a2"].ip
    body = {"address_group": {"name": "admins", "addresses": [f"{a1_ip}/32"]}}
    group = n("POST", "address-groups", body)["address_group"]
    rule(web, "tcp", 22, remote_address_group_id=group["id"])
    stack.expect(
        f"web's tcp/22 from address group [{a1_ip}]",
        [(ssh["a1", "b1"], ALLOW), (ssh["a2", "b1"], DENY)],
    )
    n("PUT", f"address-groups/{group['id']}/add_addresses", {"addresses": [f"{a2_ip}/32"]})
    n("PUT", f"address-groups/{group['id']}/remove_addresses", {"addresses": [f"{a1_ip}/32"]})
    stack.expect(
        f"web's tcp/22 from address group [{a2_ip}] (members changed)",
        [(ssh["a2", "b1"], ALLOW), (ssh["a1", "b1"], DENY)],
    )

    # -- floating IP, from the external namespace ------------------------------------------------
    b1 = stack.vms["b1"]
    stack.expect_allowed(
        f"external host pings floating IP {fip_ip}, answered from it",
        lambda: ping_reply_from(stack.ext.ns, fip_ip) == fip_ip,
    )
    with EchoServer(b1.ns, "0.0.0.0", WEB_PORT) as server:
        stack.expect_allowed(
            f"external host -> http://{fip_ip}/ reaches b1, which sees the external host",
            lambda: server.peer_seen(stack.ext.ns, fip_ip, WEB_PORT) == stack.ext.ip,
        )

    # -- metadata: 169.254.169.254 reaches the stand-in on the host --------------------------------
    with EchoServer(stack.host.ns, "127.0.0.1", METADATA_PORT) as metadata:
        for name, vm in stack.vms.items():
            stack.expect_allowed(
                f"{name} -> http://{METADATA_IP}/ reaches the metadata server as itself",
                lambda vm=vm: metadata.peer_seen(vm.ns, METADATA_IP, 80) == vm.ip,
            )

    # -- rule changes through the API --------------------------------------------------------------
    rule(app, "tcp", 22, remote_group_id=web["id"])  # members of web may ssh to app
    n("DELETE", f"security-group-rules/{web_http}")
    stack.expect(
        "after adding app's tcp/22 from web and deleting web's tcp/80",
        [
            (ssh["b1", "a1"], ALLOW),  # now admitted by the new remote-group rule
            (ssh["a2", "a1"], ALLOW),
            (http["a2", "b1"], DENY),  # its rule is gone
            (icmp["a1", "b1"], ALLOW),  # the other web rule stays
            (icmp["b1", "a2"], DENY),
        ],
    )

    # -- deleting a port cuts its VM off ---------------------------------------------------------
    a2 = stack.vms["a2"]
    n("DELETE", f"ports/{ports['a2']['id']}")
    assert wait_until(lambda: stack.host.route_to(a2.ip) is None, SETTLE_TIMEOUT, 0.3), (
        f"the host still routes to {a2.ip} after its port was deleted"
    )
    stack.expect(
        "after deleting a2's port",
        [
            (icmp["a1", "a2"], DENY),
            (ssh["a2", "a1"], DENY),
            (icmp["a2", "b1"], DENY),
            (ssh["b1", "a1"], ALLOW),  # the others keep working
            (icmp["a1", "b1"], ALLOW),
        ],
        require_path=False,  # a2's route is meant to be gone
    )
    with EchoServer(stack.host.ns, "127.0.0.1", METADATA_PORT) as metadata:
        stack.expect_denied(
            f"a2 -> http://{METADATA_IP}/ after its port was deleted",
            lambda: metadata.peer_seen(a2.ns, METADATA_IP, 80) is not None,
        )
        stack.expect_allowed(
            f"a1 -> http://{METADATA_IP}/ still",
            lambda: metadata.peer_seen(stack.vms["a1"].ns, METADATA_IP, 80) == stack.vms["a1"].ip,
        )
    listed = {p["id"] for p in n("GET", f"ports?network_id={net['id']}")["ports"]}
    assert ports["a2"]["id"] not in listed
