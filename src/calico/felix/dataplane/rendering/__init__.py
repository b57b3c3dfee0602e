"""Turning calc-graph messages into iptables chains (felix.md §5.1-§5.9). Pure: no I/O at all.

How a packet meets Felix
------------------------
Felix hooks one jump into each kernel chain it cares about and owns everything behind it:

* **Routed through the host** (workload to workload, workload to the world, world to workload):
  kernel ``FORWARD`` → ``felix-FORWARD``. Packets arriving on a workload interface (``cali+``)
  are sent through ``felix-FROM-ENDPOINT``, packets leaving on one through ``felix-TO-ENDPOINT``;
  a workload-to-workload packet passes both. If neither dropped it, it is accepted.
* **Addressed to the host**: kernel ``INPUT`` → ``felix-INPUT``. Traffic from a workload gets the
  always-allowed services (DHCP, DNS, metadata) and then ``DefaultEndpointToHostAction``; other
  traffic goes to ``felix-FROM-HOST-IF`` for host-endpoint policy.
* **Sent by the host**: kernel ``OUTPUT`` → ``felix-OUTPUT``; traffic leaving on a non-workload
  interface goes to ``felix-TO-HOST-IF``. Host → local workload traffic is not policed.

Dispatch
--------
``felix-FROM-ENDPOINT`` and friends are *dispatch* chains: one ``-g`` (goto) per known interface to
that interface's own chain, arranged as a two-level tree keyed on the character after the common
prefix of all interface names, so a host with hundreds of workloads does not walk hundreds of rules.
A workload-prefixed interface Felix does not know is dropped; an unknown host interface is left to
the host's own rules (RETURN).

Per-endpoint chains
-------------------
``felix-from-<suffix>`` / ``felix-to-<suffix>`` run an endpoint's policy: each tier in order (each
policy jumped to in turn), then each profile in order, then drop. Policies and profiles live in
their own ``felix-p-<id>-i`` / ``-o`` chains, shared by every endpoint that uses them.

Marks as return values
----------------------
A jumped-to chain cannot tell its caller "accepted": ``-j ACCEPT`` would end all processing, and
RETURN looks the same whether the rules matched or not. So the policy chains *set a mark bit* and
RETURN, and the caller tests the bit. Felix takes three bits of ``IptablesMarkMask`` (§5.2):

* ACCEPT: a policy/profile allowed the packet (also "accepted by an untracked policy in raw");
* NEXT-TIER: a policy said "go on to the next tier" (so the tier's closing drop is skipped);
* ENDPOINT: the packet is to/from a workload interface, computed once in the top-level chains so
  INPUT/OUTPUT can tell workload traffic from host-endpoint traffic whatever the prefixes are.

Each bit is always set, cleared and tested with itself as the mask, so other users' bits survive.

Spelling
--------
Every rule is written the way ``iptables-save`` prints it back (basic matches ``-s -d -i -o -p``
first, ``-m tcp`` spelt out, marks as ``--set-xmark V/M``, LOG's default level 4 omitted, ...), so
a restarted Felix finds the kernel already matching and rewrites nothing. The exceptions are
protocol numbers without a built-in name (e.g. ``-p 4``), which iptables-save prints from
``/etc/protocols``; the table driver learns that spelling after its first write.
"""

from calico.felix.dataplane.rendering.base import (
    Chains,
    RenderConfig,
    UnrenderableRule,
    comment,
    drop_rules,
    is_ipv4,
    marks_from_mask,
)
from calico.felix.dataplane.rendering.endpoints import (
    dispatch_chains,
    host_endpoint_chains,
    workload_endpoint_chains,
)
from calico.felix.dataplane.rendering.rules import (
    chunk_ports,
    policy_chains,
    profile_chains,
    render_rule,
    rules_chain,
)
from calico.felix.dataplane.rendering.static import nat_chains, raw_chains, static_filter_chains

# The package's API: modules: base (configuration, builders), rules (§5.6), endpoints (§5.4,
# §5.5), static (§5.3, §5.8).
__all__ = [
    "Chains",
    "RenderConfig",
    "UnrenderableRule",
    "chunk_ports",
    "comment",
    "dispatch_chains",
    "drop_rules",
    "host_endpoint_chains",
    "is_ipv4",
    "marks_from_mask",
    "nat_chains",
    "policy_chains",
    "profile_chains",
    "raw_chains",
    "render_rule",
    "rules_chain",
    "static_filter_chains",
    "workload_endpoint_chains",
]
