"""The calc → dataplane contract: every message the calculation graph sends.

See docs/design/calc-graph.md.

Modelled on Felix 2.0's `felixbackend.proto` (felix.md §7.2), as immutable values. A message names
everything the dataplane needs, so the dataplane never reads the datastore: rules arrive with their
tags and selectors already turned into IP-set IDs, endpoints arrive with their ordered tiers of
policies, and floating IPs and gateways (which 2.0 left out) are part of the endpoint.

Ordering guarantees (what the sequencer promises and the contract checker in the tests asserts):

* Nothing that programs the kernel is sent before the datastore is first in sync; the first flush
  after that ends with `InSync`; nothing comes earlier. (Felix's configuration and the Ready
  flag are the daemon's business, not the dataplane's: a config change restarts Felix.)
* An IP set is created (`IPSetUpdate`, full membership) before any delta for it and before any rule
  that refers to it; it is removed (`IPSetRemove`) only after no active policy or profile uses it.
* A policy or profile is sent before any endpoint that lists it, and removed only after no endpoint
  lists it any more.
* Deltas never add a member that is present or remove one that is absent.

An IP set ID is version-neutral: its members may mix IPv4 and IPv6 addresses, and the dataplane
keeps one kernel set per family.
"""

from __future__ import annotations

from dataclasses import dataclass

from calico.common.datamodel_v1 import HostEndpointKey, IPPoolKey, PolicyKey, WorkloadEndpointKey
from calico.common.resources import HostEndpoint, IPPool, Port, WorkloadEndpoint

__all__ = [
    "ActivePolicyRemove",
    "ActivePolicyUpdate",
    "ActiveProfileRemove",
    "ActiveProfileUpdate",
    "HostEndpointRemove",
    "HostEndpointUpdate",
    "IPPoolRemove",
    "IPPoolUpdate",
    "IPSetDeltaUpdate",
    "IPSetRemove",
    "IPSetUpdate",
    "InSync",
    "Message",
    "ResolvedRule",
    "TierInfo",
    "WorkloadEndpointRemove",
    "WorkloadEndpointUpdate",
]


@dataclass(frozen=True, slots=True)
class ResolvedRule:
    """A rule (felix.md §2.6) with every tag and selector replaced by an IP-set ID.

    All positive matches must hold and none of the `not_*` ones may. Several IP sets on one side
    (a tag and a selector) must all contain the address; each negated set must not.
    """

    action: str = "allow"
    ip_version: int | None = None
    protocol: str | None = None
    not_protocol: str | None = None
    src_net: str | None = None
    not_src_net: str | None = None
    src_ip_set_ids: tuple[str, ...] = ()
    not_src_ip_set_ids: tuple[str, ...] = ()
    src_ports: tuple[Port, ...] | None = None
    not_src_ports: tuple[Port, ...] | None = None
    dst_net: str | None = None
    not_dst_net: str | None = None
    dst_ip_set_ids: tuple[str, ...] = ()
    not_dst_ip_set_ids: tuple[str, ...] = ()
    dst_ports: tuple[Port, ...] | None = None
    not_dst_ports: tuple[Port, ...] | None = None
    icmp_type: int | None = None
    not_icmp_type: int | None = None
    icmp_code: int | None = None
    not_icmp_code: int | None = None
    log_prefix: str | None = None

    def ip_set_ids(self) -> frozenset[str]:
        return frozenset(
            self.src_ip_set_ids
            + self.not_src_ip_set_ids
            + self.dst_ip_set_ids
            + self.not_dst_ip_set_ids
        )


DENY_ALL: tuple[ResolvedRule, ...] = (ResolvedRule(action="deny"),)


@dataclass(frozen=True, slots=True)
class TierInfo:
    """One tier of an endpoint's policy list: the tier's name and its policies, in order."""

    name: str
    policies: tuple[str, ...]


# --- Lifecycle -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InSync:
    """Everything in the first datastore snapshot has been sent: start-of-day cleanup may run."""


# --- IP sets ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IPSetUpdate:
    """An IP set became active, with its full membership (or is to be replaced wholesale).

    `members`: each member once, in no particular order. A tuple, not a frozenset: the first
    in-sync batch carries every member of every set (307,000 at 1,000 endpoints), and their
    frozensets (42 bytes a member, against 8) were Felix's memory peak."""

    id: str
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class IPSetDeltaUpdate:
    id: str
    added: frozenset[str]
    removed: frozenset[str]


@dataclass(frozen=True, slots=True)
class IPSetRemove:
    id: str


# --- Policies and profiles -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActivePolicyUpdate:
    """A policy that applies to at least one local endpoint. `untracked` policies apply in the raw
    table, to host endpoints only."""

    id: PolicyKey
    inbound_rules: tuple[ResolvedRule, ...]
    outbound_rules: tuple[ResolvedRule, ...]
    untracked: bool = False


@dataclass(frozen=True, slots=True)
class ActivePolicyRemove:
    id: PolicyKey


@dataclass(frozen=True, slots=True)
class ActiveProfileUpdate:
    """A profile listed by at least one local endpoint. `stand_in` marks the deny-all rules sent
    for a profile whose rules are missing or invalid (felix.md §2.9: missing profile = deny)."""

    id: str
    inbound_rules: tuple[ResolvedRule, ...]
    outbound_rules: tuple[ResolvedRule, ...]
    stand_in: bool = False


@dataclass(frozen=True, slots=True)
class ActiveProfileRemove:
    id: str


# --- Endpoints -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkloadEndpointUpdate:
    """A workload endpoint on this host: the validated endpoint (interface name, MAC, nets,
    gateways, floating IPs, profile IDs, state) and its ordered tiers of matching policies."""

    id: WorkloadEndpointKey
    endpoint: WorkloadEndpoint
    tiers: tuple[TierInfo, ...]


@dataclass(frozen=True, slots=True)
class WorkloadEndpointRemove:
    id: WorkloadEndpointKey


@dataclass(frozen=True, slots=True)
class HostEndpointUpdate:
    """A host endpoint on this host, with its normal tiers and its untracked (raw-table) tiers."""

    id: HostEndpointKey
    endpoint: HostEndpoint
    tiers: tuple[TierInfo, ...]
    untracked_tiers: tuple[TierInfo, ...]


@dataclass(frozen=True, slots=True)
class HostEndpointRemove:
    id: HostEndpointKey


# --- Hosts and pools -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IPPoolUpdate:
    id: IPPoolKey
    pool: IPPool


@dataclass(frozen=True, slots=True)
class IPPoolRemove:
    id: IPPoolKey


Message = (
    InSync
    | IPSetUpdate
    | IPSetDeltaUpdate
    | IPSetRemove
    | ActivePolicyUpdate
    | ActivePolicyRemove
    | ActiveProfileUpdate
    | ActiveProfileRemove
    | WorkloadEndpointUpdate
    | WorkloadEndpointRemove
    | HostEndpointUpdate
    | HostEndpointRemove
    | IPPoolUpdate
    | IPPoolRemove
)
