"""Neutron port / SG / subnet / floating IP -> etcd JSON (openstack.md §3), and that Felix's
own validating parser accepts every value."""

from __future__ import annotations

import json
from typing import Any

import pytest

from calico.common import resources
from calico.common.datamodel_v1 import (
    DhcpSubnetKey,
    ProfileRulesKey,
    ProfileTagsKey,
    WorkloadEndpointKey,
    parse_key,
)
from calico.openstack import translation as t

PORT_ID = "5bd18b76-0042-4a1d-9c1e-6f0e4d2a9b11"
SUBNET4 = {
    "id": "sub4",
    "network_id": "net1",
    "cidr": "10.65.0.0/24",
    "gateway_ip": "10.65.0.1",
    "host_routes": [],
    "dns_nameservers": ["8.8.8.8"],
    "enable_dhcp": True,
}
SUBNET6 = {
    "id": "sub6",
    "network_id": "net1",
    "cidr": "fd5f:65::/64",
    "gateway_ip": "fd5f:65::1",
    "host_routes": [],
    "dns_nameservers": [],
    "enable_dhcp": True,
}


def make_port(**over: Any) -> dict[str, Any]:
    port = {
        "id": PORT_ID,
        "device_id": "instance-1",
        "device_owner": "compute:nova",
        "binding:host_id": "compute-1",
        "mac_address": "fa:16:3e:01:02:03",
        "admin_state_up": True,
        "fixed_ips": [
            {"subnet_id": "sub4", "ip_address": "10.65.0.7"},
            {"subnet_id": "sub6", "ip_address": "fd5f:65::7"},
        ],
    }
    port.update(over)
    return port


def parse_endpoint(port: dict[str, Any], data: dict[str, Any]) -> resources.WorkloadEndpoint:
    key = t.endpoint_key(port)
    assert parse_key(key.path) == key
    return resources.parse_workload_endpoint(t.dumps(data), key)


def test_endpoint_from_port() -> None:
    port = make_port()
    data = t.endpoint_data(port, {"sub4": SUBNET4, "sub6": SUBNET6}, ["sg-b", "sg-a"])
    assert data == {
        "state": "active",
        "name": "tap5bd18b76-00",
        "mac": "fa:16:3e:01:02:03",
        "profile_ids": ["openstack-sg-sg-a", "openstack-sg-sg-b"],
        "ipv4_nets": ["10.65.0.7/32"],
        "ipv6_nets": ["fd5f:65::7/128"],
        "ipv4_subnet_ids": ["sub4"],
        "ipv6_subnet_ids": ["sub6"],
        "ipv4_gateway": "10.65.0.1",
        "ipv6_gateway": "fd5f:65::1",
    }
    assert t.endpoint_key(port) == WorkloadEndpointKey(
        "compute-1", "openstack", "instance-1", PORT_ID
    )
    assert t.endpoint_key(port).path == (
        f"/calico/v1/host/compute-1/workload/openstack/instance-1/endpoint/{PORT_ID}"
    )
    parsed = parse_endpoint(port, data)
    assert parsed.active
    assert parsed.name == "tap5bd18b76-00"
    assert parsed.ipv4_nets == ("10.65.0.7/32",)
    assert parsed.profile_ids == ("openstack-sg-sg-a", "openstack-sg-sg-b")


def test_admin_down_port_is_inactive_and_fqdn_kept() -> None:
    port = make_port(
        admin_state_up=False,
        fixed_ips=[{"subnet_id": "sub4", "ip_address": "10.65.0.8"}],
        dns_assignment=[{"fqdn": "vm1.example.org.", "hostname": "vm1"}],
    )
    data = t.endpoint_data(port, {"sub4": SUBNET4}, [])
    assert data["state"] == "inactive"
    assert data["fqdn"] == "vm1.example.org"
    assert data["ipv6_nets"] == []
    assert "ipv6_gateway" not in data
    assert data["profile_ids"] == []
    assert not parse_endpoint(port, data).active


def test_floating_ip_becomes_ipv4_nat() -> None:
    port = make_port()
    fips = [t.FloatingIP("10.65.0.7", "172.24.4.9")]
    data = t.endpoint_data(port, {"sub4": SUBNET4, "sub6": SUBNET6}, ["sg"], fips)
    assert data["ipv4_nat"] == [{"int_ip": "10.65.0.7", "ext_ip": "172.24.4.9"}]
    assert "ipv6_nat" not in data
    parsed = parse_endpoint(port, data)
    assert [(n.int_ip, n.ext_ip) for n in parsed.ipv4_nat] == [("10.65.0.7", "172.24.4.9")]
    # Disassociated: no NAT key at all.
    assert "ipv4_nat" not in t.endpoint_data(port, {"sub4": SUBNET4}, ["sg"], [])


def test_endpoint_ports_and_names() -> None:
    assert t.is_endpoint_port({"device_owner": "compute:nova"})
    assert t.is_endpoint_port({"device_owner": "compute:az-1"})
    assert t.is_endpoint_port({"device_owner": "kuryr:container"})
    for owner in ("network:dhcp", "network:router_interface", "network:floatingip", "", None):
        assert not t.is_endpoint_port({"device_owner": owner})
    assert t.tap_name("0123456789abcdef") == "tap0123456789a"
    assert t.profile_id("x") == "openstack-sg-x"
    assert t.sg_id_from_profile("openstack-sg-x") == "x"
    assert t.sg_id_from_profile("k8s-ns.default") is None


def rule(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "r",
        "direction": "ingress",
        "ethertype": "IPv4",
        "protocol": None,
        "port_range_min": None,
        "port_range_max": None,
        "remote_ip_prefix": None,
        "remote_group_id": None,
    }
    base.update(over)
    return base


@pytest.mark.parametrize(
    ("neutron", "direction", "calico"),
    [
        (rule(), "inbound", {"ip_version": 4, "src_net": "0.0.0.0/0"}),
        (
            rule(direction="egress", ethertype="IPv6"),
            "outbound",
            {"ip_version": 6, "dst_net": "::/0"},
        ),
        (
            rule(protocol="tcp", port_range_min=22, port_range_max=22),
            "inbound",
            {"ip_version": 4, "protocol": "tcp", "src_net": "0.0.0.0/0", "dst_ports": [22]},
        ),
        (
            rule(protocol="udp", port_range_min=1000, port_range_max=2000),
            "inbound",
            {
                "ip_version": 4,
                "protocol": "udp",
                "src_net": "0.0.0.0/0",
                "dst_ports": ["1000:2000"],
            },
        ),
        (
            rule(protocol="6", port_range_min=80, port_range_max=80, remote_ip_prefix="10.1.2.3/8"),
            "inbound",
            {"ip_version": 4, "protocol": 6, "src_net": "10.0.0.0/8", "dst_ports": [80]},
        ),
        (
            rule(protocol="icmp", port_range_min=8, port_range_max=0),
            "inbound",
            {
                "ip_version": 4,
                "protocol": "icmp",
                "src_net": "0.0.0.0/0",
                "icmp_type": 8,
                "icmp_code": 0,
            },
        ),
        (
            rule(protocol="icmp", port_range_min=8),
            "inbound",
            {"ip_version": 4, "protocol": "icmp", "src_net": "0.0.0.0/0", "icmp_type": 8},
        ),
        (
            rule(ethertype="IPv6", protocol="icmp"),
            "inbound",
            {"ip_version": 6, "protocol": "icmpv6", "src_net": "::/0"},
        ),
        (
            rule(ethertype="IPv6", protocol="ipv6-icmp", port_range_min=128),
            "inbound",
            {"ip_version": 6, "protocol": "icmpv6", "src_net": "::/0", "icmp_type": 128},
        ),
        (
            rule(protocol="gre"),
            "inbound",
            {"ip_version": 4, "protocol": 47, "src_net": "0.0.0.0/0"},
        ),
        (
            rule(remote_group_id="sg-web"),
            "inbound",
            {"ip_version": 4, "src_tag": "sg-web"},
        ),
        (
            rule(
                direction="egress",
                remote_group_id="sg-db",
                protocol="tcp",
                port_range_min=5432,
                port_range_max=5432,
            ),
            "outbound",
            {"ip_version": 4, "protocol": "tcp", "dst_tag": "sg-db", "dst_ports": [5432]},
        ),
        (
            rule(direction="egress", remote_ip_prefix="fd00::/8", ethertype="IPv6"),
            "outbound",
            {"ip_version": 6, "dst_net": "fd00::/8"},
        ),
    ],
)
def test_rule_translation(neutron: dict[str, Any], direction: str, calico: dict[str, Any]) -> None:
    assert t.rule_data(neutron) == (direction, calico)
    parsed, problems = resources.parse_rule(calico)
    assert problems == []
    assert parsed is not None


def test_unknown_protocol_rejected() -> None:
    with pytest.raises(ValueError, match="protocol"):
        t.rule_data(rule(protocol="nonsense"))


def test_profile_values_parse() -> None:
    rules = [
        rule(id="2", direction="egress"),
        rule(id="1", protocol="tcp", port_range_min=22, port_range_max=22),
        rule(id="3", remote_group_id="sg-1"),
    ]
    values = t.profile_values("sg-1", rules)
    rules_key = ProfileRulesKey("openstack-sg-sg-1")
    tags_key = ProfileTagsKey("openstack-sg-sg-1")
    assert set(values) == {rules_key.path, tags_key.path}
    assert json.loads(values[tags_key.path]) == ["sg-1"]
    assert resources.parse_profile_tags(values[tags_key.path], tags_key) == ("sg-1",)
    parsed = resources.parse_profile_rules(values[rules_key.path], rules_key)
    assert len(parsed.inbound_rules) == 2
    assert len(parsed.outbound_rules) == 1
    # The order of Neutron's answer does not change the JSON (the resync compares text).
    assert t.profile_values("sg-1", list(reversed(rules))) == values


def test_subnet_data() -> None:
    assert t.subnet_data({**SUBNET4, "cidr": "10.65.0.9/24"}) == {
        "network_id": "net1",
        "cidr": "10.65.0.0/24",
        "host_routes": [],
        "gateway_ip": "10.65.0.1",
        "dns_servers": ["8.8.8.8"],
    }
    assert "dns_servers" not in t.subnet_data(SUBNET6)
    assert t.subnet_key("sub4") == DhcpSubnetKey("sub4")
    assert t.subnet_key("sub4").path == "/calico/dhcp/v1/subnet/sub4"


@pytest.mark.parametrize(
    ("current", "written"),
    [
        (None, "tap"),
        ("", "tap"),
        ("cali", "cali,tap"),
        ("tap", None),
        ("cali, tap", None),
        ("veth,cali", "veth,cali,tap"),
    ],
)
def test_interface_prefix(current: str | None, written: str | None) -> None:
    assert t.interface_prefix_with_tap(current) == written


def test_dumps_is_canonical() -> None:
    assert t.dumps({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'
