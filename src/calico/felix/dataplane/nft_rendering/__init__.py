"""Turning calc-graph messages into one nftables table, ``inet felix`` (NFTablesMode). Pure: no
I/O at all; the iptables rendering's counterpart (`calico.felix.dataplane.rendering`), from the
same messages and the same `RenderConfig`.

The chains are the iptables backend's, for both IP families at once: per-endpoint chains
(tiers, profiles, the final drop), policy and profile chains that answer with the ACCEPT and
NEXT-TIER mark bits, and the top-level rules as base chains of their own hooks. What differs:

* dispatch is a verdict map per direction (``iifname vmap @felix-from-wl``), not a tree;
* the kernel's built-in chains are never touched: Felix's base chains hook in at their own
  priorities (`names`: just before each iptables-nft chain of the same hook);
* IP sets are named sets of the table (``type ipv4_addr`` / ``ipv6_addr``, and interval sets
  for the IPAM pools), rules name them as ``ip saddr @felix-v4-...``;
* rules use no anonymous sets (see `rules`).

Modules: base (what is rendered, builders), names (base chains, maps, priorities), rules
(§5.6), endpoints (§5.4, §5.5), static (§5.3, §5.8).
"""

from calico.felix.dataplane.nft_rendering.base import (
    FAMILY,
    TABLE,
    BaseChain,
    Chain,
    Rendered,
    SetSpec,
    check_name,
)
from calico.felix.dataplane.nft_rendering.endpoints import (
    dispatch_elements,
    dispatch_maps,
    host_dispatch_maps,
    host_endpoint_chains,
    workload_endpoint_chains,
)
from calico.felix.dataplane.nft_rendering.rules import (
    policy_chains,
    profile_chains,
    render_rule,
    rule_matches,
    rules_chain,
)
from calico.felix.dataplane.nft_rendering.static import nat_chains, pool_sets, static_chains

__all__ = [
    "FAMILY",
    "TABLE",
    "BaseChain",
    "Chain",
    "Rendered",
    "SetSpec",
    "check_name",
    "dispatch_elements",
    "dispatch_maps",
    "host_dispatch_maps",
    "host_endpoint_chains",
    "nat_chains",
    "policy_chains",
    "pool_sets",
    "profile_chains",
    "render_rule",
    "rule_matches",
    "rules_chain",
    "static_chains",
    "workload_endpoint_chains",
]
