"""Neutron port / SG / subnet / floating IP -> etcd JSON (openstack.md §3), and that Felix's
own validating parser accepts every value."""

from __future__ import annotations

import json
from typing import Any

import pytest

from calico.common import protocols, resources
from calico.common.datamodel_v1 import (
    DhcpSubnetKey,
    ProfileRulesKey,
    ProfileTagsKey,
    WorkloadEndpointKey,
    parse_key,
)
from calico.openstack import endpoints, store, subnets
from calico.openstack import security_groups as sg
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
    key = endpoints.endpoint_key(port)
    assert parse_key(key.path) == key
    return resources.parse_workload_endpoint(t.dumps(data), key)


def test_endpoint_from_port() -> None:
    port = make_port()
    data = endpoints.endpoint_data(port, {"sub4": SUBNET4, "sub6": SUBNET6}, ["sg-b", "sg-a"])
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
    assert endpoints.endpoint_key(port) == WorkloadEndpointKey(
        "compute-1", "openstack", "instance-1", PORT_ID
    )
    assert endpoints.endpoint_key(port).path == (
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
    data = endpoints.endpoint_data(port, {"sub4": SUBNET4}, [])
    assert data["state"] == "inactive"
    assert data["fqdn"] == "vm1.example.org"
    assert data["ipv6_nets"] == []
    assert "ipv6_gateway" not in data
    assert data["profile_ids"] == []
    assert not parse_endpoint(port, data).active


def test_floating_ip_becomes_ipv4_nat() -> None:
    port = make_port()
    fips = [endpoints.FloatingIP("10.65.0.7", "172.24.4.9")]
    data = endpoints.endpoint_data(port, {"sub4": SUBNET4, "sub6": SUBNET6}, ["sg"], fips)
    assert data["ipv4_nat"] == [{"int_ip": "10.65.0.7", "ext_ip": "172.24.4.9"}]
    assert "ipv6_nat" not in data
    parsed = parse_endpoint(port, data)
    assert [(n.int_ip, n.ext_ip) for n in parsed.ipv4_nat] == [("10.65.0.7", "172.24.4.9")]
    # Disassociated: no NAT key at all.
    assert "ipv4_nat" not in endpoints.endpoint_data(port, {"sub4": SUBNET4}, ["sg"], [])


def test_endpoint_ports_and_names() -> None:
    assert endpoints.is_endpoint_port({"device_owner": "compute:nova"})
    assert endpoints.is_endpoint_port({"device_owner": "compute:az-1"})
    assert endpoints.is_endpoint_port({"device_owner": "kuryr:container"})
    for owner in ("network:dhcp", "network:router_interface", "network:floatingip", "", None):
        assert not endpoints.is_endpoint_port({"device_owner": owner})
    assert endpoints.tap_name("0123456789abcdef") == "tap0123456789a"
    assert sg.profile_id("x") == "openstack-sg-x"
    assert sg.sg_id_from_profile("openstack-sg-x") == "x"
    assert sg.sg_id_from_profile("k8s-ns.default") is None


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
    assert sg.rule_data(neutron) == (direction, [calico])
    parsed, problems = resources.parse_rule(calico)
    assert problems == []
    assert parsed is not None


def test_unknown_protocol_rejected() -> None:
    with pytest.raises(t.Untranslatable, match="protocol"):
        sg.rule_data(rule(protocol="nonsense"))


def test_profile_values_parse() -> None:
    rules = [
        rule(id="2", direction="egress"),
        rule(id="1", protocol="tcp", port_range_min=22, port_range_max=22),
        rule(id="3", remote_group_id="sg-1"),
    ]
    values = sg.profile_values("sg-1", rules)
    rules_key = ProfileRulesKey("openstack-sg-sg-1")
    tags_key = ProfileTagsKey("openstack-sg-sg-1")
    assert set(values) == {rules_key.path, tags_key.path}
    assert json.loads(values[tags_key.path]) == ["sg-1"]
    assert resources.parse_profile_tags(values[tags_key.path], tags_key) == ("sg-1",)
    parsed = resources.parse_profile_rules(values[rules_key.path], rules_key)
    assert len(parsed.inbound_rules) == 2
    assert len(parsed.outbound_rules) == 1
    # The order of Neutron's answer does not change the JSON (the resync compares text).
    assert sg.profile_values("sg-1", list(reversed(rules))) == values


def test_subnet_data() -> None:
    assert subnets.subnet_data({**SUBNET4, "cidr": "10.65.0.9/24"}) == {
        "network_id": "net1",
        "cidr": "10.65.0.0/24",
        "host_routes": [],
        "gateway_ip": "10.65.0.1",
        "dns_servers": ["8.8.8.8"],
    }
    assert "dns_servers" not in subnets.subnet_data(SUBNET6)
    assert subnets.subnet_key("sub4") == DhcpSubnetKey("sub4")
    assert subnets.subnet_key("sub4").path == "/calico/dhcp/v1/subnet/sub4"


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
    assert store.interface_prefix_with_tap(current) == written


def test_dumps_is_canonical() -> None:
    assert t.dumps({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'


# --- Protocol "any": 0, ip, hopopt -----------------------------------------------------------


@pytest.mark.parametrize("protocol", ["0", 0, "ip", "hopopt", "IP", "any", "", None])
@pytest.mark.parametrize("ethertype", ["IPv4", "IPv6"])
@pytest.mark.parametrize("direction", ["ingress", "egress"])
def test_protocol_zero_is_any_protocol(protocol: object, ethertype: str, direction: str) -> None:
    """Neutron accepts ip / hopopt / 0; its iptables driver leaves out -p for them."""
    version = 6 if ethertype == "IPv6" else 4
    end = "src" if direction == "ingress" else "dst"
    anywhere = "::/0" if version == 6 else "0.0.0.0/0"
    neutron = rule(protocol=protocol, ethertype=ethertype, direction=direction)
    expected = {"ip_version": version, f"{end}_net": anywhere}
    assert sg.rule_data(neutron)[1] == [expected]
    values = sg.profile_values("sg-1", [neutron])
    key = ProfileRulesKey("openstack-sg-sg-1")
    parsed = resources.parse_profile_rules(values[key.path], key)
    rules = parsed.inbound_rules if direction == "ingress" else parsed.outbound_rules
    assert [r.protocol for r in rules] == [None]


def test_protocol_table_agrees_with_neutron() -> None:
    constants = pytest.importorskip("neutron_lib.constants")
    assert dict(protocols.IP_PROTOCOL_NUMBERS) == constants.IP_PROTOCOL_MAP
    # Every name Neutron accepts translates, in the IP version(s) it is valid for.
    for name, number in constants.IP_PROTOCOL_MAP.items():
        for ethertype in ("IPv6",) if number == 58 else ("IPv4", "IPv6"):
            _, rules = sg.rule_data(rule(protocol=name, ethertype=ethertype))
            assert len(rules) == 1
            assert (resources.parse_rule(rules[0])[1]) == []


# --- Remote address groups ------------------------------------------------------------------

GROUPS = {
    "ag-1": ["10.1.0.0/16", "192.0.2.7/32", "fd00:1::/64", "10.1.0.0/16"],
    "ag-empty": [],
    "ag-v6": ["fd00:2::/48"],
}


def test_address_group_rule_is_one_rule_per_cidr() -> None:
    base = rule(protocol="tcp", port_range_min=22, port_range_max=22)
    direction, rules = sg.rule_data({**base, "remote_address_group_id": "ag-1"}, GROUPS)
    assert direction == "inbound"
    assert rules == [
        {"ip_version": 4, "protocol": "tcp", "dst_ports": [22], "src_net": "10.1.0.0/16"},
        {"ip_version": 4, "protocol": "tcp", "dst_ports": [22], "src_net": "192.0.2.7/32"},
    ]
    six = {**base, "ethertype": "IPv6", "direction": "egress", "remote_address_group_id": "ag-1"}
    assert sg.rule_data(six, GROUPS) == (
        "outbound",
        [{"ip_version": 6, "protocol": "tcp", "dst_ports": [22], "dst_net": "fd00:1::/64"}],
    )


@pytest.mark.parametrize(
    ("group", "ethertype"),
    [("ag-empty", "IPv4"), ("ag-v6", "IPv4"), ("ag-gone", "IPv4"), ("ag-empty", "IPv6")],
)
def test_address_group_without_addresses_admits_nothing(group: str, ethertype: str) -> None:
    """An empty group, a group with only the other family's addresses, or a group that cannot
    be found: no rule at all, never a rule from anywhere."""
    neutron = rule(remote_address_group_id=group, ethertype=ethertype)
    assert sg.rule_data(neutron, GROUPS) == ("inbound", [])
    assert sg.rule_data(neutron) == ("inbound", [])
    other = rule(id="other", protocol="icmp")
    assert sg.profile_rules_data([neutron, other], GROUPS) == sg.profile_rules_data([other])


def test_address_groups_referenced() -> None:
    rules = [rule(remote_address_group_id="ag-1"), rule(id="2"), rule(id="3", remote_group_id="x")]
    assert sg.address_group_ids(rules) == {"ag-1"}


# --- Everything else fails closed ---------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        rule(port_range_min=22, port_range_max=22),  # ports without a protocol
        rule(protocol="gre", port_range_min=1, port_range_max=2),  # ports on a portless protocol
        rule(protocol="tcp", port_range_min=22),  # half a range
        rule(protocol="tcp", port_range_min=30, port_range_max=20),
        rule(protocol="tcp", port_range_min=1, port_range_max=70000),
        rule(protocol="icmp", port_range_max=0),  # ICMP code without a type
        rule(protocol="icmp", port_range_min=255),  # the kernel cannot match type 255
        rule(protocol="icmp", port_range_min=-1),
        rule(protocol="ipv6-icmp"),  # ICMPv6 in an IPv4 rule
        rule(protocol="300"),
        rule(protocol="tcp\n-A FORWARD -j ACCEPT"),
        rule(remote_ip_prefix="fd00::/8"),  # the other family
        rule(remote_ip_prefix="10.0.0.0/8", remote_group_id="sg-2"),  # two remotes
        rule(remote_ip_prefix="fe80::%eth0/64", ethertype="IPv6"),  # a zone
        rule(remote_ip_prefix="10.0.0.0/8\n"),
        rule(remote_group_id="sg\nx"),
        rule(direction="both"),
        rule(ethertype="IPv5"),
        rule(ethertype=None),
        {**rule(), "remote_something_new": "x"},  # a field this translation does not know
    ],
)
def test_untranslatable_rules_are_left_out(
    bad: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    bad = {**bad, "id": "bad"}
    with pytest.raises(t.Untranslatable):
        sg.rule_data(bad)
    good = rule(id="good", protocol="tcp", port_range_min=80, port_range_max=80)
    with caplog.at_level("WARNING", logger="calico.openstack.translation"):
        for _ in range(3):
            data = sg.profile_rules_data([bad, good])
            assert data == sg.profile_rules_data([good])
    # Logged once however many passes meet it.
    mentions = [r for r in caplog.records if "'bad'" in r.getMessage()]
    assert len(mentions) <= 1


def test_warn_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="calico.openstack.translation"):
        for _ in range(3):
            t.warn_once("test_warn_once: the same problem")
    assert [r.getMessage() for r in caplog.records] == ["test_warn_once: the same problem"]


# --- Ports: the endpoint key segments come from the tenant ------------------------------------

HOSTILE = [
    "",
    ".",
    "..",
    "a\nb",
    "vm\n-A felix-FORWARD -j ACCEPT\nCOMMIT",
    "x'y",
    'x"y',
    "*filter",
    "nul\x00byte",
    "a" * 256,
    "ünïcödé",
    "a/b",
    "a b",
    "$(reboot)",
    "tab\there",
    "🙂",
]


@pytest.mark.parametrize("device_id", HOSTILE[3:])  # "", "." and ".." : see below
def test_hostile_device_id_is_refused(device_id: str) -> None:
    port = make_port(device_id=device_id)
    problems = endpoints.port_problems(port)
    assert problems and "device_id" in problems[0]
    assert "\n" not in problems[0]  # quoted
    with pytest.raises(t.Untranslatable, match="device_id"):
        endpoints.endpoint_key(port)
    with pytest.raises(t.Untranslatable):
        endpoints.endpoint_data(port, {"sub4": SUBNET4, "sub6": SUBNET6}, ["sg"])


def test_device_id_edge_cases() -> None:
    # An empty device_id means "no VM": the port ID is the workload.
    assert endpoints.endpoint_key(make_port(device_id="")).workload == PORT_ID
    for bad in (".", ".."):
        assert endpoints.port_problems(make_port(device_id=bad))
    # Valid but unusual IDs are fine: the rule is the data model's, not a UUID check.
    for unusual in ("COMMIT", "-A", "..."):
        assert endpoints.endpoint_key(make_port(device_id=unusual)).workload == unusual
    # Not an endpoint port: nothing is written for it, so nothing to refuse.
    assert endpoints.port_problems(make_port(device_owner="network:dhcp", device_id="a\nb")) == []


@pytest.mark.parametrize(
    "over",
    [
        {"binding:host_id": "compute\n1"},
        {"id": "port\nid"},
        {"id": "a.b.c.d.e.f.g.h"},  # a valid ID, but "tapa.b.c.d.e." is no interface name
        {"mac_address": "fa:16:3e:01:02:zz"},
    ],
)
def test_other_port_fields_refused(over: dict[str, Any]) -> None:
    port = make_port(**over)
    assert endpoints.port_problems(port)
    with pytest.raises(t.Untranslatable):
        endpoints.endpoint_data(port, {"sub4": SUBNET4, "sub6": SUBNET6}, ["sg"])


def test_optional_port_fields_are_dropped_not_fatal() -> None:
    port = make_port(
        dns_assignment=[{"fqdn": "vm1\n--dhcp-option=3,6.6.6.6.example.org.", "hostname": "x"}],
        fixed_ips=[{"subnet_id": "sub4", "ip_address": "10.65.0.7"}],
    )
    bad_gateway = {**SUBNET4, "gateway_ip": "fe80::1%eth0"}
    fips = [
        endpoints.FloatingIP("10.65.0.99", "172.24.4.9"),
        endpoints.FloatingIP("10.65.0.7", "bad\n"),
    ]
    data = endpoints.endpoint_data(port, {"sub4": bad_gateway}, ["sg", "bad\nsg"], fips)
    assert "fqdn" not in data
    assert "ipv4_gateway" not in data
    assert "ipv4_nat" not in data
    assert data["profile_ids"] == ["openstack-sg-sg"]
    parse_endpoint(port, data)


# --- Subnets ---------------------------------------------------------------------------------


def test_subnet_optional_fields_are_dropped() -> None:
    from calico.dhcp.model import parse_dhcp_subnet

    subnet = {
        **SUBNET4,
        "gateway_ip": "10.99.0.1",  # outside the subnet: Neutron allows it
        "dns_nameservers": ["8.8.8.8", "2001:4860::8888", "8.8.8.8\n"],
        "host_routes": [
            {"destination": "10.9.0.0/16", "nexthop": "10.65.0.254"},
            {"destination": "fd00::/8", "nexthop": "10.65.0.254"},
            {"destination": "10.8.0.0/16", "nexthop": "x\ny"},
        ],
    }
    values = subnets.subnet_values(subnet)
    key = DhcpSubnetKey("sub4")
    data = json.loads(values[key.path])
    assert data == {
        "network_id": "net1",
        "cidr": "10.65.0.0/24",
        "gateway_ip": None,
        "dns_servers": ["8.8.8.8"],
        "host_routes": [{"destination": "10.9.0.0/16", "nexthop": "10.65.0.254"}],
    }
    assert parse_dhcp_subnet(values[key.path], key).dns_servers == ("8.8.8.8",)
    with pytest.raises(t.Untranslatable):
        subnets.subnet_values({**SUBNET4, "id": "sub\n4"})
    with pytest.raises(t.Untranslatable):
        subnets.subnet_values({**SUBNET4, "network_id": "net'1"})


# --- Log lines: a tenant's megabyte value makes one short line (issue 12) -----------------------

HUGE = "x\n-A felix-FORWARD -j ACCEPT\n" * 40_000  # about 1 MB


def _one_short_line(message: str) -> None:
    assert len(message) < 2_000, (len(message), message[:300])
    assert "\n" not in message and "\r" not in message and "\x00" not in message


def test_a_megabyte_rule_value_is_logged_as_one_short_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    t.forget_warnings()
    bad_rules = [
        rule(id="bad-protocol", protocol=HUGE),
        rule(id="bad-prefix", remote_ip_prefix=HUGE),
        rule(id="bad-group", remote_group_id=HUGE),
        rule(id="bad-ethertype", ethertype=HUGE),
        {**rule(id="bad-field"), HUGE: "x"},
        rule(id=HUGE, direction=HUGE),
    ]
    good = rule(id="good", protocol="tcp", port_range_min=80, port_range_max=80)
    with caplog.at_level("WARNING", logger="calico.openstack.translation"):
        data = sg.profile_rules_data([*bad_rules, good])
    assert data == sg.profile_rules_data([good])
    assert len(caplog.records) == len(bad_rules)
    for record in caplog.records:
        _one_short_line(record.getMessage())
    for rule_id in ("bad-protocol", "bad-prefix", "bad-group", "bad-ethertype", "bad-field"):
        assert sum(f"rule '{rule_id}'" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize(
    "over",
    [
        {"device_id": HUGE},
        {"binding:host_id": HUGE},
        {"id": HUGE},
        {"mac_address": HUGE},
    ],
    ids=["device_id", "host", "port_id", "mac"],
)
def test_a_megabyte_port_field_is_logged_as_one_short_line(
    over: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    # What the driver answers (HTTP 400) and logs (the hooks, the resync) for such a port.
    t.forget_warnings()
    port = make_port(**over)
    problems = endpoints.port_problems(port)
    assert problems
    _one_short_line("; ".join(problems))
    with pytest.raises(t.Untranslatable) as raised:
        endpoints.endpoint_data(port, {"sub4": SUBNET4, "sub6": SUBNET6}, ["sg"])
    with caplog.at_level("WARNING", logger="calico.openstack.translation"):
        t.warn_left_out(f"port {over}", raised.value, "resync: ")
    (record,) = caplog.records
    _one_short_line(record.getMessage())


def test_an_unexpected_failure_with_a_megabyte_message_is_one_short_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    t.forget_warnings()
    with caplog.at_level("WARNING", logger="calico.openstack.translation"):
        t.warn_left_out("port 'p1'", RuntimeError(HUGE), "resync: ")
    (record,) = caplog.records
    _one_short_line(record.getMessage())
    assert record.getMessage().startswith("resync: port 'p1' failed: RuntimeError: 'x\\n-A")
    assert record.exc_info is not None  # the traceback is separate from the message
