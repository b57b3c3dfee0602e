"""Every key path of the Calico v1 data model in etcd; no other module builds key strings
(but `datamodel_bgp`, for /calico/bgp/v1, with this module's segment rules).

Orchestrator -> Felix data lives under /calico/v1, Felix -> orchestrator status under
/calico/felix/v1. The string helpers below serve config loading; the typed keys (`parse_key`,
`Key`, `key.path`) cover everything Felix reads and writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TypeVar

ROOT = "/calico"
VERSION_DIR = "/calico/v1"
READY_KEY = "/calico/v1/Ready"
CONFIG_DIR = "/calico/v1/config"
HOST_DIR = "/calico/v1/host"
FELIX_STATUS_DIR = "/calico/felix/v1"

READY_VALUE = "true"


def global_config_dir() -> str:
    return CONFIG_DIR


def host_config_dir(hostname: str) -> str:
    return f"{HOST_DIR}/{hostname}/config"


def config_key(name: str, hostname: str | None = None) -> str:
    """The key of a config parameter, global or (with hostname) host-specific."""
    base = host_config_dir(hostname) if hostname else CONFIG_DIR
    return f"{base}/{name}"


def parse_config_key(key: str) -> tuple[str | None, str] | None:
    """(hostname or None for global, parameter name) for a valid config key, else None."""
    parsed = parse_key(key)
    if isinstance(parsed, GlobalConfigKey):
        return None, parsed.name
    if isinstance(parsed, HostConfigKey):
        return parsed.hostname, parsed.name
    return None


# --- Typed keys -------------------------------------------------------------------------------
#
# One frozen dataclass per kind of key Felix reads (under /calico/v1) or writes (under
# /calico/felix/v1). `key.path` formats the key; `parse_key(path)` parses one, returning None for
# keys Felix ignores, and a `BadKey` for a key of a known kind with an invalid ID segment (see
# ID_SEGMENT_RE; `path` raises ValueError for such a key). `parse_key(k.path) == k` for every
# key `path` accepts.
#
# Parsing splits on "/" and dispatches on the fixed segments: no regular expression per key.

FELIX_HOST_DIR = f"{FELIX_STATUS_DIR}/host"
POLICY_DIR = f"{VERSION_DIR}/policy"
PROFILE_DIR = f"{POLICY_DIR}/profile"
TIER_DIR = f"{POLICY_DIR}/tier"
IPAM_DIR = f"{VERSION_DIR}/ipam"


# Every ID segment of a key (host names, orchestrator, workload, endpoint, profile, tier and
# policy IDs, parameter names, subnet IDs): what Calico allowed for endpoint, profile, tier and
# policy IDs (felix.md §2.2, §2.5), now for every segment, because each one can reach a rule
# comment, a log line, a status key Felix writes or a file name. "." and ".." are refused too:
# an HTTP client may resolve them as path steps. IP pool IDs are a CIDR with "/" -> "-".
ID_SEGMENT_RE = re.compile(r"[a-zA-Z0-9_.-]{1,255}")
POOL_ID_RE = re.compile(r"[0-9.:a-fA-F-]{1,43}")
ID_SEGMENT_RULE = "1-255 characters of [a-zA-Z0-9_.-], not '.' or '..'"


def valid_id(segment: object, pattern: re.Pattern[str] = ID_SEGMENT_RE) -> bool:
    """Whether `segment` may be one ID segment of a key (see ID_SEGMENT_RE)."""
    return (
        isinstance(segment, str)
        and pattern.fullmatch(segment) is not None
        and segment not in (".", "..")
    )


def _seg(segment: str, pattern: re.Pattern[str] = ID_SEGMENT_RE) -> str:
    """An ID segment, checked so that the formatted path parses back to the same key and no
    invalid ID is ever written."""
    if not valid_id(segment, pattern):
        raise ValueError(f"invalid key segment {segment!r}: need {ID_SEGMENT_RULE}")
    return segment


_K = TypeVar("_K")


def _cached_hash(cls: type[_K]) -> type[_K]:
    """For keys the calc graph uses as dict keys in its hot paths: compute the hash once, at
    construction (a dataclass would recompute it on every lookup). Apply under @dataclass, with
    a ``_hash`` field declared (init=False, compare=False). Pickling rebuilds the key from its
    fields, because string hashes differ between processes."""
    fields = tuple(name for name in cls.__annotations__ if name != "_hash")

    def __post_init__(self: _K) -> None:
        object.__setattr__(self, "_hash", hash(tuple(getattr(self, f) for f in fields)))

    def __hash__(self: _K) -> int:
        return self._hash  # type: ignore[attr-defined,no-any-return]

    def __reduce__(self: _K) -> tuple[type, tuple[object, ...]]:
        return (type(self), tuple(getattr(self, f) for f in fields))

    cls.__post_init__ = __post_init__  # type: ignore[attr-defined]
    cls.__hash__ = __hash__  # type: ignore[assignment,method-assign]
    cls.__reduce__ = __reduce__  # type: ignore[assignment,method-assign]
    return cls


@dataclass(frozen=True, slots=True)
class ReadyKey:
    @property
    def path(self) -> str:
        return READY_KEY


@dataclass(frozen=True, slots=True)
class GlobalConfigKey:
    name: str

    @property
    def path(self) -> str:
        return f"{CONFIG_DIR}/{_seg(self.name)}"


@dataclass(frozen=True, slots=True)
class HostConfigKey:
    hostname: str
    name: str

    @property
    def path(self) -> str:
        return f"{HOST_DIR}/{_seg(self.hostname)}/config/{_seg(self.name)}"


@dataclass(frozen=True, slots=True)
@_cached_hash
class WorkloadEndpointKey:
    hostname: str
    orchestrator: str
    workload: str
    endpoint: str
    _hash: int = field(init=False, repr=False, compare=False)  # see _cached_hash

    @property
    def path(self) -> str:
        return (
            f"{HOST_DIR}/{_seg(self.hostname)}/workload/{_seg(self.orchestrator)}"
            f"/{_seg(self.workload)}/endpoint/{_seg(self.endpoint)}"
        )


@dataclass(frozen=True, slots=True)
@_cached_hash
class HostEndpointKey:
    hostname: str
    endpoint: str
    _hash: int = field(init=False, repr=False, compare=False)  # see _cached_hash

    @property
    def path(self) -> str:
        return f"{HOST_DIR}/{_seg(self.hostname)}/endpoint/{_seg(self.endpoint)}"


@dataclass(frozen=True, slots=True)
class HostIPKey:
    """The host's BGP (bird) IPv4 address, a plain string value."""

    hostname: str

    @property
    def path(self) -> str:
        return f"{HOST_DIR}/{_seg(self.hostname)}/bird_ip"


@dataclass(frozen=True, slots=True)
class ProfileRulesKey:
    profile: str

    @property
    def path(self) -> str:
        return f"{PROFILE_DIR}/{_seg(self.profile)}/rules"


@dataclass(frozen=True, slots=True)
class ProfileTagsKey:
    profile: str

    @property
    def path(self) -> str:
        return f"{PROFILE_DIR}/{_seg(self.profile)}/tags"


@dataclass(frozen=True, slots=True)
class ProfileLabelsKey:
    profile: str

    @property
    def path(self) -> str:
        return f"{PROFILE_DIR}/{_seg(self.profile)}/labels"


@dataclass(frozen=True, slots=True)
class TierMetadataKey:
    tier: str

    @property
    def path(self) -> str:
        return f"{TIER_DIR}/{_seg(self.tier)}/metadata"


@dataclass(frozen=True, slots=True)
@_cached_hash
class PolicyKey:
    tier: str
    policy: str
    _hash: int = field(init=False, repr=False, compare=False)  # see _cached_hash

    @property
    def path(self) -> str:
        return f"{TIER_DIR}/{_seg(self.tier)}/policy/{_seg(self.policy)}"


@dataclass(frozen=True, slots=True)
class IPPoolKey:
    """`/calico/v1/ipam/v<version>/pool/<pool_id>`; pool_id is the CIDR with "/" -> "-"."""

    version: int
    pool_id: str

    @property
    def path(self) -> str:
        if self.version not in (4, 6):
            raise ValueError(f"invalid IP version {self.version!r}")
        return f"{IPAM_DIR}/v{self.version}/pool/{_seg(self.pool_id, POOL_ID_RE)}"

    @classmethod
    def for_cidr(cls, cidr: str) -> IPPoolKey:
        return cls(6 if ":" in cidr else 4, cidr.replace("/", "-"))

    @property
    def cidr(self) -> str:
        """The pool ID turned back into CIDR text (the last "-" becomes "/")."""
        head, sep, tail = self.pool_id.rpartition("-")
        return f"{head}/{tail}" if sep else self.pool_id


@dataclass(frozen=True, slots=True)
class FelixStatusKey:
    """Felix's liveness report (written with a TTL)."""

    hostname: str

    @property
    def path(self) -> str:
        return f"{FELIX_HOST_DIR}/{_seg(self.hostname)}/status"


@dataclass(frozen=True, slots=True)
class FelixLastStatusKey:
    """Felix's last liveness report (same value, no TTL)."""

    hostname: str

    @property
    def path(self) -> str:
        return f"{FELIX_HOST_DIR}/{_seg(self.hostname)}/last_reported_status"


@dataclass(frozen=True, slots=True)
class WorkloadEndpointStatusKey:
    hostname: str
    orchestrator: str
    workload: str
    endpoint: str

    @property
    def path(self) -> str:
        return (
            f"{FELIX_HOST_DIR}/{_seg(self.hostname)}/workload/{_seg(self.orchestrator)}"
            f"/{_seg(self.workload)}/endpoint/{_seg(self.endpoint)}"
        )

    @classmethod
    def for_endpoint(cls, key: WorkloadEndpointKey) -> WorkloadEndpointStatusKey:
        return cls(key.hostname, key.orchestrator, key.workload, key.endpoint)


@dataclass(frozen=True, slots=True)
class HostEndpointStatusKey:
    hostname: str
    endpoint: str

    @property
    def path(self) -> str:
        return f"{FELIX_HOST_DIR}/{_seg(self.hostname)}/endpoint/{_seg(self.endpoint)}"

    @classmethod
    def for_endpoint(cls, key: HostEndpointKey) -> HostEndpointStatusKey:
        return cls(key.hostname, key.endpoint)


DHCP_SUBNET_DIR = f"{ROOT}/dhcp/v1/subnet"
OPENSTACK_DIR = f"{ROOT}/openstack/v1"


@dataclass(frozen=True, slots=True)
class DhcpSubnetKey:
    """A Neutron subnet with DHCP enabled, written by the Neutron driver for the DHCP agent."""

    subnet_id: str

    @property
    def path(self) -> str:
        return f"{DHCP_SUBNET_DIR}/{_seg(self.subnet_id)}"


def parse_dhcp_subnet_key(path: str) -> DhcpSubnetKey | None:
    """The DHCP subnet key for a path under DHCP_SUBNET_DIR, else None. Kept apart from
    `parse_key`, which returns only what Felix reads."""
    head, sep, subnet_id = path.rpartition("/")
    if head != DHCP_SUBNET_DIR or not sep or not valid_id(subnet_id):
        return None
    return DhcpSubnetKey(subnet_id)


@dataclass(frozen=True, slots=True)
class NeutronElectionKey:
    """The key whose holder (TTL-limited) is the one neutron-server that resyncs etcd."""

    @property
    def path(self) -> str:
        return f"{OPENSTACK_DIR}/neutron_election"


@dataclass(frozen=True, slots=True)
class BadKey:
    """A path of a kind Felix reads (`kind`) whose ID segments are not all valid: hostile or
    broken input. Callers treat it as absent (fail closed) and log `reason` once."""

    path: str
    kind: type
    reason: str


Key = (
    ReadyKey
    | GlobalConfigKey
    | HostConfigKey
    | WorkloadEndpointKey
    | HostEndpointKey
    | HostIPKey
    | ProfileRulesKey
    | ProfileTagsKey
    | ProfileLabelsKey
    | TierMetadataKey
    | PolicyKey
    | IPPoolKey
    | FelixStatusKey
    | FelixLastStatusKey
    | WorkloadEndpointStatusKey
    | HostEndpointStatusKey
)

_PROFILE_KEYS: dict[str, type[ProfileRulesKey | ProfileTagsKey | ProfileLabelsKey]] = {
    "rules": ProfileRulesKey,
    "tags": ProfileTagsKey,
    "labels": ProfileLabelsKey,
}
_IP_VERSIONS = {"v4": 4, "v6": 6}


def felix_host_status_dir(hostname: str) -> str:
    """The directory holding everything Felix reports for one host."""
    return f"{FELIX_HOST_DIR}/{_seg(hostname)}"


def parse_key(path: str) -> Key | BadKey | None:
    """The typed key for an etcd path; a BadKey if it has the shape of a key Felix reads but an
    invalid ID segment; None for a key Felix ignores (or a malformed one)."""
    parts = path.split("/")
    n = len(parts)
    # Every segment must be non-empty except the leading "" (paths are absolute).
    if n < 4 or parts[0] or parts[1] != "calico" or "" in parts[1:]:
        return None
    if parts[2] == "v1":
        found = _parse_v1(parts, n)
    elif parts[2] == "felix" and parts[3] == "v1":
        found = _parse_felix_v1(parts, n)
    else:
        return None
    if found is None:
        return None
    kind, segments = found
    pattern = POOL_ID_RE if kind is IPPoolKey else ID_SEGMENT_RE
    for segment in segments:
        if isinstance(segment, str) and not valid_id(segment, pattern):
            shown = segment[:64] + ("..." if len(segment) > 64 else "")
            return BadKey(path, kind, f"invalid ID segment {shown!r} (need {ID_SEGMENT_RULE})")
    return kind(*segments)  # type: ignore[no-any-return]


# (the kind of key, its constructor arguments): the ID segments are checked by parse_key.
_Found = tuple[type, tuple[object, ...]]


def _parse_v1(parts: list[str], n: int) -> _Found | None:
    section = parts[3]
    if section == "host":
        if n < 6:
            return None
        hostname, kind = parts[4], parts[5]
        if kind == "workload":
            if n == 10 and parts[8] == "endpoint":
                return WorkloadEndpointKey, (hostname, parts[6], parts[7], parts[9])
        elif kind == "endpoint":
            if n == 7:
                return HostEndpointKey, (hostname, parts[6])
        elif kind == "config":
            if n == 7:
                return HostConfigKey, (hostname, parts[6])
        elif kind == "bird_ip" and n == 6:
            return HostIPKey, (hostname,)
        return None
    if section == "policy":
        if n == 7 and parts[4] == "profile":
            profile_cls = _PROFILE_KEYS.get(parts[6])
            return (profile_cls, (parts[5],)) if profile_cls is not None else None
        if parts[4] == "tier":
            if n == 7 and parts[6] == "metadata":
                return TierMetadataKey, (parts[5],)
            if n == 8 and parts[6] == "policy":
                return PolicyKey, (parts[5], parts[7])
        return None
    if section == "config":
        return (GlobalConfigKey, (parts[4],)) if n == 5 else None
    if section == "Ready":
        return (ReadyKey, ()) if n == 4 else None
    if section == "ipam" and n == 7 and parts[5] == "pool":
        version = _IP_VERSIONS.get(parts[4])
        return (IPPoolKey, (version, parts[6])) if version is not None else None
    return None


def _parse_felix_v1(parts: list[str], n: int) -> _Found | None:
    # "", "calico", "felix", "v1", "host", <hostname>, <kind>, ...
    if n < 7 or parts[4] != "host":
        return None
    hostname, kind = parts[5], parts[6]
    if kind == "workload":
        if n == 11 and parts[9] == "endpoint":
            return WorkloadEndpointStatusKey, (hostname, parts[7], parts[8], parts[10])
    elif kind == "endpoint":
        if n == 8:
            return HostEndpointStatusKey, (hostname, parts[7])
    elif kind == "status":
        if n == 7:
            return FelixStatusKey, (hostname,)
    elif kind == "last_reported_status" and n == 7:
        return FelixLastStatusKey, (hostname,)
    return None
