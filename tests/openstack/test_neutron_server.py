"""A real Neutron API server (core_plugin = calico, sqlite, noauth) with its periodic workers
and a real etcd, driven over REST (neutron-testing.md, Recipe A)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from calico.common import etcd as calico_etcd
from calico.common import resources
from calico.common.datamodel_v1 import (
    DhcpSubnetKey,
    FelixStatusKey,
    NeutronElectionKey,
    ProfileRulesKey,
    ProfileTagsKey,
    ReadyKey,
    WorkloadEndpointKey,
    WorkloadEndpointStatusKey,
    parse_key,
)
from calico.common.etcd.base import EtcdSettings, KVStore
from calico.lab.etcd_server import EtcdServer
from calico.lab.neutron import NeutronServer

HOST = "compute-1"


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def endpoints(client: KVStore) -> dict[WorkloadEndpointKey, resources.WorkloadEndpoint]:
    out = {}
    for path, value in client.read_prefix("/calico/v1/host").items.items():
        key = parse_key(path)
        if isinstance(key, WorkloadEndpointKey):
            out[key] = resources.parse_workload_endpoint(value, key)
    return out


def profile_rules(client: KVStore, sg_id: str) -> resources.ProfileRules | None:
    key = ProfileRulesKey(f"openstack-sg-{sg_id}")
    raw = client.get(key.path)
    return None if raw is None else resources.parse_profile_rules(raw, key)


@pytest.fixture
def neutron(etcd: EtcdServer, tmp_path: Path) -> Iterator[NeutronServer]:
    server = NeutronServer(tmp_path / "neutron", etcd.port)
    try:
        yield server.start()
    finally:
        server.stop()


def test_rest_to_etcd(neutron: NeutronServer, etcd: EtcdServer) -> None:
    client = calico_etcd.connect("v2", EtcdSettings((etcd.client_url,)))
    n = neutron.call

    # A live Felix on HOST: the elected worker turns its status key into the agent row that
    # bind_port requires.
    client.put(FelixStatusKey(HOST).path, json.dumps({"time": "now", "uptime": 1}), ttl=120)
    wait_for(
        "the Felix agent row",
        lambda: [
            a
            for a in n("GET", "agents")["agents"]
            if a["agent_type"] == "Calico per-host agent (felix)"
            and a["host"] == HOST
            and a["alive"]
        ],
        timeout=60,
    )

    net = n("POST", "networks", {"network": {"name": "calico", "shared": True}})["network"]
    subnet = n(
        "POST",
        "subnets",
        {
            "subnet": {
                "network_id": net["id"],
                "ip_version": 4,
                "cidr": "10.65.0.0/24",
                "enable_dhcp": True,
                "dns_nameservers": ["8.8.8.8"],
            }
        },
    )["subnet"]
    web = n("POST", "security-groups", {"security_group": {"name": "web"}})["security_group"]
    db = n("POST", "security-groups", {"security_group": {"name": "db"}})["security_group"]
    n(
        "POST",
        "security-group-rules",
        {
            "security_group_rule": {
                "security_group_id": db["id"],
                "direction": "ingress",
                "ethertype": "IPv4",
                "protocol": "tcp",
                "port_range_min": 5432,
                "port_range_max": 5432,
                "remote_group_id": web["id"],
            }
        },
    )

    def port(name: str, sg: str) -> dict[str, Any]:
        body = {
            "network_id": net["id"],
            "name": name,
            "device_owner": "compute:nova",
            "device_id": f"instance-{name}",
            "binding:host_id": HOST,
            "security_groups": [sg],
        }
        return n("POST", "ports", {"port": body})["port"]  # type: ignore[no-any-return]

    p1 = port("vm1", web["id"])
    p2 = port("vm2", db["id"])
    assert p1["binding:vif_type"] == "tap"
    key1 = WorkloadEndpointKey(HOST, "openstack", "instance-vm1", p1["id"])
    key2 = WorkloadEndpointKey(HOST, "openstack", "instance-vm2", p2["id"])
    eps = endpoints(client)
    assert set(eps) == {key1, key2}
    assert eps[key1].name == "tap" + p1["id"][:11]
    assert eps[key1].profile_ids == (f"openstack-sg-{web['id']}",)
    assert eps[key2].ipv4_nets == (p2["fixed_ips"][0]["ip_address"] + "/32",)
    db_rules = profile_rules(client, db["id"])
    assert db_rules is not None
    assert [(r.src_tag, r.dst_ports) for r in db_rules.inbound_rules] == [(web["id"], (5432,))]
    web_tags_key = ProfileTagsKey(f"openstack-sg-{web['id']}")
    assert resources.parse_profile_tags(client.get(web_tags_key.path) or "", web_tags_key) == (
        web["id"],
    )
    # A new group has Neutron's default egress rules (the lab adds the rule templates that
    # Neutron's migrations would have): egress anywhere, IPv4 and IPv6.
    assert sorted((r.ip_version, r.dst_net) for r in db_rules.outbound_rules) == [
        (4, "0.0.0.0/0"),
        (6, "::/0"),
    ]
    assert json.loads(client.get(DhcpSubnetKey(subnet["id"]).path) or "{}")["cidr"] == (
        "10.65.0.0/24"
    )
    assert client.get(ReadyKey().path) == "true"

    # Felix reports the endpoint up -> Neutron shows the port ACTIVE.
    status_key = WorkloadEndpointStatusKey.for_endpoint(key1)
    client.put(status_key.path, json.dumps({"status": "up"}))
    wait_for("port ACTIVE", lambda: n("GET", f"ports/{p1['id']}")["port"]["status"] == "ACTIVE")

    # A rule change through the API reaches the profile.
    rule = n(
        "POST",
        "security-group-rules",
        {
            "security_group_rule": {
                "security_group_id": web["id"],
                "direction": "ingress",
                "ethertype": "IPv4",
                "protocol": "tcp",
                "port_range_min": 22,
                "port_range_max": 22,
                "remote_ip_prefix": "10.0.0.0/8",
            }
        },
    )["security_group_rule"]
    web_rules = profile_rules(client, web["id"])
    assert web_rules is not None
    assert ("10.0.0.0/8", (22,)) in [(r.src_net, r.dst_ports) for r in web_rules.inbound_rules]
    n("DELETE", f"security-group-rules/{rule['id']}")
    web_rules = profile_rules(client, web["id"])
    assert web_rules is not None
    assert "10.0.0.0/8" not in [r.src_net for r in web_rules.inbound_rules]

    # Floating IP through the calico core plugin's router support.
    ext = neutron.external_network("172.24.4.0/24", subnet["id"])
    fip = n(
        "POST",
        "floatingips",
        {"floatingip": {"floating_network_id": ext["id"], "port_id": p1["id"]}},
    )["floatingip"]
    nat = endpoints(client)[key1].ipv4_nat
    assert [(m.int_ip, m.ext_ip) for m in nat] == [
        (p1["fixed_ips"][0]["ip_address"], fip["floating_ip_address"])
    ]
    n("PUT", f"floatingips/{fip['id']}", {"floatingip": {"port_id": None}})
    assert endpoints(client)[key1].ipv4_nat == ()

    # Deleting a port removes its endpoint.
    n("DELETE", f"ports/{p2['id']}")
    assert set(endpoints(client)) == {key1}


def test_hostile_input(neutron: NeutronServer, etcd: EtcdServer) -> None:
    """Issue 12 against the real API server: a port whose device_id would inject into the
    endpoint key is refused with 400 and nothing reaches etcd; a remote address group gives
    exactly its CIDRs and follows its membership; protocol "ip" / 0 works, and a resync pass
    with all of that in the DB completes and repairs a broken key."""
    client = calico_etcd.connect("v2", EtcdSettings((etcd.client_url,)))
    n = neutron.call
    client.put(FelixStatusKey(HOST).path, json.dumps({"time": "now", "uptime": 1}), ttl=300)
    wait_for(
        "the Felix agent row",
        lambda: [a for a in n("GET", "agents")["agents"] if a["host"] == HOST and a["alive"]],
        timeout=60,
    )
    net = n("POST", "networks", {"network": {"name": "calico", "shared": True}})["network"]
    n(
        "POST",
        "subnets",
        {"subnet": {"network_id": net["id"], "ip_version": 4, "cidr": "10.65.0.0/24"}},
    )

    def port_body(device_id: str, *sgs: str) -> dict[str, Any]:
        body = {
            "network_id": net["id"],
            "device_owner": "compute:nova",
            "device_id": device_id,
            "binding:host_id": HOST,
        }
        return {"port": {**body, "security_groups": list(sgs)} if sgs else body}

    def raw(method: str, path: str, body: Any = None) -> requests.Response:
        return requests.request(method, f"{neutron.url}/{path}", json=body, timeout=60)

    # (a) Hostile device_ids: 400 with a clear message, no port, nothing in etcd.
    for device_id in ("vm\n-A felix-FORWARD -j ACCEPT\nCOMMIT", 'vm"1', "vm'1", "*filter"):
        response = raw("POST", "ports", port_body(device_id))
        assert response.status_code == 400, response.text
        assert "not a valid Calico ID" in response.json()["NeutronError"]["message"]
    assert n("GET", "ports")["ports"] == []
    assert endpoints(client) == {}
    good = n("POST", "ports", port_body("vm-good"))["port"]
    good_key = WorkloadEndpointKey(HOST, "openstack", "vm-good", good["id"])
    good_value = client.get(good_key.path)
    assert good_value is not None
    response = raw("PUT", f"ports/{good['id']}", {"port": {"device_id": "vm\nx"}})
    assert response.status_code == 400, response.text
    assert n("GET", f"ports/{good['id']}")["port"]["device_id"] == "vm-good"
    assert list(endpoints(client)) == [good_key]

    # (b) A rule whose remote is an address group: exactly the group's CIDRs, never
    # 0.0.0.0/0, and it follows addresses being added and removed.
    group = n("POST", "address-groups", {"address_group": {"name": "ag", "addresses": []}})
    ag = group["address_group"]["id"]
    n("PUT", f"address-groups/{ag}/add_addresses", {"addresses": ["10.1.0.0/16"]})
    from_ag = n("POST", "security-groups", {"security_group": {"name": "from-ag"}})
    sg_ag = from_ag["security_group"]["id"]
    rule = {
        "security_group_id": sg_ag,
        "direction": "ingress",
        "ethertype": "IPv4",
        "protocol": "tcp",
        "port_range_min": 22,
        "port_range_max": 22,
        "remote_address_group_id": ag,
    }
    n("POST", "security-group-rules", {"security_group_rule": rule})
    n("POST", "ports", port_body("vm-ag", sg_ag))

    def ag_sources() -> list[tuple[str | None, Any]]:
        rules = profile_rules(client, sg_ag)
        assert rules is not None
        return [(r.src_net, r.dst_ports) for r in rules.inbound_rules]

    assert ag_sources() == [("10.1.0.0/16", (22,))]
    n("PUT", f"address-groups/{ag}/add_addresses", {"addresses": ["192.0.2.7/32"]})
    assert ag_sources() == [("10.1.0.0/16", (22,)), ("192.0.2.7/32", (22,))]
    n("PUT", f"address-groups/{ag}/remove_addresses", {"addresses": ["10.1.0.0/16"]})
    assert ag_sources() == [("192.0.2.7/32", (22,))]
    n("PUT", f"address-groups/{ag}/remove_addresses", {"addresses": ["192.0.2.7/32"]})
    assert ag_sources() == []  # an empty group admits nothing

    # (c) Protocol "ip" and 0 (any protocol): the port is created, the rules have no protocol.
    anyproto = n("POST", "security-groups", {"security_group": {"name": "any"}})
    sg_any = anyproto["security_group"]["id"]
    for protocol, ethertype, prefix in (("ip", "IPv4", "10.9.0.0/16"), ("0", "IPv6", "fd00::/8")):
        body = {
            "security_group_id": sg_any,
            "direction": "ingress",
            "ethertype": ethertype,
            "protocol": protocol,
            "remote_ip_prefix": prefix,
        }
        n("POST", "security-group-rules", {"security_group_rule": body})
    any_port = n("POST", "ports", port_body("vm-any", sg_any))["port"]
    assert any_port["binding:vif_type"] == "tap"
    any_rules = profile_rules(client, sg_any)
    assert any_rules is not None
    assert sorted((r.ip_version, r.protocol, r.src_net) for r in any_rules.inbound_rules) == [
        (4, None, "10.9.0.0/16"),
        (6, None, "fd00::/8"),
    ]

    # A resync pass with all of this in Neutron's DB completes and repairs: the endpoint of
    # the good port deleted behind the driver's back, and a key an older version wrote with a
    # hostile device_id (deleted), next to another orchestrator's (kept). Deleting the
    # election key makes the worker step down and take over again, which resyncs at once.
    periodic_log = neutron.work_dir / "log" / "periodic.log"
    passes_before = periodic_log.read_text(errors="replace").count("resync: {")
    client.delete(good_key.path)
    hostile = f"/calico/v1/host/{HOST}/workload/openstack/vm\nold/endpoint/{good['id']}"
    foreign = f"/calico/v1/host/{HOST}/workload/k8s/pod\nx/endpoint/eth0"
    client.put(hostile, good_value)
    client.put(foreign, good_value)
    client.delete(NeutronElectionKey().path)
    wait_for(
        "a resync pass that repairs the endpoint",
        lambda: client.get(good_key.path) == good_value and client.get(hostile) is None,
        timeout=90,
    )
    assert client.get(foreign) == good_value
    text = periodic_log.read_text(errors="replace")
    assert text.count("resync: {") > passes_before
    assert "resync pass failed" not in text and "'failed'" not in text
