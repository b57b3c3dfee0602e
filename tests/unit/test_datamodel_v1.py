"""Typed v1 keys: formatting, parsing, round trips, and the keys Felix ignores."""

from __future__ import annotations

import pytest

from calico.common import datamodel_v1 as dm
from calico.common.datamodel_v1 import (
    BadKey,
    DhcpSubnetKey,
    FelixLastStatusKey,
    FelixStatusKey,
    GlobalConfigKey,
    HostConfigKey,
    HostEndpointKey,
    HostEndpointStatusKey,
    HostIPKey,
    IPPoolKey,
    NeutronElectionKey,
    PolicyKey,
    ProfileLabelsKey,
    ProfileRulesKey,
    ProfileTagsKey,
    ReadyKey,
    TierMetadataKey,
    WorkloadEndpointKey,
    WorkloadEndpointStatusKey,
    parse_key,
)

KEYS_AND_PATHS = [
    (ReadyKey(), "/calico/v1/Ready"),
    (GlobalConfigKey("LogSeverityFile"), "/calico/v1/config/LogSeverityFile"),
    (HostConfigKey("host-1", "InterfacePrefix"), "/calico/v1/host/host-1/config/InterfacePrefix"),
    (
        WorkloadEndpointKey("h", "openstack", "wl_1", "ep.1"),
        "/calico/v1/host/h/workload/openstack/wl_1/endpoint/ep.1",
    ),
    (HostEndpointKey("h", "eth0"), "/calico/v1/host/h/endpoint/eth0"),
    (HostIPKey("h"), "/calico/v1/host/h/bird_ip"),
    (ProfileRulesKey("openstack-sg-1"), "/calico/v1/policy/profile/openstack-sg-1/rules"),
    (ProfileTagsKey("p"), "/calico/v1/policy/profile/p/tags"),
    (ProfileLabelsKey("p"), "/calico/v1/policy/profile/p/labels"),
    (TierMetadataKey("t"), "/calico/v1/policy/tier/t/metadata"),
    (PolicyKey("default", "pol"), "/calico/v1/policy/tier/default/policy/pol"),
    (IPPoolKey(4, "10.65.0.0-16"), "/calico/v1/ipam/v4/pool/10.65.0.0-16"),
    (IPPoolKey(6, "fd00::-64"), "/calico/v1/ipam/v6/pool/fd00::-64"),
    (FelixStatusKey("h"), "/calico/felix/v1/host/h/status"),
    (FelixLastStatusKey("h"), "/calico/felix/v1/host/h/last_reported_status"),
    (
        WorkloadEndpointStatusKey("h", "k8s", "ns.pod", "eth0"),
        "/calico/felix/v1/host/h/workload/k8s/ns.pod/endpoint/eth0",
    ),
    (HostEndpointStatusKey("h", "e"), "/calico/felix/v1/host/h/endpoint/e"),
]


@pytest.mark.parametrize(("key", "path"), KEYS_AND_PATHS)
def test_format_and_parse(key: dm.Key, path: str) -> None:
    assert key.path == path
    assert parse_key(path) == key
    assert parse_key(key.path) == key


def _every_key(segment: str) -> list[dm.Key]:
    return [
        GlobalConfigKey(segment),
        HostConfigKey(segment, segment),
        WorkloadEndpointKey(segment, segment, segment, segment),
        HostEndpointKey(segment, segment),
        HostIPKey(segment),
        ProfileRulesKey(segment),
        ProfileTagsKey(segment),
        ProfileLabelsKey(segment),
        TierMetadataKey(segment),
        PolicyKey(segment, segment),
        FelixStatusKey(segment),
        FelixLastStatusKey(segment),
        WorkloadEndpointStatusKey(segment, segment, segment, segment),
        HostEndpointStatusKey(segment, segment),
    ]


@pytest.mark.parametrize("segment", ["a", "-", "...", "ns.pod", "A_b-9.x", "x" * 255])
def test_round_trip_valid_segments(segment: str) -> None:
    for key in _every_key(segment):
        assert parse_key(key.path) == key


# Hostile or broken ID segments: each could reach a rule comment, a log line or a status key.
HOSTILE_SEGMENTS = [
    "with space",
    'quote"',
    "new\nline",
    "x\n-A felix-FORWARD -j ACCEPT",
    "nul\x00",
    "weird:chars!@#$%^&*()",
    "\u00e9t\u00e9",
    ".",
    "..",
    "x" * 256,
    "tab\tx",
]


def _fields(key: dm.Key) -> list[str]:
    return [f for f in key.__dataclass_fields__ if not f.startswith("_")]


@pytest.mark.parametrize("segment", HOSTILE_SEGMENTS)
def test_invalid_segments_are_bad_keys_and_never_formatted(segment: str) -> None:
    for key in _every_key("good"):
        for position, part in enumerate(key.path.split("/")):
            if part != "good":
                continue
            # The hostile segment in this position of this kind of key.
            parts = key.path.split("/")
            parts[position] = segment
            path = "/".join(parts)
            parsed = parse_key(path)
            assert isinstance(parsed, BadKey), path
            assert parsed.kind is type(key)
            assert parsed.path == path
            assert "invalid ID segment" in parsed.reason
            assert len(parsed.reason) < 200
        with pytest.raises(ValueError, match="segment"):
            _ = type(key)(*[segment] * len(_fields(key))).path


def test_commit_is_just_an_id() -> None:
    # Words with a meaning to iptables-restore are harmless as IDs: only characters matter.
    assert parse_key("/calico/v1/host/h/endpoint/COMMIT") == HostEndpointKey("h", "COMMIT")


@pytest.mark.parametrize("pool_id", ["10.65.0.0-16", "fd00:65::-64"])
def test_pool_ids_allow_colons(pool_id: str) -> None:
    key = IPPoolKey(6 if ":" in pool_id else 4, pool_id)
    assert parse_key(key.path) == key


@pytest.mark.parametrize("pool_id", ["..", "10.0.0.0 16", "x" * 44, "g"])
def test_bad_pool_ids(pool_id: str) -> None:
    parsed = parse_key(f"/calico/v1/ipam/v4/pool/{pool_id}")
    assert isinstance(parsed, BadKey) and parsed.kind is IPPoolKey
    with pytest.raises(ValueError, match="segment"):
        _ = IPPoolKey(4, pool_id).path


@pytest.mark.parametrize("segment", ["", "a/b"])
def test_unformattable_segments_rejected(segment: str) -> None:
    with pytest.raises(ValueError, match="segment"):
        _ = HostEndpointKey("h", segment).path
    with pytest.raises(ValueError, match="version"):
        _ = IPPoolKey(5, "x").path


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/",
        "calico/v1/Ready",
        "/calico",
        "/calico/v1",
        "/calico/v1/",
        "/calico/v1/Ready/",
        "/calico/v1/Ready/x",
        "/calico/v2/Ready",
        "/calico/v1/config",
        "/calico/v1/config/",
        "/calico/v1/config/a/b",
        "/calico/v1/host",
        "/calico/v1/host/h",
        "/calico/v1/host/h/bird6_ip",
        "/calico/v1/host/h/metadata",
        "/calico/v1/host/h/bird_ip/x",
        "/calico/v1/host/h/config",
        "/calico/v1/host/h/config/a/b",
        "/calico/v1/host//config/a",
        "/calico/v1/host/h/endpoint",
        "/calico/v1/host/h/endpoint/e/x",
        "/calico/v1/host/h/workload/o/w",
        "/calico/v1/host/h/workload/o/w/endpoint",
        "/calico/v1/host/h/workload/o/w/endpoint/",
        "/calico/v1/host/h/workload/o/w/notendpoint/e",
        "/calico/v1/host/h/workload/o/w/endpoint/e/x",
        "/calico/v1/policy/profile/p",
        "/calico/v1/policy/profile/p/other",
        "/calico/v1/policy/profile/p/rules/x",
        "/calico/v1/policy/tier/t",
        "/calico/v1/policy/tier/t/policy",
        "/calico/v1/policy/tier/t/other/p",
        "/calico/v1/policy/tier/t/metadata/x",
        "/calico/v1/policy/other/p/rules",
        "/calico/v1/ipam/v4/pool",
        "/calico/v1/ipam/v5/pool/x",
        "/calico/v1/ipam/v4/other/x",
        "/calico/v1/ipam/v4/pool/10.0.0.0/8",
        "/calico/felix/v1",
        "/calico/felix/v1/host/h",
        "/calico/felix/v1/host/h/other",
        "/calico/felix/v1/host/h/status/x",
        "/calico/felix/v1/host/h/endpoint",
        "/calico/felix/v1/host/h/workload/o/w/endpoint",
        "/calico/felix/v1/other/h/status",
        "/calico/felix/v2/host/h/status",
        "/calico/openstack/v1/neutron_election",
        "/calico/dhcp/v1/subnet/s1",
        "/calico/bgp/v1/global/as_num",
        "/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-26",
        "/other/v1/Ready",
    ],
)
def test_ignored_keys(path: str) -> None:
    assert parse_key(path) is None


def test_ip_pool_helpers() -> None:
    key = IPPoolKey.for_cidr("10.65.0.0/16")
    assert key == IPPoolKey(4, "10.65.0.0-16")
    assert key.cidr == "10.65.0.0/16"
    v6 = IPPoolKey.for_cidr("fd00:1::/64")
    assert v6 == IPPoolKey(6, "fd00:1::-64")
    assert v6.cidr == "fd00:1::/64"


def test_status_keys_from_endpoint_keys() -> None:
    wl = WorkloadEndpointKey("h", "o", "w", "e")
    assert WorkloadEndpointStatusKey.for_endpoint(wl).path == (
        "/calico/felix/v1/host/h/workload/o/w/endpoint/e"
    )
    assert HostEndpointStatusKey.for_endpoint(HostEndpointKey("h", "e")).path == (
        "/calico/felix/v1/host/h/endpoint/e"
    )
    assert dm.felix_host_status_dir("h") == "/calico/felix/v1/host/h"


def test_keys_are_hashable_and_immutable() -> None:
    key = PolicyKey("t", "p")
    assert {key: 1}[PolicyKey("t", "p")] == 1
    with pytest.raises(AttributeError):
        key.tier = "x"  # type: ignore[misc]


def test_legacy_string_helpers_unchanged() -> None:
    assert dm.config_key("A") == "/calico/v1/config/A"
    assert dm.config_key("A", "h") == "/calico/v1/host/h/config/A"
    assert dm.parse_config_key("/calico/v1/host/h/config/A") == ("h", "A")
    assert dm.parse_config_key("/calico/v1/config/A") == (None, "A")
    assert dm.parse_config_key("/calico/v1/Ready") is None
    assert dm.global_config_dir() == dm.CONFIG_DIR
    assert dm.host_config_dir("h") == "/calico/v1/host/h/config"


@pytest.mark.parametrize("subnet_id", ["sub-1", "6f1c0a9e-2b7d-4c1e-9d0a-8f3b2c1d0e9f"])
def test_dhcp_subnet_key_round_trip(subnet_id: str) -> None:
    key = DhcpSubnetKey(subnet_id)
    assert key.path == f"/calico/dhcp/v1/subnet/{subnet_id}"
    assert dm.parse_dhcp_subnet_key(key.path) == key
    # Felix's parser ignores the DHCP and election keys: they are not Felix's business.
    assert parse_key(key.path) is None


@pytest.mark.parametrize(
    "path",
    [
        "/calico/dhcp/v1/subnet",
        "/calico/dhcp/v1/subnet/",
        "/calico/dhcp/v1/subnet/a/b",
        "/x/a",
        "/calico/dhcp/v1/subnet/a b",
        "/calico/dhcp/v1/subnet/..",
    ],
)
def test_dhcp_subnet_key_rejects(path: str) -> None:
    assert dm.parse_dhcp_subnet_key(path) is None


def test_neutron_election_key() -> None:
    assert NeutronElectionKey().path == "/calico/openstack/v1/neutron_election"
    assert parse_key(NeutronElectionKey().path) is None
