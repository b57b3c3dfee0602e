"""The BGP configuration in etcd, validated: what `/calico/bgp/v1` and the IP pools say, after
every key segment and every value has been checked (docs/design/security.md, "BIRD").

`BgpStore.update(path, value)` takes what the syncers report; a key of a known shape with a bad
segment (`datamodel_v1.BadKey`) or a value that does not validate is logged once with its key
(quoted) and treated as absent: it never reaches the BIRD file. `BgpStore.data()` is the valid
configuration as a frozen `BgpData`, which `calico.bgp.peers` and `calico.bgp.render` turn into
text. Pure: no I/O.

Values (bgp.md §2.1):

* AS numbers: asplain decimal text, 1-4294967295, not 23456 (AS_TRANS, RFC 6793); a JSON
  number is accepted where a peer's `as_num` is given as one.
* Addresses (host `ip_addr_v4`/`ip_addr_v6`, peers): one canonical unicast address of the key's
  version, no IPv6 scope; not unspecified, loopback, link-local, multicast, reserved or
  IPv4-mapped. `""` for a host address means "none" (as calico/node wrote it).
* Peers: a JSON object `{"ip": <the key's address>, "as_num": <AS>}`.
* `rr_cluster_id`: an IPv4-format cluster ID other than 0.0.0.0 (`""`: not a reflector).
* `node_mesh`: `{"enabled": true|false}`; absent or invalid: enabled.
* `loglevel`: `none`, `info` or `debug` (any case); absent or invalid: `info`.
* IP pools: Felix's own parser (`calico.common.resources.parse_ip_pool`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from calico.common import datamodel_bgp as bgp_keys
from calico.common import datamodel_v1 as dm
from calico.common.quoting import quoted
from calico.common.resources import InvalidValue, decode_object, parse_ip_pool

log = logging.getLogger(__name__)

DEFAULT_AS = 64511  # calico/node's default before 2.0 (bgp.md §2.1, §7)
AS_TRANS = 23456
MAX_AS = 4294967295
LOG_LEVELS = ("none", "info", "debug")
_ASPLAIN_RE = re.compile(r"[1-9][0-9]{0,9}")
_DOTTED_V4_RE = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                           r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Peer:
    """A BGP peer given in etcd (global or for one host)."""

    ip: str  # canonical text
    as_num: int
    version: int


@dataclass(frozen=True, slots=True)
class HostData:
    """What etcd says about one Calico host (every field valid, or None)."""

    ip4: str | None = None
    ip6: str | None = None
    as_num: int | None = None
    rr_cluster_id: str | None = None
    peers: tuple[Peer, ...] = ()

    def ip(self, version: int) -> str | None:
        return self.ip4 if version == 4 else self.ip6


@dataclass(frozen=True, slots=True)
class BgpData:
    """The validated BGP configuration; hosts and peers in a stable (sorted) order."""

    as_num: int | None = None
    node_mesh: bool = True
    loglevel: str = "info"
    global_peers: tuple[Peer, ...] = ()
    hosts: Mapping[str, HostData] = field(default_factory=dict)
    pools: tuple[str, ...] = ()  # canonical CIDRs, IPv4 first

    def host_as(self, hostname: str) -> int:
        host = self.hosts.get(hostname)
        if host is not None and host.as_num is not None:
            return host.as_num
        return self.as_num if self.as_num is not None else DEFAULT_AS


# --- Values -----------------------------------------------------------------------------------


def parse_as_num(value: object, what: str = "as_num") -> int:
    """An AS number from its asplain text (or a JSON integer); InvalidValue otherwise."""
    number: int | None = None
    if isinstance(value, str) and _ASPLAIN_RE.fullmatch(value):
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    if number is None or not 1 <= number <= MAX_AS or number == AS_TRANS:
        raise InvalidValue(
            what, [f"invalid AS number {quoted(value)} (need 1-{MAX_AS}, not {AS_TRANS})"]
        )
    return number


def usable_address(value: object, version: int, what: str) -> str:
    """`value` as canonical text if it is a unicast address of `version` a BGP session can use;
    InvalidValue otherwise."""
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    # No "%": ipaddress accepts any text after an IPv6 scope and prints it back.
    if isinstance(value, str) and "%" not in value and len(value) <= 45:
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            addr = None
    if addr is None or addr.version != version:
        raise InvalidValue(what, [f"invalid IPv{version} address {quoted(value)}"])
    unusable = (
        addr.is_unspecified
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_multicast
        or addr.is_reserved
        or (isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None)
    )
    if unusable:
        raise InvalidValue(what, [f"{addr} cannot be a BGP address (not a unicast address)"])
    return str(addr)


def parse_host_ip(raw: str, key: bgp_keys.BgpHostIPKey) -> str | None:
    return None if raw == "" else usable_address(raw, key.version, key.path)


def parse_peer(raw: str, key: bgp_keys.BgpGlobalPeerKey | bgp_keys.BgpHostPeerKey) -> Peer:
    what = key.path
    data = decode_object(raw, what)
    ip = usable_address(data.get("ip"), key.version, f"{what} ip")
    if ip != usable_address(key.ip, key.version, f"{what} key"):
        raise InvalidValue(what, [f"ip {quoted(data.get('ip'))} is not the key's address"])
    return Peer(ip, parse_as_num(data.get("as_num"), f"{what} as_num"), key.version)


def parse_rr_cluster_id(raw: str, key: bgp_keys.BgpHostRRClusterKey) -> str | None:
    if raw == "":
        return None
    if not _DOTTED_V4_RE.fullmatch(raw) or raw == "0.0.0.0":
        raise InvalidValue(key.path, [f"invalid cluster ID {quoted(raw)} (need a.b.c.d)"])
    return raw


def parse_node_mesh(raw: str) -> bool:
    data = decode_object(raw, bgp_keys.BgpNodeMeshKey().path)
    enabled = data.get("enabled")
    if not isinstance(enabled, bool):
        raise InvalidValue("node_mesh", [f"enabled: expected true or false, got {quoted(enabled)}"])
    return enabled


def parse_loglevel(raw: str) -> str:
    level = raw.strip().lower()
    if level not in LOG_LEVELS:
        raise InvalidValue("loglevel", [f"{quoted(raw)} is not one of {', '.join(LOG_LEVELS)}"])
    return level


def parse_value(key: bgp_keys.BgpKey, raw: str) -> object:
    """The validated value of one BGP key; InvalidValue if it is not valid."""
    match key:
        case bgp_keys.BgpGlobalASKey() | bgp_keys.BgpHostASKey():
            return parse_as_num(raw, key.path)
        case bgp_keys.BgpNodeMeshKey():
            return parse_node_mesh(raw)
        case bgp_keys.BgpLogLevelKey():
            return parse_loglevel(raw)
        case bgp_keys.BgpGlobalPeerKey() | bgp_keys.BgpHostPeerKey():
            return parse_peer(raw, key)
        case bgp_keys.BgpHostIPKey():
            return parse_host_ip(raw, key)
        case bgp_keys.BgpHostRRClusterKey():
            return parse_rr_cluster_id(raw, key)
    raise AssertionError(f"unhandled key {key!r}")  # pragma: no cover


# --- The store ----------------------------------------------------------------------------------


class BgpStore:
    """The valid BGP keys and IP pools, kept up to date from the syncers' updates."""

    def __init__(self) -> None:
        self._values: dict[bgp_keys.BgpKey, object] = {}
        self._pools: dict[dm.IPPoolKey, str] = {}
        # path -> reason, for every key currently refused (bad key or bad value).
        self.refused: dict[str, str] = {}
        self._logged: dict[str, str | None] = {}

    def update(self, path: str, raw: str | None) -> bool:
        """Apply one update (raw None: deleted). False if the key is none of ours."""
        key = bgp_keys.parse_bgp_key(path)
        if key is None:
            pool_key = dm.parse_key(path) if path.startswith(dm.IPAM_DIR + "/") else None
            if isinstance(pool_key, dm.IPPoolKey | dm.BadKey):
                if isinstance(pool_key, dm.BadKey) and pool_key.kind is not dm.IPPoolKey:
                    return False
                return self._update_pool(path, pool_key, raw)
            return False
        self.refused.pop(path, None)
        if isinstance(key, dm.BadKey):
            self._refuse(path, raw, key.reason)
            return True
        if raw is None:
            self._values.pop(key, None)
            self._logged.pop(path, None)
            return True
        try:
            value = parse_value(key, raw)
        except InvalidValue as e:
            self._values.pop(key, None)
            self._refuse(path, raw, str(e))
            return True
        self._values[key] = value
        return True

    def _update_pool(self, path: str, key: dm.IPPoolKey | dm.BadKey, raw: str | None) -> bool:
        self.refused.pop(path, None)
        if isinstance(key, dm.BadKey):
            self._refuse(path, raw, key.reason)
            return True
        if raw is None:
            self._pools.pop(key, None)
            self._logged.pop(path, None)
            return True
        try:
            self._pools[key] = parse_ip_pool(raw, key).cidr
        except InvalidValue as e:
            self._pools.pop(key, None)
            self._refuse(path, raw, str(e))
        return True

    def _refuse(self, path: str, raw: str | None, reason: str) -> None:
        """Remember and log (once per key and value) why a key is left out."""
        if raw is None:
            self._logged.pop(path, None)
            return
        self.refused[path] = reason
        if self._logged.get(path, "\0never") != raw:
            self._logged[path] = raw
            log.warning("Ignoring BGP key %s: %s", quoted(path), quoted(reason, 600))

    def data(self) -> BgpData:
        """The valid configuration now."""
        result = BgpData()
        hosts: dict[str, HostData] = {}
        global_peers: list[Peer] = []
        for key, value in self._values.items():
            match key:
                case bgp_keys.BgpGlobalASKey():
                    assert isinstance(value, int)
                    result = replace(result, as_num=value)
                case bgp_keys.BgpNodeMeshKey():
                    assert isinstance(value, bool)
                    result = replace(result, node_mesh=value)
                case bgp_keys.BgpLogLevelKey():
                    assert isinstance(value, str)
                    result = replace(result, loglevel=value)
                case bgp_keys.BgpGlobalPeerKey():
                    assert isinstance(value, Peer)
                    global_peers.append(value)
                case _:
                    host = hosts.get(key.hostname, HostData())
                    hosts[key.hostname] = _host_with(host, key, value)
        pools = sorted(self._pools.values(), key=lambda c: (":" in c, c))
        return replace(
            result,
            global_peers=tuple(sorted(global_peers, key=_peer_order)),
            hosts={name: hosts[name] for name in sorted(hosts)},
            pools=tuple(dict.fromkeys(pools)),
        )


def _host_with(host: HostData, key: bgp_keys.BgpKey, value: object) -> HostData:
    match key:
        case bgp_keys.BgpHostIPKey(version=4):
            return replace(host, ip4=value)  # type: ignore[arg-type]
        case bgp_keys.BgpHostIPKey():
            return replace(host, ip6=value)  # type: ignore[arg-type]
        case bgp_keys.BgpHostASKey():
            return replace(host, as_num=value)  # type: ignore[arg-type]
        case bgp_keys.BgpHostRRClusterKey():
            return replace(host, rr_cluster_id=value)  # type: ignore[arg-type]
        case bgp_keys.BgpHostPeerKey():
            assert isinstance(value, Peer)
            return replace(host, peers=tuple(sorted((*host.peers, value), key=_peer_order)))
    return host


def _peer_order(peer: Peer) -> tuple[int, int]:
    return peer.version, int(ipaddress.ip_address(peer.ip))


def encode_peer(ip: str, as_num: int) -> str:
    """The JSON value of a peer key (for tools, tests and the lab)."""
    return json.dumps({"ip": ip, "as_num": str(as_num)})
