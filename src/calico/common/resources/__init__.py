"""Validated, immutable values of the v1 data model (reference: felix.md §2.2-§2.7).

Each `parse_*(raw_json, key)` decodes one etcd value and validates it completely: on failure it
raises `InvalidValue`, whose message (and `.problems`) lists every problem found, not just the
first. Callers treat an invalid value as if the key were deleted (§2.9).

Canonical forms: MACs are lower-case colon-separated; CIDRs are `ipaddress` text (endpoint nets keep
their address bits, rule nets and pools are masked to the network); protocols are strings (numbers
become their decimal text); collections are tuples; label maps are immutable `Labels`.

The package's modules: `values` (the value types), `checks` (small validators), `rules` (the rule
schema), `parsers` (`parse_*` for each kind of key). Everything public is re-exported here.
"""

from __future__ import annotations

from calico.common.resources.checks import (
    canonicalise_mac,
    check_id,
    check_ip,
    decode_object,
    endpoint_net,
    validate_selector,
)
from calico.common.resources.parsers import (
    parse_host_endpoint,
    parse_ip_pool,
    parse_policy,
    parse_profile_labels,
    parse_profile_rules,
    parse_profile_tags,
    parse_tier_metadata,
    parse_workload_endpoint,
)
from calico.common.resources.rules import parse_rule
from calico.common.resources.values import (
    ACTIONS,
    EMPTY_LABELS,
    HOST_ONLY_FIELDS,
    INTERFACE_NAME_RE,
    LOG_PREFIX_MAX_LEN,
    PROTOCOL_NAMES,
    RULE_KEYS,
    WORKLOAD_ONLY_FIELDS,
    HostEndpoint,
    InvalidValue,
    IPPool,
    Labels,
    NatMapping,
    Policy,
    Port,
    ProfileRules,
    Rule,
    SelectorValidator,
    TierMetadata,
    WorkloadEndpoint,
)

__all__ = [
    "ACTIONS",
    "EMPTY_LABELS",
    "HOST_ONLY_FIELDS",
    "INTERFACE_NAME_RE",
    "LOG_PREFIX_MAX_LEN",
    "PROTOCOL_NAMES",
    "RULE_KEYS",
    "WORKLOAD_ONLY_FIELDS",
    "HostEndpoint",
    "IPPool",
    "InvalidValue",
    "Labels",
    "NatMapping",
    "Policy",
    "Port",
    "ProfileRules",
    "Rule",
    "SelectorValidator",
    "TierMetadata",
    "WorkloadEndpoint",
    "canonicalise_mac",
    "check_id",
    "check_ip",
    "decode_object",
    "endpoint_net",
    "parse_host_endpoint",
    "parse_ip_pool",
    "parse_policy",
    "parse_profile_labels",
    "parse_profile_rules",
    "parse_profile_tags",
    "parse_rule",
    "parse_tier_metadata",
    "parse_workload_endpoint",
    "validate_selector",
]
