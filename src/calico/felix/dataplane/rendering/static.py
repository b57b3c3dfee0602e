"""The chains that depend on configuration alone (felix.md §5.3, §5.5, §5.8): the top-level
filter chains, failsafe ports, the raw table's reverse-path check, and NAT (metadata, floating
IPs, masquerade). Pure."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Sequence

from calico.felix.dataplane import names
from calico.felix.dataplane.rendering.base import (
    DHCP_PORTS,
    ICMPV6_HOST_TYPES,
    METADATA_IP,
    Chains,
    RenderConfig,
    clear_mark,
    drop_rules,
    join,
    mark_is_clear,
    mark_is_set,
    net_version,
    set_mark,
)

# --- static chains (§5.3, §5.5, §5.8) ----------------------------------------------------------


def _mark_workload_traffic(flag: str, config: RenderConfig) -> list[str]:
    """Clear the ENDPOINT mark, then set it for packets on any workload interface."""
    ep = config.mark_endpoint
    return [clear_mark(ep)] + [f"{flag} {p}+ {set_mark(ep)}" for p in config.interface_prefixes]


def _conntrack_rules(config: RenderConfig) -> list[str]:
    return [
        *drop_rules(config, "-m conntrack --ctstate INVALID"),
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ]


def _input_chain(ip_version: int, config: RenderConfig) -> list[str]:
    rules = [join(mark_is_set(config.mark_accept), "-j ACCEPT")]
    rules += _conntrack_rules(config)
    rules += _mark_workload_traffic("-i", config)
    rules.append(join(mark_is_clear(config.mark_endpoint), f"-g {names.CHAIN_FROM_HOST_IF}"))
    # From here on: packets from workloads to the host.
    if ip_version == 6:
        rules += [f"-p ipv6-icmp -m icmp6 --icmpv6-type {t} -j ACCEPT" for t in ICMPV6_HOST_TYPES]
    if ip_version == 4 and config.metadata_addr:
        rules.append(
            f"-d {config.metadata_addr}/32 -p tcp -m tcp --dport {config.metadata_port} -j ACCEPT"
        )
    sport, dport = DHCP_PORTS[ip_version]
    rules.append(f"-p udp -m udp --sport {sport} --dport {dport} -j ACCEPT")
    rules.append("-p udp -m udp --dport 53 -j ACCEPT")
    action = config.default_endpoint_to_host_action
    if action != "DROP":
        rules.append(f"-j {names.CHAIN_FROM_ENDPOINT}")  # workload egress policy first
    if action == "DROP":
        rules += drop_rules(config, comment_text="Drop all packets from endpoints to the host")
    elif action == "ACCEPT":
        rules.append("-j ACCEPT")
    return rules  # RETURN: fall off the end, back to the kernel INPUT chain


def _output_chain(config: RenderConfig) -> list[str]:
    return [
        join(mark_is_set(config.mark_accept), "-j ACCEPT"),
        *_conntrack_rules(config),
        *_mark_workload_traffic("-o", config),
        join(mark_is_clear(config.mark_endpoint), f"-g {names.CHAIN_TO_HOST_IF}"),
    ]


def _forward_chain(config: RenderConfig) -> list[str]:
    prefixes = config.interface_prefixes
    rules = [join(mark_is_set(config.mark_accept), "-m conntrack --ctstate UNTRACKED -j ACCEPT")]
    rules += _conntrack_rules(config)
    for p in prefixes:
        rules += [
            f"-i {p}+ -j {names.CHAIN_FROM_ENDPOINT}",
            f"-o {p}+ -j {names.CHAIN_TO_ENDPOINT}",
        ]
    for p in prefixes:
        rules += [f"-i {p}+ -j ACCEPT", f"-o {p}+ -j ACCEPT"]
    return [*rules, f"-j {names.CHAIN_FROM_HOST_IF}", f"-j {names.CHAIN_TO_HOST_IF}"]


def failsafe_chains(config: RenderConfig) -> Chains:
    """TCP to these destination ports is always allowed through host endpoints (filter and raw)."""
    return {
        names.CHAIN_FAILSAFE_IN: [
            f"-p tcp -m tcp --dport {p} -j ACCEPT" for p in config.failsafe_inbound_ports
        ],
        names.CHAIN_FAILSAFE_OUT: [
            f"-p tcp -m tcp --dport {p} -j ACCEPT" for p in config.failsafe_outbound_ports
        ],
    }


def static_filter_chains(ip_version: int, config: RenderConfig) -> Chains:
    """felix-INPUT, felix-OUTPUT, felix-FORWARD and the failsafe chains of the filter table."""
    return {
        names.CHAIN_INPUT: _input_chain(ip_version, config),
        names.CHAIN_OUTPUT: _output_chain(config),
        names.CHAIN_FORWARD: _forward_chain(config),
        **failsafe_chains(config),
    }


def raw_chains(ip_version: int, config: RenderConfig) -> Chains:
    """Raw-table entry points for untracked host-endpoint policy (§5.5), the failsafe chains, and
    for IPv6 the reverse-path (anti-spoofing) check on workload interfaces.

    Deviation: the reference inserts the v6 rpfilter rules into the kernel PREROUTING chain; we
    keep one hook per kernel chain, so they open felix-PREROUTING instead (same effect: first)."""
    accept, ep = config.mark_accept, config.mark_endpoint
    prerouting: list[str] = []
    chains: Chains = {}
    if ip_version == 6:
        prerouting += [
            f"-i {p}+ -m rpfilter --invert -j {names.CHAIN_RPFILTER}"
            for p in config.interface_prefixes
        ]
        chains[names.CHAIN_RPFILTER] = drop_rules(config, comment_text="Drop IPv6 spoofed packets")
    prerouting += [clear_mark(accept), *_mark_workload_traffic("-i", config)]
    prerouting.append(join(mark_is_clear(ep), f"-g {names.CHAIN_FROM_HOST_IF}"))
    output = [clear_mark(accept), *_mark_workload_traffic("-o", config)]
    output.append(join(mark_is_clear(ep), f"-g {names.CHAIN_TO_HOST_IF}"))
    chains[names.CHAIN_PREROUTING] = prerouting
    chains[names.CHAIN_OUTPUT] = output
    chains.update(failsafe_chains(config))
    return chains


def _host_net(ip: str) -> str:
    return f"{ip}/{32 if net_version(ip) == 4 else 128}"


def _snat_mappings(pairs: Sequence[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """One (int, ext) per internal IP: the first mapping wins after a stable sort by int IP."""
    seen: set[str] = set()
    for int_ip, ext_ip in sorted(pairs, key=lambda pair: ipaddress.ip_address(pair[0])):
        if int_ip not in seen:
            seen.add(int_ip)
            yield int_ip, ext_ip


def nat_chains(
    ip_version: int,
    config: RenderConfig,
    floating_ips: Iterable[tuple[str, str]] = (),
    masquerade_enabled: bool = False,
) -> Chains:
    """The nat table (§5.8). `floating_ips` are (int_ip, ext_ip) pairs of all local endpoints;
    pairs of the other family are ignored. Masquerade (v4 only) covers traffic from the
    masquerade pools to anywhere outside all pools."""
    pairs = [(i, e) for i, e in dict.fromkeys(floating_ips) if net_version(i) == ip_version]
    prerouting = [f"-j {names.CHAIN_FIP_DNAT}"]
    postrouting = [f"-j {names.CHAIN_FIP_SNAT}"]
    if ip_version == 4 and config.metadata_addr:
        prerouting.append(
            f"-d {METADATA_IP}/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination "
            f"{config.metadata_addr}:{config.metadata_port}"
        )
    if ip_version == 4 and masquerade_enabled:
        postrouting.append(
            f"-m set --match-set {names.IPSET_MASQ_POOLS} src "
            f"-m set ! --match-set {names.IPSET_ALL_POOLS} dst -j MASQUERADE"
        )
    return {
        names.CHAIN_PREROUTING: prerouting,
        names.CHAIN_OUTPUT: [f"-j {names.CHAIN_FIP_DNAT}"],
        names.CHAIN_POSTROUTING: postrouting,
        names.CHAIN_FIP_DNAT: [f"-d {_host_net(e)} -j DNAT --to-destination {i}" for i, e in pairs],
        names.CHAIN_FIP_SNAT: [
            f"-s {_host_net(i)} -d {_host_net(i)} -j SNAT --to-source {e}"
            for i, e in _snat_mappings(pairs)
        ],
    }
