"""The names of Felix's objects in its nftables table, and the base chains' hooks and
priorities (docs/design/dataplane.md, "The nftables backend"). Per-endpoint, policy and profile
chains and the IP sets keep the iptables backend's names (`calico.felix.dataplane.names`); the
chains below replace the iptables backend's kernel hooks and dispatch trees.

Priorities: each base chain runs just before the iptables-nft chain of the same hook (raw -300,
nat -100 / 100, filter 0), so that Felix sees packets where its iptables jump at position 1
would have: raw before conntrack (-200), DNAT before iptables' DNAT (the first binding wins),
SNAT before iptables' SNAT, filtering after DNAT (policy sees the translated destination, as
the filter table did).
"""

from __future__ import annotations

from typing import Final

from calico.felix.dataplane import names
from calico.felix.dataplane.nft_rendering.base import BaseChain

RAW_PRIORITY: Final = -305
NAT_DNAT_PRIORITY: Final = -105
FILTER_PRIORITY: Final = -5
NAT_SNAT_PRIORITY: Final = 95

# Base chains (each holds what the iptables backend's hooked felix-* chain holds).
INPUT: Final = "felix-INPUT"
FORWARD: Final = "felix-FORWARD"  # forwarded traffic's source policy (workload egress, host in)
FORWARD_TO: Final = "felix-FORWARD-TO"  # and its destination policy, just after
OUTPUT: Final = "felix-OUTPUT"
RAW_PREROUTING: Final = "felix-raw-PREROUTING"
RAW_OUTPUT: Final = "felix-raw-OUTPUT"
NAT_PREROUTING: Final = "felix-nat-PREROUTING"
NAT_OUTPUT: Final = "felix-nat-OUTPUT"
NAT_POSTROUTING: Final = "felix-nat-POSTROUTING"

BASE_CHAINS: Final[dict[str, BaseChain]] = {
    INPUT: BaseChain("filter", "input", FILTER_PRIORITY),
    FORWARD: BaseChain("filter", "forward", FILTER_PRIORITY),
    FORWARD_TO: BaseChain("filter", "forward", FILTER_PRIORITY + 1),
    OUTPUT: BaseChain("filter", "output", FILTER_PRIORITY),
    RAW_PREROUTING: BaseChain("filter", "prerouting", RAW_PRIORITY),
    RAW_OUTPUT: BaseChain("filter", "output", RAW_PRIORITY),
    NAT_PREROUTING: BaseChain("nat", "prerouting", NAT_DNAT_PRIORITY),
    NAT_OUTPUT: BaseChain("nat", "output", NAT_DNAT_PRIORITY),
    NAT_POSTROUTING: BaseChain("nat", "postrouting", NAT_SNAT_PRIORITY),
}

# Regular chains of the static layer.
WORKLOAD_TO_HOST: Final = "felix-WL-TO-HOST"  # felix-INPUT's rules for traffic from workloads
FROM_ENDPOINT: Final = names.CHAIN_FROM_ENDPOINT
TO_ENDPOINT: Final = names.CHAIN_TO_ENDPOINT
FROM_HOST_IF: Final = names.CHAIN_FROM_HOST_IF
TO_HOST_IF: Final = names.CHAIN_TO_HOST_IF
RAW_FROM_HOST_IF: Final = "felix-raw-FROM-HOST-IF"
RAW_TO_HOST_IF: Final = "felix-raw-TO-HOST-IF"
FAILSAFE_IN: Final = names.CHAIN_FAILSAFE_IN
FAILSAFE_OUT: Final = names.CHAIN_FAILSAFE_OUT
FIP_DNAT: Final = names.CHAIN_FIP_DNAT
FIP_SNAT: Final = names.CHAIN_FIP_SNAT

# Verdict maps: interface name -> goto its chain.
MAP_FROM_WORKLOAD: Final = "felix-from-wl"
MAP_TO_WORKLOAD: Final = "felix-to-wl"
MAP_FROM_HOST: Final = "felix-from-hep"
MAP_TO_HOST: Final = "felix-to-hep"
MAP_RAW_FROM_HOST: Final = "felix-raw-from-hep"
MAP_RAW_TO_HOST: Final = "felix-raw-to-hep"

POOLS_ALL: Final = names.IPSET_ALL_POOLS
POOLS_MASQ: Final = names.IPSET_MASQ_POOLS


def set_name(set_id: str, ip_version: int) -> str:
    """The nft set of a calc-graph IP set (the iptables backend's ipset name: set IDs are
    always long enough to be shortened to ``_`` + a hash, so no ":" is left)."""
    name = names.ipset_name(set_id, ip_version)
    if ":" in name:  # (a short ID: nft names cannot hold ":")
        name = names.PREFIX + f"v{ip_version}-" + names.uniquely_shorten("_" + set_id, 16)
        name = name.replace(":", ".")
    return name


def raw_policy_chain(policy_chain: str) -> str:
    """The raw hooks' copy of an untracked policy's chain: ``felix-raw-p-...``."""
    return policy_chain.replace("felix-", "felix-raw-", 1)


def raw_host_endpoint_chain(direction: str, interface: str) -> str:
    """``felix-raw-to-<iface>`` / ``felix-raw-from-<iface>``: a host endpoint's untracked
    policy (the iptables backend's raw-table copy of ``felix-to-<iface>``)."""
    return names.host_endpoint_chain(direction, interface).replace("felix-", "felix-raw-", 1)
