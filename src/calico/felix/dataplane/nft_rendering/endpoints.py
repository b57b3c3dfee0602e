"""Per-endpoint chains (felix.md §5.5: tiers, then profiles, then drop) for workloads and host
endpoints, and the verdict maps that send each interface's packets to its chains (§5.4). Pure.

The rules are the iptables backend's, in one table for both families, with one difference: a
policy or profile that allows a packet accepts it (each direction has a base chain of its own,
so this ends only that direction's evaluation), where the iptables backend sets the ACCEPT bit,
returns and tests it; NEXT-TIER is still a mark bit (untracked policy in the raw hooks keeps
the ACCEPT bit too, for the filter hooks to see). Dispatch is
one map lookup (``iifname vmap @felix-from-wl``, elements ``"tapX" : goto felix-from-X``)
instead of a tree of chains: adding an endpoint adds two elements and two chains, and rewrites
no dispatch chain.

Shared programs: what an endpoint's policy does in one direction (its tiers, profiles and final
drop) depends only on its tiers and profiles, so endpoints with the same ones share one chain,
``felix-pr-<hash of its rules>-i`` / ``-o``, and their own chains hold only the source MAC check
and a ``goto`` to it. Every commit makes the kernel validate every chain reachable from a base
chain (once each), so the table's size in rules is what each change costs
(docs/design/dataplane.md, "The nftables backend").
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from calico.felix.calc.messages import HostEndpointUpdate, TierInfo, WorkloadEndpointUpdate
from calico.felix.dataplane import names
from calico.felix.dataplane.nft_rendering import names as nft_names
from calico.felix.dataplane.nft_rendering.base import (
    VERDICT_MAP,
    Chain,
    Rendered,
    check_name,
    clear_mark,
    comment,
    drop_rules,
    join,
    mark_is_clear,
    mark_is_set,
)
from calico.felix.dataplane.rendering.base import RenderConfig


def _tier_rules(tiers: Sequence[TierInfo], inbound: bool, config: RenderConfig) -> list[str]:
    """Each non-empty tier: clear NEXT-TIER, try its policies in order (one that allows accepts
    the packet, which ends this direction's evaluation), drop at its end unless a policy said
    next-tier."""
    next_tier = config.mark_next_tier
    rules: list[str] = []
    for tier in tiers:
        if not tier.policies:
            continue
        rules.append(join(clear_mark(next_tier), comment(f"Start of tier {tier.name}")))
        for policy in tier.policies:
            chain = names.policy_chain(tier.name, policy, inbound)
            rules.append(join(mark_is_clear(next_tier), f"jump {chain}"))
        rules += drop_rules(config, mark_is_clear(next_tier), "Drop if no policy in tier passed")
    return rules


def _profile_rules(profile_ids: Sequence[str], inbound: bool) -> list[str]:
    """Each profile in order (one that allows accepts the packet)."""
    return [f"jump {names.profile_chain(profile, inbound)}" for profile in profile_ids]


def _endpoint_body(
    tiers: Sequence[TierInfo],
    profile_ids: Sequence[str],
    inbound: bool,
    endpoint_id: str | None,
    config: RenderConfig,
) -> list[str]:
    """Steps 4-6 of §5.5 (tiers, profiles, final drop); `endpoint_id` None for a program
    chain, which endpoints share."""
    about = f" (endpoint {endpoint_id})" if endpoint_id is not None else ""
    return [
        *_tier_rules(tiers, inbound, config),
        *_profile_rules(profile_ids, inbound),
        *drop_rules(config, comment_text=f"Packet did not match any profile{about}"),
    ]


def workload_endpoint_chains(update: WorkloadEndpointUpdate, config: RenderConfig) -> Rendered:
    """``felix-to-<suffix>`` (inbound rules) and ``felix-from-<suffix>`` (outbound, after the
    source MAC check), for both families. Source addresses are checked by routing (IPv4, strict
    rp_filter) and the raw base chain's fib check (IPv6), as in the iptables backend."""
    endpoint = update.endpoint
    if not endpoint.active:
        return Rendered()
    key = update.id
    endpoint_id = f"{key.orchestrator}/{key.workload}/{key.endpoint}"
    prefixes = config.interface_prefixes
    mac_check = (
        drop_rules(config, f"ether saddr != {endpoint.mac}", "Incorrect source MAC")
        if endpoint.mac
        else []
    )
    to_chain = check_name(names.endpoint_chain("to", endpoint.name, prefixes))
    from_chain = check_name(names.endpoint_chain("from", endpoint.name, prefixes))
    program_in, chain_in = program_chain(update.tiers, endpoint.profile_ids, True, config)
    program_out, chain_out = program_chain(update.tiers, endpoint.profile_ids, False, config)
    note = comment(f"Endpoint {endpoint_id}")
    return Rendered(
        {
            to_chain: Chain((join(f"goto {program_in}", note),)),
            from_chain: Chain((*mac_check, join(f"goto {program_out}", note))),
            program_in: chain_in,
            program_out: chain_out,
        }
    )


def program_chain(
    tiers: Sequence[TierInfo], profile_ids: Sequence[str], inbound: bool, config: RenderConfig
) -> tuple[str, Chain]:
    """The shared chain of one direction's policy: the tiers, the profiles, the final drop.
    Named after a hash of its rules, so equal programs are one chain."""
    rules = _endpoint_body(tiers, profile_ids, inbound, None, config)
    digest = hashlib.blake2b("\n".join(rules).encode(), digest_size=10).hexdigest()
    return f"felix-pr-{digest}-{'i' if inbound else 'o'}", Chain(tuple(rules))


def _untracked_body(tiers: Sequence[TierInfo], inbound: bool, config: RenderConfig) -> list[str]:
    """Raw-hook variant: untracked policies only; accepted packets are untracked and returned;
    no tier-end or final drop (the packet goes on to the filter hook)."""
    accept, next_tier = config.mark_accept, config.mark_next_tier
    rules = [clear_mark(accept)]
    for tier in tiers:
        if not tier.policies:
            continue
        rules.append(join(clear_mark(next_tier), comment(f"Start of tier {tier.name}")))
        for policy in tier.policies:
            chain = nft_names.raw_policy_chain(names.policy_chain(tier.name, policy, inbound))
            rules.append(join(mark_is_clear(next_tier), f"jump {chain}"))
            rules.append(join(mark_is_set(accept), "notrack"))
            rules.append(join(mark_is_set(accept), "return", comment("Return if policy accepted")))
    return rules


def host_endpoint_chains(
    update: HostEndpointUpdate, interface: str, config: RenderConfig
) -> Rendered:
    """The filter-hook chains ``felix-to/from-<iface>`` and the raw-hook chains
    ``felix-raw-to/from-<iface>`` of a host endpoint resolved to `interface`.

    Directions are reversed vs workloads: traffic *to* the interface is leaving the host, so it
    gets the outbound rules (and the outbound failsafe ports)."""
    ep = update.endpoint
    endpoint_id = f"{update.id.hostname}/{update.id.endpoint}"
    fs_out, fs_in = f"jump {nft_names.FAILSAFE_OUT}", f"jump {nft_names.FAILSAFE_IN}"
    chains = {
        names.host_endpoint_chain("to", interface): [
            fs_out,
            *_endpoint_body(update.tiers, ep.profile_ids, False, endpoint_id, config),
        ],
        names.host_endpoint_chain("from", interface): [
            fs_in,
            *_endpoint_body(update.tiers, ep.profile_ids, True, endpoint_id, config),
        ],
        nft_names.raw_host_endpoint_chain("to", interface): [
            fs_out,
            *_untracked_body(update.untracked_tiers, False, config),
        ],
        nft_names.raw_host_endpoint_chain("from", interface): [
            fs_in,
            *_untracked_body(update.untracked_tiers, True, config),
        ],
    }
    return Rendered({check_name(name): Chain(tuple(rules)) for name, rules in chains.items()})


def dispatch_elements(interface: str, config: RenderConfig) -> tuple[str, str]:
    """One workload interface's elements of the from- and to-map."""
    name = names.check_interface_name(interface)
    prefixes = config.interface_prefixes
    return (
        f'"{name}" : goto {names.endpoint_chain("from", name, prefixes)}',
        f'"{name}" : goto {names.endpoint_chain("to", name, prefixes)}',
    )


def dispatch_maps(interfaces: Iterable[str], config: RenderConfig) -> Rendered:
    """The workload verdict maps: each active interface to its from- and to-chain."""
    pairs = [dispatch_elements(i, config) for i in sorted(set(interfaces))]
    from_elems = frozenset(p[0] for p in pairs)
    to_elems = frozenset(p[1] for p in pairs)
    return Rendered(
        sets={
            nft_names.MAP_FROM_WORKLOAD: (VERDICT_MAP, from_elems),
            nft_names.MAP_TO_WORKLOAD: (VERDICT_MAP, to_elems),
        }
    )


def host_dispatch_maps(interfaces: Iterable[str]) -> Rendered:
    """The host-endpoint verdict maps (filter and raw hooks)."""
    ifaces = sorted(set(interfaces))
    maps = {
        nft_names.MAP_FROM_HOST: lambda i: names.host_endpoint_chain("from", i),
        nft_names.MAP_TO_HOST: lambda i: names.host_endpoint_chain("to", i),
        nft_names.MAP_RAW_FROM_HOST: lambda i: nft_names.raw_host_endpoint_chain("from", i),
        nft_names.MAP_RAW_TO_HOST: lambda i: nft_names.raw_host_endpoint_chain("to", i),
    }
    return Rendered(
        sets={
            name: (
                VERDICT_MAP,
                frozenset(f'"{names.check_interface_name(i)}" : goto {chain(i)}' for i in ifaces),
            )
            for name, chain in maps.items()
        }
    )
