"""The BGP configuration keys (/calico/bgp/v1) that calico-bgp reads and partly writes.

The data model calico/node defined (bgp.md §2.1), beside `datamodel_v1`'s keys and built from
the same segment rules. `parse_bgp_key` is kept apart from `parse_key`, which returns only what
Felix reads. Host names are ID segments like every other key's; a peer's IP address segment may
hold only the characters of IPv4 and IPv6 text (no "%" scope, no "/"), and the value's parser
(calico.bgp.model) checks that it is an address of the key's version and that the value names
the same one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from calico.common.datamodel_v1 import ID_SEGMENT_RE, ID_SEGMENT_RULE, ROOT, BadKey, _seg, valid_id

BGP_DIR = f"{ROOT}/bgp/v1"
BGP_GLOBAL_DIR = f"{BGP_DIR}/global"
BGP_HOST_DIR = f"{BGP_DIR}/host"
IP_SEGMENT_RE = re.compile(r"[0-9a-fA-F.:]{2,45}")
_BGP_VERSIONS = {"v4": 4, "v6": 6}


def _bgp_version(version: int) -> str:
    if version not in (4, 6):
        raise ValueError(f"invalid IP version {version!r}")
    return f"v{version}"


@dataclass(frozen=True, slots=True)
class BgpGlobalASKey:
    """The AS number of every host that has none of its own (asplain text)."""

    @property
    def path(self) -> str:
        return f"{BGP_GLOBAL_DIR}/as_num"


@dataclass(frozen=True, slots=True)
class BgpNodeMeshKey:
    """`{"enabled": true|false}`: whether every host peers with every other host."""

    @property
    def path(self) -> str:
        return f"{BGP_GLOBAL_DIR}/node_mesh"


@dataclass(frozen=True, slots=True)
class BgpLogLevelKey:
    """BIRD's protocol debugging: `none`, `info` or `debug`."""

    @property
    def path(self) -> str:
        return f"{BGP_GLOBAL_DIR}/loglevel"


@dataclass(frozen=True, slots=True)
class BgpGlobalPeerKey:
    """A peer of every host: `{"ip": <ip>, "as_num": <as>}` at `global/peer_v<version>/<ip>`."""

    version: int
    ip: str

    @property
    def path(self) -> str:
        version = _bgp_version(self.version)
        return f"{BGP_GLOBAL_DIR}/peer_{version}/{_seg(self.ip, IP_SEGMENT_RE)}"


@dataclass(frozen=True, slots=True)
class BgpHostIPKey:
    """A host's BGP address of one version (plain text; "" means none)."""

    hostname: str
    version: int

    @property
    def path(self) -> str:
        return f"{BGP_HOST_DIR}/{_seg(self.hostname)}/ip_addr_{_bgp_version(self.version)}"


@dataclass(frozen=True, slots=True)
class BgpHostASKey:
    """A host's own AS number, overriding the global one."""

    hostname: str

    @property
    def path(self) -> str:
        return f"{BGP_HOST_DIR}/{_seg(self.hostname)}/as_num"


@dataclass(frozen=True, slots=True)
class BgpHostRRClusterKey:
    """Set (to an IPv4-format cluster ID): the host is a route reflector of that cluster."""

    hostname: str

    @property
    def path(self) -> str:
        return f"{BGP_HOST_DIR}/{_seg(self.hostname)}/rr_cluster_id"


@dataclass(frozen=True, slots=True)
class BgpHostPeerKey:
    """A peer of one host only: `{"ip": <ip>, "as_num": <as>}`."""

    hostname: str
    version: int
    ip: str

    @property
    def path(self) -> str:
        version = _bgp_version(self.version)
        return f"{BGP_HOST_DIR}/{_seg(self.hostname)}/peer_{version}/{_seg(self.ip, IP_SEGMENT_RE)}"


BgpKey = (
    BgpGlobalASKey
    | BgpNodeMeshKey
    | BgpLogLevelKey
    | BgpGlobalPeerKey
    | BgpHostIPKey
    | BgpHostASKey
    | BgpHostRRClusterKey
    | BgpHostPeerKey
)

_BGP_GLOBAL_KEYS: dict[str, BgpKey] = {
    "as_num": BgpGlobalASKey(),
    "node_mesh": BgpNodeMeshKey(),
    "loglevel": BgpLogLevelKey(),
}


def parse_bgp_key(path: str) -> BgpKey | BadKey | None:
    """The typed key for a path under /calico/bgp/v1; a BadKey if it has the shape of one but
    a host name that is not a valid ID or an IP segment with other characters than an
    address's; None for any other path (ignored)."""
    parts = path.split("/")
    n = len(parts)
    if n < 5 or parts[0] or parts[1:3] != ["calico", "bgp"] or parts[3] != "v1":
        return None
    if "" in parts[1:]:
        return None
    section = parts[4]
    found: tuple[type, tuple[object, ...], tuple[tuple[str, re.Pattern[str]], ...]] | None = None
    if section == "global":
        if n == 6 and parts[5] in _BGP_GLOBAL_KEYS:
            return _BGP_GLOBAL_KEYS[parts[5]]
        if n == 7 and parts[5].startswith("peer_"):
            version = _BGP_VERSIONS.get(parts[5].removeprefix("peer_"))
            if version is not None:
                ip = parts[6]
                found = BgpGlobalPeerKey, (version, ip), ((ip, IP_SEGMENT_RE),)
    elif section == "host" and n >= 7:
        hostname, kind = parts[5], parts[6]
        host_seg = (hostname, ID_SEGMENT_RE)
        if n == 7 and kind.startswith("ip_addr_"):
            version = _BGP_VERSIONS.get(kind.removeprefix("ip_addr_"))
            if version is not None:
                found = BgpHostIPKey, (hostname, version), (host_seg,)
        elif n == 7 and kind == "as_num":
            found = BgpHostASKey, (hostname,), (host_seg,)
        elif n == 7 and kind == "rr_cluster_id":
            found = BgpHostRRClusterKey, (hostname,), (host_seg,)
        elif n == 8 and kind.startswith("peer_"):
            version = _BGP_VERSIONS.get(kind.removeprefix("peer_"))
            if version is not None:
                ip = parts[7]
                found = BgpHostPeerKey, (hostname, version, ip), (host_seg, (ip, IP_SEGMENT_RE))
    if found is None:
        return None
    kind_cls, args, checks = found
    for segment, pattern in checks:
        if not valid_id(segment, pattern):
            shown = segment[:64] + ("..." if len(segment) > 64 else "")
            rule = ID_SEGMENT_RULE if pattern is ID_SEGMENT_RE else "an IP address"
            return BadKey(path, kind_cls, f"invalid segment {shown!r} (need {rule})")
    return kind_cls(*args)  # type: ignore[no-any-return]
