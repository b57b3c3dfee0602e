"""The validated, immutable values of the data model (Rule, WorkloadEndpoint, Policy, ...), the
label map type and `InvalidValue`, with the schema constants. Pure."""

from __future__ import annotations

import re
from collections.abc import Callable, ItemsView, Iterator, KeysView, Mapping, ValuesView
from dataclasses import dataclass

from calico.common import protocols

# A selector check: raises ValueError (e.g. selectors.BadSelector) for a bad expression.
SelectorValidator = Callable[[str], object]

INTERFACE_NAME_RE = re.compile(r"[a-zA-Z0-9_-]{1,15}")

LOG_PREFIX_MAX_LEN = 27
ACTIONS = frozenset({"allow", "deny", "next-tier", "log"})
PROTOCOL_NAMES = frozenset(protocols.FELIX_PROTOCOL_NAMES.values())

_NEGATABLE_RULE_KEYS = (
    "protocol",
    "src_net",
    "src_tag",
    "src_selector",
    "src_ports",
    "dst_net",
    "dst_tag",
    "dst_selector",
    "dst_ports",
    "icmp_type",
    "icmp_code",
)
RULE_KEYS = frozenset(("action", "ip_version", "log_prefix", *_NEGATABLE_RULE_KEYS)).union(
    "!" + k for k in _NEGATABLE_RULE_KEYS
)

WORKLOAD_ONLY_FIELDS = (
    "ipv4_nets",
    "ipv6_nets",
    "ipv4_gateway",
    "ipv6_gateway",
    "ipv4_nat",
    "ipv6_nat",
    "state",
    "mac",
)
HOST_ONLY_FIELDS = ("expected_ipv4_addrs", "expected_ipv6_addrs")


class InvalidValue(ValueError):
    """A value that failed validation; `problems` lists every problem found."""

    def __init__(self, what: str, problems: list[str] | tuple[str, ...]) -> None:
        self.what = what
        self.problems = tuple(problems)
        # Problems quote the bad input; cap them so that one hostile value (a megabyte of
        # JSON, ten thousand bad rules) makes one readable log line.
        shown = [_cap(p, MAX_PROBLEM_LEN) for p in self.problems[:MAX_PROBLEMS_SHOWN]]
        if len(self.problems) > MAX_PROBLEMS_SHOWN:
            shown.append(f"... ({len(self.problems) - MAX_PROBLEMS_SHOWN} more)")
        super().__init__(f"invalid {_cap(what, MAX_PROBLEM_LEN)}: " + "; ".join(shown))


MAX_PROBLEM_LEN = 300
MAX_PROBLEMS_SHOWN = 25


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class Labels(Mapping[str, str]):
    """An immutable, hashable label map (name -> value)."""

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[str, str] | None = None) -> None:
        self._data: dict[str, str] = dict(data or {})
        self._hash: int | None = None

    def __getitem__(self, name: str) -> str:
        return self._data[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    # The Mapping mixins would run Python code per label; these use the dict's own methods
    # (the calc graph merges and indexes labels for every endpoint of a snapshot).
    def __contains__(self, name: object) -> bool:
        return name in self._data

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return self._data.get(name, default)

    def keys(self) -> KeysView[str]:
        return self._data.keys()

    def items(self) -> ItemsView[str, str]:
        return self._data.items()

    def values(self) -> ValuesView[str]:
        return self._data.values()

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Labels):
            return self._data == other._data
        if isinstance(other, Mapping):
            return self._data == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"Labels({self._data!r})"


EMPTY_LABELS = Labels()

# A port match entry: a single port, or a canonical "lo:hi" range string.
Port = int | str


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule (§2.6); `not_*` fields hold the `!`-negated matches. None = no match."""

    action: str = "allow"
    ip_version: int | None = None
    protocol: str | None = None
    not_protocol: str | None = None
    src_net: str | None = None
    not_src_net: str | None = None
    src_tag: str | None = None
    not_src_tag: str | None = None
    src_selector: str | None = None
    not_src_selector: str | None = None
    src_ports: tuple[Port, ...] | None = None
    not_src_ports: tuple[Port, ...] | None = None
    dst_net: str | None = None
    not_dst_net: str | None = None
    dst_tag: str | None = None
    not_dst_tag: str | None = None
    dst_selector: str | None = None
    not_dst_selector: str | None = None
    dst_ports: tuple[Port, ...] | None = None
    not_dst_ports: tuple[Port, ...] | None = None
    icmp_type: int | None = None
    not_icmp_type: int | None = None
    icmp_code: int | None = None
    not_icmp_code: int | None = None
    log_prefix: str | None = None


@dataclass(frozen=True, slots=True)
class NatMapping:
    int_ip: str
    ext_ip: str


@dataclass(frozen=True, slots=True)
class WorkloadEndpoint:
    state: str
    name: str
    mac: str | None = None
    profile_ids: tuple[str, ...] = ()
    ipv4_nets: tuple[str, ...] = ()
    ipv6_nets: tuple[str, ...] = ()
    ipv4_gateway: str | None = None
    ipv6_gateway: str | None = None
    ipv4_nat: tuple[NatMapping, ...] = ()
    ipv6_nat: tuple[NatMapping, ...] = ()
    labels: Labels = EMPTY_LABELS

    @property
    def active(self) -> bool:
        return self.state == "active"


@dataclass(frozen=True, slots=True)
class HostEndpoint:
    name: str | None = None
    expected_ipv4_addrs: tuple[str, ...] = ()
    expected_ipv6_addrs: tuple[str, ...] = ()
    profile_ids: tuple[str, ...] = ()
    labels: Labels = EMPTY_LABELS


@dataclass(frozen=True, slots=True)
class ProfileRules:
    inbound_rules: tuple[Rule, ...] = ()
    outbound_rules: tuple[Rule, ...] = ()


@dataclass(frozen=True, slots=True)
class TierMetadata:
    order: float | None = None  # None = +infinity ("default" or missing)


@dataclass(frozen=True, slots=True)
class Policy:
    selector: str
    order: float | None = None  # None = +infinity ("default" or missing)
    inbound_rules: tuple[Rule, ...] = ()
    outbound_rules: tuple[Rule, ...] = ()
    untracked: bool = False


@dataclass(frozen=True, slots=True)
class IPPool:
    cidr: str
    masquerade: bool = False
