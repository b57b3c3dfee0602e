"""Per-endpoint chains (felix.md §5.5: tiers, then profiles, then drop) for workloads and host
endpoints, and the dispatch trees (§5.4) that send each interface's packets to its chains.
Pure."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Sequence

from calico.felix.calc.messages import HostEndpointUpdate, TierInfo, WorkloadEndpointUpdate
from calico.felix.dataplane import names
from calico.felix.dataplane.rendering.base import (
    Chains,
    RenderConfig,
    clear_mark,
    comment,
    drop_rules,
    join,
    mark_is_clear,
    mark_is_set,
)

# --- per-endpoint chains (§5.5) --------------------------------------------------------------


def _tier_rules(tiers: Sequence[TierInfo], inbound: bool, config: RenderConfig) -> list[str]:
    """Each non-empty tier: clear NEXT-TIER, try its policies in order, drop at its end unless a
    policy accepted (returned) or said next-tier."""
    accept, next_tier = config.mark_accept, config.mark_next_tier
    rules: list[str] = []
    for tier in tiers:
        if not tier.policies:
            continue
        rules.append(join(comment(f"Start of tier {tier.name}"), clear_mark(next_tier)))
        for policy in tier.policies:
            chain = names.policy_chain(tier.name, policy, inbound)
            rules.append(join(mark_is_clear(next_tier), f"-j {chain}"))
            rules.append(
                join(mark_is_set(accept), comment("Return if policy accepted"), "-j RETURN")
            )
        rules += drop_rules(config, mark_is_clear(next_tier), "Drop if no policy in tier passed")
    return rules


def _profile_rules(profile_ids: Sequence[str], inbound: bool, config: RenderConfig) -> list[str]:
    rules: list[str] = []
    for profile in profile_ids:
        rules.append(f"-j {names.profile_chain(profile, inbound)}")
        rules.append(
            join(mark_is_set(config.mark_accept), comment("Profile accepted packet"), "-j RETURN")
        )
    return rules


def _endpoint_body(
    tiers: Sequence[TierInfo],
    profile_ids: Sequence[str],
    inbound: bool,
    endpoint_id: str,
    config: RenderConfig,
    first: Sequence[str] = (),
) -> list[str]:
    """Steps 2-6 of §5.5 (clear ACCEPT, `first` (MAC check), tiers, profiles, final drop)."""
    return [
        clear_mark(config.mark_accept),
        *first,
        *_tier_rules(tiers, inbound, config),
        *_profile_rules(profile_ids, inbound, config),
        *drop_rules(
            config, comment_text=f"Packet did not match any profile (endpoint {endpoint_id})"
        ),
    ]


def workload_endpoint_chains(
    update: WorkloadEndpointUpdate, ip_version: int, config: RenderConfig
) -> Chains:
    """``felix-to-<suffix>`` (the inbound rules) and ``felix-from-<suffix>`` (outbound).

    No source-IP check here: anti-spoofing is done by routing (strict rp_filter, one /32 route per
    endpoint IP) for IPv4 and by the raw-table ``felix-RPFILTER`` for IPv6 (§5.1, §5.11)."""
    endpoint = update.endpoint
    if not endpoint.active:
        return {}
    key = update.id
    endpoint_id = f"{key.orchestrator}/{key.workload}/{key.endpoint}"
    prefixes = config.interface_prefixes
    mac_check = (
        drop_rules(config, f"-m mac ! --mac-source {endpoint.mac}", "Incorrect source MAC")
        if endpoint.mac
        else []
    )
    return {
        names.endpoint_chain("to", endpoint.name, prefixes): _endpoint_body(
            update.tiers, endpoint.profile_ids, True, endpoint_id, config
        ),
        names.endpoint_chain("from", endpoint.name, prefixes): _endpoint_body(
            update.tiers, endpoint.profile_ids, False, endpoint_id, config, mac_check
        ),
    }


def _untracked_body(tiers: Sequence[TierInfo], inbound: bool, config: RenderConfig) -> list[str]:
    """Raw-table variant: untracked policies only; accepted packets are NOTRACKed and returned;
    no tier-end or final drop (the packet goes on to the filter table)."""
    accept, next_tier = config.mark_accept, config.mark_next_tier
    rules = [clear_mark(accept)]
    for tier in tiers:
        if not tier.policies:
            continue
        rules.append(join(comment(f"Start of tier {tier.name}"), clear_mark(next_tier)))
        for policy in tier.policies:
            chain = names.policy_chain(tier.name, policy, inbound)
            rules.append(join(mark_is_clear(next_tier), f"-j {chain}"))
            rules.append(join(mark_is_set(accept), "-j NOTRACK"))
            rules.append(
                join(mark_is_set(accept), comment("Return if policy accepted"), "-j RETURN")
            )
    return rules


def host_endpoint_chains(
    update: HostEndpointUpdate, interface: str, ip_version: int, config: RenderConfig
) -> tuple[Chains, Chains]:
    """(filter chains, raw chains) for a host endpoint resolved to `interface`.

    Directions are reversed vs workloads: traffic *to* the interface is leaving the host, so it
    gets the outbound rules (and the outbound failsafe ports)."""
    ep = update.endpoint
    endpoint_id = f"{update.id.hostname}/{update.id.endpoint}"
    to_chain = names.host_endpoint_chain("to", interface)
    from_chain = names.host_endpoint_chain("from", interface)
    fs_out, fs_in = f"-j {names.CHAIN_FAILSAFE_OUT}", f"-j {names.CHAIN_FAILSAFE_IN}"
    filter_chains = {
        to_chain: [
            fs_out,
            *_endpoint_body(update.tiers, ep.profile_ids, False, endpoint_id, config),
        ],
        from_chain: [
            fs_in,
            *_endpoint_body(update.tiers, ep.profile_ids, True, endpoint_id, config),
        ],
    }
    raw = {
        to_chain: [fs_out, *_untracked_body(update.untracked_tiers, False, config)],
        from_chain: [fs_in, *_untracked_body(update.untracked_tiers, True, config)],
    }
    return filter_chains, raw


# --- dispatch (§5.4) -------------------------------------------------------------------------


def _common_prefix(items: Sequence[str]) -> str:
    first, last = min(items), max(items)
    n = 0
    while n < len(first) and first[n] == last[n]:
        n += 1
    return first[:n]


def _dispatch_tree(
    interfaces: Sequence[str],
    root: str,
    leaf_prefix: str,
    flag: str,
    direction: str,
    prefixes: tuple[str, ...],
    end: list[str],
) -> Chains:
    """One tree: `interfaces` grouped by their first character after the common prefix, a
    leaf chain per group of several. `interfaces` must be sorted and distinct (groupby finds
    each group in one run only then)."""
    chains: Chains = {root: []}
    common = _common_prefix(interfaces) if interfaces else ""
    at = len(common)
    # (sorted names that share `common` come grouped by the character that follows it)
    for char, group in itertools.groupby(interfaces, key=lambda iface: iface[at : at + 1]):
        members = tuple(group)
        jumps = _jumps(flag, members, direction, prefixes)
        if len(members) == 1 or not char:  # one interface (or the prefix itself): direct rule
            chains[root] += jumps
            continue
        leaf = names.dispatch_leaf_chain(leaf_prefix, char)
        chains[root].append(f"{flag} {common}{char}+ -g {leaf}")
        chains[leaf] = [*jumps, *end]
    chains[root] += end
    return chains


@functools.lru_cache(maxsize=128)
def _jumps(
    flag: str, members: tuple[str, ...], direction: str, prefixes: tuple[str, ...]
) -> tuple[str, ...]:
    """One group's jumps to its endpoints' chains. Remembered for the groups in use: an endpoint
    add changes one group, and rendering all the others again was 2 ms of it at 1,000
    endpoints. OpenStack's TAP names give 16 groups per direction (a hex digit follows the
    common prefix); 128 leaves room for the groups adds replaced, whose rules are then held
    until they age out (with more than 64 groups per direction, nothing is found again: each
    tree is then rendered whole, as it was without this)."""
    return tuple(
        f"{flag} {names.check_interface_name(iface)} -g "  # it is written into a rule
        f"{names.endpoint_chain(direction, iface, prefixes)}"
        for iface in members
    )


def dispatch_chains(
    interfaces: Iterable[str], ip_version: int, config: RenderConfig, *, host: bool = False
) -> Chains:
    """The FROM and TO dispatch trees for workload (or, with `host`, host-endpoint) interfaces.

    Unknown workload interfaces are dropped; unknown host interfaces RETURN to the host's rules.
    The host trees are written to both the filter and the raw table."""
    ifaces = sorted(set(interfaces))
    if host:
        prefixes: tuple[str, ...] = ()
        roots = (names.CHAIN_FROM_HOST_IF, names.CHAIN_TO_HOST_IF)
        leaves = (names.CHAIN_FROM_IF_LEAF_PREFIX, names.CHAIN_TO_IF_LEAF_PREFIX)
        ends = [[join(comment("Unknown interface, return"), "-j RETURN")]] * 2
    else:
        prefixes = config.interface_prefixes
        roots = (names.CHAIN_FROM_ENDPOINT, names.CHAIN_TO_ENDPOINT)
        leaves = (names.CHAIN_FROM_EP_LEAF_PREFIX, names.CHAIN_TO_EP_LEAF_PREFIX)
        ends = [drop_rules(config, comment_text=f"{d} unknown endpoint") for d in ("From", "To")]
    chains = _dispatch_tree(ifaces, roots[0], leaves[0], "-i", "from", prefixes, ends[0])
    chains.update(_dispatch_tree(ifaces, roots[1], leaves[1], "-o", "to", prefixes, ends[1]))
    return chains
