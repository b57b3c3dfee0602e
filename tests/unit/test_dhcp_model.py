"""Parsing what the DHCP agent reads from etcd: DHCP subnets and endpoints."""

from __future__ import annotations

import json
from typing import Any

import pytest

from calico.common.datamodel_v1 import DhcpSubnetKey, WorkloadEndpointKey
from calico.common.resources import InvalidValue
from calico.dhcp.model import (
    DhcpEndpoint,
    DhcpSubnet,
    HostRoute,
    parse_dhcp_endpoint,
    parse_dhcp_subnet,
)

KEY = WorkloadEndpointKey("h1", "openstack", "vm-1", "port-1")


def endpoint(**changes: Any) -> str:
    data: dict[str, Any] = {
        "state": "active",
        "name": "tapabcdef01-23",
        "mac": "FA:16:3E:00:00:01",
        "profile_ids": ["openstack-sg-x"],
        "ipv4_nets": ["10.65.0.2/32"],
        "ipv4_subnet_ids": ["s4"],
        "ipv4_gateway": "10.65.0.1",
        "ipv6_nets": ["fd00:65:0::2/128"],
        "ipv6_subnet_ids": ["s6"],
        "fqdn": "vm-1.example.org",
    }
    data.update(changes)
    return json.dumps({k: v for k, v in data.items() if v is not None})


def test_subnet_parsed_and_canonicalised() -> None:
    raw = json.dumps(
        {
            "network_id": "net-1",
            "cidr": "10.65.0.7/24",
            "gateway_ip": "10.65.0.1",
            "host_routes": [{"destination": "192.168.1.5/24", "nexthop": "10.65.0.254"}],
            "dns_servers": ["8.8.8.8", "1.1.1.1"],
        }
    )
    assert parse_dhcp_subnet(raw, DhcpSubnetKey("s4")) == DhcpSubnet(
        subnet_id="s4",
        network_id="net-1",
        cidr="10.65.0.0/24",
        gateway_ip="10.65.0.1",
        dns_servers=("8.8.8.8", "1.1.1.1"),
        host_routes=(HostRoute("192.168.1.0/24", "10.65.0.254"),),
    )


def test_subnet_minimal_v6_without_gateway() -> None:
    raw = json.dumps({"network_id": "n", "cidr": "FD00:65::/64", "gateway_ip": None})
    subnet = parse_dhcp_subnet(raw, DhcpSubnetKey("s6"))
    assert (subnet.cidr, subnet.gateway_ip, subnet.version) == ("fd00:65::/64", None, 6)
    assert subnet.dns_servers == () and subnet.host_routes == ()


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"cidr": "10.0.0.0/8"}, "network_id"),
        ({"network_id": "n/x", "cidr": "10.0.0.0/8"}, "network_id"),
        ({"network_id": "n", "cidr": "nonsense"}, "cidr"),
        ({"network_id": "n", "cidr": "10.0.0.0/8", "gateway_ip": "fd00::1"}, "gateway_ip"),
        ({"network_id": "n", "cidr": "10.0.0.0/8", "gateway_ip": "11.0.0.1"}, "outside"),
        ({"network_id": "n", "cidr": "10.0.0.0/8", "dns_servers": "8.8.8.8"}, "dns_servers"),
        ({"network_id": "n", "cidr": "10.0.0.0/8", "dns_servers": ["x"]}, "dns_servers[0]"),
        ({"network_id": "n", "cidr": "10.0.0.0/8", "host_routes": [1]}, "host_routes[0]"),
        (
            {"network_id": "n", "cidr": "10.0.0.0/8", "host_routes": [{"destination": "y"}]},
            "destination",
        ),
        (
            {
                "network_id": "n",
                "cidr": "10.0.0.0/8",
                "host_routes": [{"destination": "1.0.0.0/8", "nexthop": "a,b"}],
            },
            "nexthop",
        ),
        # Issue 12: Python's ipaddress accepts an IPv6 scope of any text, newlines included.
        (
            {
                "network_id": "n",
                "cidr": "fd00:65::/64",
                "dns_servers": ["fd00::53%a]\ntag:x,option6:23,[::1"],
            },
            "dns_servers.0.: scoped address",
        ),
        ({"network_id": "n", "cidr": "fd00:65::%x\ny/64"}, "cidr: invalid CIDR"),
        ({"network_id": "n", "cidr": "fd00:65::/64", "gateway_ip": "fd00:65::1%x"}, "scoped"),
        (
            {
                "network_id": "n",
                "cidr": "fd00:65::/64",
                "host_routes": [{"destination": "fd01::%a,b/64", "nexthop": "fd00:65::9"}],
            },
            "destination",
        ),
        (
            {
                "network_id": "n",
                "cidr": "10.0.0.0/8",
                "host_routes": [{"destination": "1.0.0.0/8", "nexthop": "10.0.0.9\n"}],
            },
            "nexthop",
        ),
        ({"network_id": "n", "cidr": "fd00::/48"}, "shorter than /64"),
        ({"network_id": "n", "cidr": "10.0.0.0/8", "dns_servers": ["8.8.8.8"] * 17}, "at most"),
        (
            {
                "network_id": "n",
                "cidr": "10.0.0.0/8",
                "host_routes": [{"destination": "1.0.0.0/8", "nexthop": "10.0.0.9"}] * 33,
            },
            "at most",
        ),
        ({"network_id": "n\nx", "cidr": "10.0.0.0/8"}, "network_id"),
        ({"network_id": "n", "cidr": 7}, "cidr"),
    ],
)
def test_subnet_invalid(data: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidValue, match=problem.replace("[", r"\[").replace("]", r"\]")):
        parse_dhcp_subnet(json.dumps(data), DhcpSubnetKey("s"))


@pytest.mark.parametrize("raw", ["", "[]", "{", "null"])
def test_subnet_not_an_object(raw: str) -> None:
    with pytest.raises(InvalidValue):
        parse_dhcp_subnet(raw, DhcpSubnetKey("s"))


def test_subnet_bad_key_id() -> None:
    raw = json.dumps({"network_id": "n", "cidr": "10.0.0.0/8"})
    with pytest.raises(InvalidValue, match="subnet ID"):
        parse_dhcp_subnet(raw, DhcpSubnetKey("a,b"))


def test_endpoint_parsed() -> None:
    assert parse_dhcp_endpoint(endpoint(), KEY) == DhcpEndpoint(
        endpoint_id="port-1",
        name="tapabcdef01-23",
        mac="fa:16:3e:00:00:01",
        ipv4_addrs=("10.65.0.2",),
        ipv6_addrs=("fd00:65::2",),
        ipv4_subnet_ids=("s4",),
        ipv6_subnet_ids=("s6",),
        fqdn="vm-1.example.org",
        key=KEY.path,
    )


def test_endpoint_without_subnet_ids_or_fqdn() -> None:
    ep = parse_dhcp_endpoint(
        endpoint(ipv4_subnet_ids=None, ipv6_subnet_ids=None, fqdn=None, ipv6_nets=None), KEY
    )
    assert (ep.ipv4_subnet_ids, ep.ipv6_subnet_ids, ep.fqdn) == ((), (), None)
    assert ep.hostname == "host-10-65-0-2"


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"mac": None}, "mac: missing"),
        ({"ipv4_subnet_ids": "s4"}, "ipv4_subnet_ids"),
        ({"ipv4_subnet_ids": ["s4", "s5"]}, "2 IDs for 1 addresses"),
        ({"ipv6_subnet_ids": ["bad,id"]}, "ipv6_subnet_ids"),
        ({"fqdn": 7}, "fqdn"),
        # Issue 12: every field that reaches dnsmasq is strictly validated.
        ({"fqdn": "vm\n02:00:00:00:00:09,10.65.0.9,evil"}, "fqdn: .* is not a DNS name"),
        ({"fqdn": "vm,10.65.0.9.example"}, "fqdn"),
        ({"fqdn": "vm#x.example"}, "fqdn"),
        ({"fqdn": "a" * 64 + ".example"}, "fqdn"),
        ({"fqdn": ("a" * 60 + ".") * 5}, "fqdn"),  # over 253 characters
        ({"fqdn": ""}, "fqdn"),
        ({"ipv6_nets": ["fd00:65::2%x\nevil/128"]}, "scoped address"),
        ({"ipv4_nets": [f"10.65.1.{i}/32" for i in range(17)], "ipv4_subnet_ids": None}, "at most"),
        ({"name": "tap,x"}, "name"),  # Felix's validation applies too
        ({"state": None}, "state"),
    ],
)
def test_endpoint_invalid(changes: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidValue, match=problem):
        parse_dhcp_endpoint(endpoint(**changes), KEY)


@pytest.mark.parametrize(
    ("fqdn", "addrs", "hostname"),
    [
        ("vm-1.example.org", ("10.0.0.1",), "vm-1"),
        ("single", ("10.0.0.1",), "single"),
        ("bad_label.example.org", ("10.0.0.1",), "host-10-0-0-1"),  # not a DNS label
        ("-x.example", ("10.0.0.1",), "host-10-0-0-1"),
        # Words dnsmasq reads as a lease time or a directive in a dhcp-host entry.
        ("ignore.example", ("10.0.0.1",), "host-10-0-0-1"),
        ("INFINITE.example", ("10.0.0.1",), "host-10-0-0-1"),
        ("3600", ("10.0.0.1",), "host-10-0-0-1"),
        ("12h.example", ("10.0.0.1",), "host-10-0-0-1"),
        ("1w", ("10.0.0.1",), "host-10-0-0-1"),
        ("1x", ("10.0.0.1",), "1x"),
        ("h12", ("10.0.0.1",), "h12"),
        (None, ("fd00:65:0:0:1::",), "host-fd00-65-0-0-1"),  # never ends in "-"
        (None, (), "host-fd00-65--2"),  # IPv6 only
    ],
)
def test_hostname(fqdn: str | None, addrs: tuple[str, ...], hostname: str) -> None:
    ep = DhcpEndpoint(
        "e", "tap1", "02:00:00:00:00:01", ipv4_addrs=addrs, ipv6_addrs=("fd00:65::2",), fqdn=fqdn
    )
    assert ep.hostname == hostname


def test_refusal_names_the_key_and_caps_the_value() -> None:
    """A megabyte of hostile text makes one short message that names the key (issue 12)."""
    with pytest.raises(InvalidValue) as info:
        parse_dhcp_endpoint(endpoint(fqdn="x\n" * 500_000), KEY)
    message = str(info.value)
    assert KEY.path in message
    assert "\n" not in message
    assert len(message) < 1000
