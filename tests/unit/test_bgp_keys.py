"""The /calico/bgp/v1 keys: formatting, parsing, round trips, hostile segments, ignored paths."""

from __future__ import annotations

import pytest

from calico.common import datamodel_bgp as bgp_keys
from calico.common import datamodel_v1 as dm
from calico.common.datamodel_bgp import (
    BgpGlobalASKey,
    BgpGlobalPeerKey,
    BgpHostASKey,
    BgpHostIPKey,
    BgpHostPeerKey,
    BgpHostRRClusterKey,
    BgpLogLevelKey,
    BgpNodeMeshKey,
    parse_bgp_key,
)
from calico.common.datamodel_v1 import BadKey

KEYS_AND_PATHS: list[tuple[bgp_keys.BgpKey, str]] = [
    (BgpGlobalASKey(), "/calico/bgp/v1/global/as_num"),
    (BgpNodeMeshKey(), "/calico/bgp/v1/global/node_mesh"),
    (BgpLogLevelKey(), "/calico/bgp/v1/global/loglevel"),
    (BgpGlobalPeerKey(4, "198.18.0.254"), "/calico/bgp/v1/global/peer_v4/198.18.0.254"),
    (BgpGlobalPeerKey(6, "fd00:18::fe"), "/calico/bgp/v1/global/peer_v6/fd00:18::fe"),
    (BgpHostIPKey("h-1", 4), "/calico/bgp/v1/host/h-1/ip_addr_v4"),
    (BgpHostIPKey("h.example", 6), "/calico/bgp/v1/host/h.example/ip_addr_v6"),
    (BgpHostASKey("h_1"), "/calico/bgp/v1/host/h_1/as_num"),
    (BgpHostRRClusterKey("h"), "/calico/bgp/v1/host/h/rr_cluster_id"),
    (BgpHostPeerKey("h", 4, "10.0.0.1"), "/calico/bgp/v1/host/h/peer_v4/10.0.0.1"),
    (BgpHostPeerKey("h", 6, "2001:db8::1"), "/calico/bgp/v1/host/h/peer_v6/2001:db8::1"),
]


@pytest.mark.parametrize(("key", "path"), KEYS_AND_PATHS)
def test_format_and_parse(key: bgp_keys.BgpKey, path: str) -> None:
    assert key.path == path
    assert parse_bgp_key(path) == key


@pytest.mark.parametrize(
    "path",
    [
        "/calico/bgp/v1",
        "/calico/bgp/v1/global",
        "/calico/bgp/v1/global/custom_filters/v4/x",  # raw BIRD text: never read
        "/calico/bgp/v1/global/peer_v5/1.2.3.4",
        "/calico/bgp/v1/global/as_num/extra",
        "/calico/bgp/v1/host/h",
        "/calico/bgp/v1/host/h/loglevel",
        "/calico/bgp/v1/host/h/network_v4",
        "/calico/bgp/v1/host/h/ip_addr_v5",
        "/calico/bgp/v1/host/h/peer_v4",
        "/calico/bgp/v1/host/h/peer_v4/1.2.3.4/x",
        "/calico/bgp/v1/host//as_num",
        "/calico/bgp/v1/rr_v4/1.2.3.4",
        "/calico/bgp/v2/global/as_num",
        "/calico/v1/host/h/bird_ip",
        "calico/bgp/v1/global/as_num",
    ],
)
def test_other_paths_are_ignored(path: str) -> None:
    assert parse_bgp_key(path) is None


HOSTILE_HOSTNAMES = [
    "with space",
    'quote"',
    "new\nline",
    '";\nprotocol bgp x { }',
    "nul\x00",
    "weird:chars!@#$%^&*()",
    "\u00e9t\u00e9",
    ".",
    "..",
    "x" * 256,
    "tab\tx",
    "1.2.3.4}",
]
HOSTILE_IPS = [
    "1.2.3.4%eth0",
    "fd00::1%x",
    "1.2.3.4;",
    "1.2.3.4 as 1",
    '1.2.3.4"',
    "1.2.3.4\n",
    "10.0.0.0-8",
    "x",
    ".",
    "..",
    "",
    "a" * 46,
]


def _host_keys(hostname: str) -> list[bgp_keys.BgpKey]:
    return [
        BgpHostIPKey(hostname, 4),
        BgpHostIPKey(hostname, 6),
        BgpHostASKey(hostname),
        BgpHostRRClusterKey(hostname),
        BgpHostPeerKey(hostname, 4, "1.2.3.4"),
        BgpHostPeerKey(hostname, 6, "fd00::1"),
    ]


@pytest.mark.parametrize("hostname", HOSTILE_HOSTNAMES)
def test_hostile_host_names_are_bad_keys_and_never_formatted(hostname: str) -> None:
    for key in _host_keys("good"):
        path = key.path.replace("/good/", f"/{hostname}/")
        parsed = parse_bgp_key(path)
        assert isinstance(parsed, BadKey), path
        assert parsed.kind is type(key)
        assert parsed.path == path
        assert "invalid segment" in parsed.reason and len(parsed.reason) < 200
    for key in _host_keys(hostname):
        with pytest.raises(ValueError, match="segment"):
            _ = key.path


@pytest.mark.parametrize("ip", HOSTILE_IPS)
def test_hostile_ip_segments_are_bad_keys_and_never_formatted(ip: str) -> None:
    for version in (4, 6):
        for key in (BgpGlobalPeerKey(version, ip), BgpHostPeerKey("h", version, ip)):
            with pytest.raises(ValueError, match="segment"):
                _ = key.path
            good = type(key)(*[("1.2.3.4" if f == "ip" else getattr(key, f)) for f in _fields(key)])
            path = good.path.replace("1.2.3.4", ip)
            parsed = parse_bgp_key(path)
            if ip == "":
                assert parsed is None  # an empty segment is no key at all
                continue
            assert isinstance(parsed, BadKey), path
            assert parsed.kind is type(key)


def _fields(key: object) -> list[str]:
    return list(key.__dataclass_fields__)  # type: ignore[attr-defined]


def test_bad_versions_are_never_formatted() -> None:
    with pytest.raises(ValueError, match="version"):
        _ = BgpHostIPKey("h", 5).path
    with pytest.raises(ValueError, match="version"):
        _ = BgpGlobalPeerKey(0, "1.2.3.4").path


def test_felix_ignores_the_bgp_keys() -> None:
    for _, path in KEYS_AND_PATHS:
        assert dm.parse_key(path) is None
