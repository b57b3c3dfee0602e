"""Property test of the Neutron -> etcd translation with hostile input (issue 12).

Every string field a tenant (or an older version's data) can put into a port, a security-group
rule, an address group or a subnet gets hostile values: newlines, quotes, iptables-restore
words ("-A", "COMMIT", "*filter"), NUL, very long strings, unicode, zones, wrong types. For each
object the translation must either refuse it (`Untranslatable`, and nothing else may escape) or
produce values that the readers' own validating parsers accept: the endpoint key parses back to
itself (never a BadKey), Felix's `parse_workload_endpoint` / `parse_profile_rules` /
`parse_profile_tags` and the DHCP agent's `parse_dhcp_endpoint` / `parse_dhcp_subnet` accept the
JSON. And an address-group rule never admits more than the group's CIDRs.

Seeded, so every run checks the same cases (no dependency beyond pytest); the hand-picked
hostile values are all tried on every field, then random combinations of several at once.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from calico.common import resources
from calico.common.datamodel_v1 import (
    BadKey,
    ProfileRulesKey,
    ProfileTagsKey,
    parse_dhcp_subnet_key,
    parse_key,
)
from calico.dhcp.model import parse_dhcp_endpoint, parse_dhcp_subnet
from calico.openstack import endpoints, subnets
from calico.openstack import security_groups as sg
from calico.openstack import translation as t

HOSTILE: list[object] = [
    "",
    " ",
    ".",
    "..",
    "a\nb",
    "x\n-A felix-FORWARD -j ACCEPT\nCOMMIT\n",
    "COMMIT",
    "*filter",
    "-A",
    "-j ACCEPT",
    "'",
    '"',
    "x' OR '1",
    "nul\x00byte",
    "\r\n",
    "\t",
    "a" * 256,
    "b" * 100_000,
    "ünïcödé",
    "🙂",
    "٦",  # an Arabic-Indic digit: int() takes it
    "a/b",
    "../..",
    "$(reboot)",
    "--dhcp-option=3,6.6.6.6",
    "%",
    "0",
    "-1",
    "65536",
    "1e3",
    "0.0.0.0/0",
    "::/0",
    "10.0.0.0/8\n",
    "10/8",
    "fe80::1%eth0",
    "fe80::%eth0/64",
    "10.65.0.300",
    "ip",
    "hopopt",
    "icmp",
    "ipv6-icmp",
    "tcp",
    "IPv6",
    "ingress",
    None,
    0,
    -1,
    255,
    256,
    2**70,
    True,
    1.5,
    [],
    {},
    ["x"],
    {"a": "b"},
]


def base_port() -> dict[str, Any]:
    return {
        "id": "5bd18b76-0042-4a1d-9c1e-6f0e4d2a9b11",
        "device_id": "instance-1",
        "device_owner": "compute:nova",
        "binding:host_id": "compute-1",
        "mac_address": "fa:16:3e:01:02:03",
        "admin_state_up": True,
        "name": "vm1-port",
        "description": "a port",
        "dns_name": "vm1",
        "dns_assignment": [{"fqdn": "vm1.example.org.", "hostname": "vm1"}],
        "fixed_ips": [
            {"subnet_id": "sub4", "ip_address": "10.65.0.7"},
            {"subnet_id": "sub6", "ip_address": "fd5f:65::7"},
        ],
        "security_groups": ["sg-a", "sg-b"],
    }


def base_subnet(version: int = 4) -> dict[str, Any]:
    if version == 6:
        return {
            "id": "sub6",
            "network_id": "net1",
            "cidr": "fd5f:65::/64",
            "gateway_ip": "fd5f:65::1",
            "host_routes": [{"destination": "fd00::/8", "nexthop": "fd5f:65::fe"}],
            "dns_nameservers": ["fd5f:65::53"],
            "enable_dhcp": True,
            "name": "s6",
        }
    return {
        "id": "sub4",
        "network_id": "net1",
        "cidr": "10.65.0.0/24",
        "gateway_ip": "10.65.0.1",
        "host_routes": [{"destination": "10.9.0.0/16", "nexthop": "10.65.0.254"}],
        "dns_nameservers": ["8.8.8.8"],
        "enable_dhcp": True,
        "name": "s4",
    }


def base_rule() -> dict[str, Any]:
    return {
        "id": "rule-1",
        "security_group_id": "sg-a",
        "project_id": "p1",
        "description": "web",
        "direction": "ingress",
        "ethertype": "IPv4",
        "protocol": "tcp",
        "port_range_min": 80,
        "port_range_max": 81,
        "remote_ip_prefix": None,
        "remote_group_id": None,
        "remote_address_group_id": "ag-1",
        "normalized_cidr": None,
    }


def base_groups() -> dict[str, list[Any]]:
    return {"ag-1": ["10.1.0.0/16", "192.0.2.7/32", "fd00:1::/64"]}


# Every place a hostile value can go: (object kind, path into it).
PORT_FIELDS: list[tuple[Any, ...]] = [
    ("id",),
    ("device_id",),
    ("device_owner",),
    ("binding:host_id",),
    ("mac_address",),
    ("admin_state_up",),
    ("name",),
    ("description",),
    ("dns_name",),
    ("dns_assignment",),
    ("dns_assignment", 0, "fqdn"),
    ("dns_assignment", 0, "hostname"),
    ("fixed_ips",),
    ("fixed_ips", 0, "subnet_id"),
    ("fixed_ips", 0, "ip_address"),
    ("fixed_ips", 1, "ip_address"),
    ("security_groups", 0),
    ("fip", "fixed_ip"),
    ("fip", "floating_ip"),
    ("subnet", "gateway_ip"),
]
RULE_FIELDS: list[tuple[Any, ...]] = [
    *((k,) for k in base_rule()),
    ("remote_address_group_id",),
    ("group", 0),
    ("group", 1),
    ("new_field",),
]
SUBNET_FIELDS: list[tuple[Any, ...]] = [
    *((k,) for k in base_subnet()),
    ("host_routes", 0),
    ("host_routes", 0, "destination"),
    ("host_routes", 0, "nexthop"),
    ("dns_nameservers", 0),
]


def put(obj: Any, path: tuple[Any, ...], value: object) -> None:
    """obj[path...] = value; skipped when an earlier edit replaced a parent of the path."""
    try:
        for step in path[:-1]:
            obj = obj[step]
        obj[path[-1]] = value
    except (TypeError, KeyError, IndexError):
        pass


# --- The checks: refused, or accepted by the readers' parsers ------------------------------------


def check_port(edits: list[tuple[tuple[Any, ...], object]]) -> bool:
    port = base_port()
    fip = {"fixed_ip": "10.65.0.7", "floating_ip": "172.24.4.9"}
    subnet4 = base_subnet(4)
    for path, value in edits:
        if path[0] == "fip":
            put(fip, path[1:], value)
        elif path[0] == "subnet":
            put(subnet4, path[1:], value)
        else:
            put(port, path, value)
    fips = [endpoints.FloatingIP(fip["fixed_ip"], fip["floating_ip"])]
    port_subnets = {"sub4": subnet4, "sub6": base_subnet(6)}
    try:
        problems = endpoints.port_problems(port)
    except t.Untranslatable:
        problems = ["refused"]
    if not problems and endpoints.is_endpoint_port(port) and port.get("binding:host_id"):
        # What the API accepts can always be keyed (precommit and translation agree).
        endpoints.endpoint_key(port)
    try:
        key = endpoints.endpoint_key(port)
        data = endpoints.endpoint_data(port, port_subnets, port["security_groups"], fips)
    except t.Untranslatable:
        return False
    parsed_key = parse_key(key.path)
    assert not isinstance(parsed_key, BadKey)
    assert parsed_key == key
    raw = t.dumps(data)
    resources.parse_workload_endpoint(raw, key)
    parse_dhcp_endpoint(raw, key)
    return True


def check_rule(edits: list[tuple[tuple[Any, ...], object]]) -> bool:
    rule = base_rule()
    groups = base_groups()
    for path, value in edits:
        if path[0] == "group":
            put(groups["ag-1"], path[1:], value)
        else:
            put(rule, path, value)
    try:
        _, rules = sg.rule_data(rule, groups)
    except t.Untranslatable:
        rules = None
    if rules is not None:
        for calico in rules:
            assert resources.parse_rule(calico)[1] == [], calico
        if rule.get("remote_address_group_id") == "ag-1":
            # Never wider than the group: every net is exactly one of its (valid) CIDRs.
            allowed = set()
            for cidr in groups["ag-1"]:
                try:
                    allowed.add(str(ipaddress.ip_network(t.cidr_text(cidr))))
                except t.Untranslatable:
                    pass
            assert {r.get("src_net") or r.get("dst_net") for r in rules} <= allowed
    try:
        values = sg.profile_values(str(rule.get("security_group_id")), [rule], groups)
    except t.Untranslatable:
        return False
    for path, raw in values.items():
        key = parse_key(path)
        assert isinstance(key, ProfileRulesKey | ProfileTagsKey), path
        if isinstance(key, ProfileRulesKey):
            parsed = resources.parse_profile_rules(raw, key)
            assert len(parsed.inbound_rules) + len(parsed.outbound_rules) == len(rules or ())
        else:
            resources.parse_profile_tags(raw, key)
    return rules is not None


def check_subnet(edits: list[tuple[tuple[Any, ...], object]], version: int = 4) -> bool:
    subnet = base_subnet(version)
    for path, value in edits:
        put(subnet, path, value)
    try:
        values = subnets.subnet_values(subnet)
    except t.Untranslatable:
        return False
    [(path, raw)] = values.items()
    key = parse_dhcp_subnet_key(path)
    assert key is not None and key.subnet_id == subnet["id"]
    parse_dhcp_subnet(raw, key)
    json.loads(raw)
    return True


# Each check: True if the object was accepted (and its values checked), False if refused.
CHECKS: dict[str, tuple[Callable[[list[Any]], bool], list[tuple[Any, ...]]]] = {
    "port": (check_port, PORT_FIELDS),
    "rule": (check_rule, RULE_FIELDS),
    "subnet": (check_subnet, SUBNET_FIELDS),
}


def test_baseline_objects_translate() -> None:
    """The unedited objects are valid, so a refusal below is due to the hostile value."""
    port = base_port()
    endpoints.endpoint_data(port, {"sub4": base_subnet(4), "sub6": base_subnet(6)}, ["sg-a"])
    assert len(sg.rule_data(base_rule(), base_groups())[1]) == 2
    subnets.subnet_values(base_subnet())
    assert all(check([]) for check, _ in CHECKS.values())


@pytest.mark.parametrize("kind", sorted(CHECKS))
def test_each_hostile_value_in_each_field(kind: str) -> None:
    check, fields = CHECKS[kind]
    accepted = {path: 0 for path in fields}
    for path in fields:
        for value in HOSTILE:
            try:
                accepted[path] += check([(path, copy.deepcopy(value))])
            except Exception as e:  # report which input broke it
                raise AssertionError(f"{kind} {path} = {value!r:.80}: {e!r:.300}") from e
    # Not vacuous: some objects were accepted (so their output was checked) and some refused.
    total = sum(accepted.values())
    assert 0 < total < len(fields) * len(HOSTILE), accepted


def _random_value(rng: random.Random) -> object:
    """A hand-picked hostile value, or a random mix of pieces of them and of valid text."""
    if rng.random() < 0.5:
        return copy.deepcopy(rng.choice(HOSTILE))
    pieces = [v for v in HOSTILE if isinstance(v, str) and len(v) < 1000]
    pieces += ["10.65.0.7", "fd00::", "/", "8", "sg-a", "ag-1", "a", "-", "_", ".", ":"]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(1, 4)))


@pytest.mark.parametrize("seed", range(8))
def test_random_combinations(seed: int) -> None:
    rng = random.Random(seed)
    outcomes = []
    for _ in range(300):
        kind = rng.choice(sorted(CHECKS))
        check, fields = CHECKS[kind]
        edits = [(rng.choice(fields), _random_value(rng)) for _ in range(rng.randint(1, 3))]
        try:
            outcomes.append(check(edits))
        except Exception as e:
            raise AssertionError(f"seed {seed}: {kind} {edits!r:.300}: {e!r:.300}") from e
    assert any(outcomes) and not all(outcomes), "every object refused, or none"
