"""The chains that depend on configuration alone (felix.md §5.3, §5.5, §5.8), as nftables base
chains: filtering (input, forward, output), the raw hooks (untracked host-endpoint policy, the
IPv6 reverse-path check) and NAT (metadata, floating IPs, masquerade). Pure.

The base chains hold what the iptables backend's hooked ``felix-*`` chains hold. The ENDPOINT
mark bit is not needed: a chain tells workload traffic from host traffic by ``iifname "tap*"``
and sends it on with ``goto``, so ``iifname`` tests once where iptables set and tested a bit.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Sequence

from calico.common.resources import IPPool
from calico.felix.dataplane.nft_rendering import names as n
from calico.felix.dataplane.nft_rendering.base import (
    ADDR_KEYWORD,
    FAMILY_MATCH,
    NET_SET,
    Chain,
    Rendered,
    clear_mark,
    drop_rules,
    join,
    mark_is_set,
)
from calico.felix.dataplane.rendering.base import (
    DHCP_PORTS,
    ICMPV6_HOST_TYPES,
    METADATA_IP,
    RenderConfig,
    net_version,
)

_NEXTHDR = {4: "ip", 6: "ip6"}


def _wildcards(config: RenderConfig) -> list[str]:
    # Interface prefixes are validated like interface names: [a-zA-Z0-9_.-] (config.types).
    return [f'"{prefix}*"' for prefix in config.interface_prefixes]


def _conntrack_rules(config: RenderConfig) -> list[str]:
    return [
        *drop_rules(config, "ct state invalid"),
        "ct state established,related accept",
    ]


def _base(name: str, rules: list[str], versions: Sequence[int]) -> Chain:
    if 6 not in versions:
        # IPv6 off: the iptables backend writes no ip6tables rules, so IPv6 is the host's.
        rules = ["meta nfproto ipv6 accept", *rules]
    return Chain(tuple(rules), n.BASE_CHAINS[name])


def _input(config: RenderConfig, versions: Sequence[int]) -> dict[str, Chain]:
    rules = [join(mark_is_set(config.mark_accept), "accept"), *_conntrack_rules(config)]
    rules += [f"iifname {w} goto {n.WORKLOAD_TO_HOST}" for w in _wildcards(config)]
    rules.append(f"goto {n.FROM_HOST_IF}")
    # From here on (felix-WL-TO-HOST): packets from workloads to the host.
    to_host = [f"icmpv6 type {t} accept" for t in ICMPV6_HOST_TYPES if 6 in versions]
    if config.metadata_addr:
        to_host.append(
            f"ip daddr {config.metadata_addr} meta l4proto 6 th dport {config.metadata_port} accept"
        )
    for v in versions:
        sport, dport = DHCP_PORTS[v]
        to_host.append(
            f"{FAMILY_MATCH[v]} meta l4proto 17 th sport {sport} th dport {dport} accept"
        )
    to_host.append("meta l4proto 17 th dport 53 accept")
    action = config.default_endpoint_to_host_action
    if action != "DROP":
        to_host.append(f"jump {n.FROM_ENDPOINT}")  # workload egress policy first
    if action == "DROP":
        to_host += drop_rules(config, comment_text="Drop all packets from endpoints to the host")
    elif action == "ACCEPT":
        to_host.append("accept")
    # RETURN: fall off the end; the base chain's policy accepts, and the host's own rules (the
    # iptables-nft INPUT chain, after this one) decide.
    return {n.INPUT: _base(n.INPUT, rules, versions), n.WORKLOAD_TO_HOST: Chain(tuple(to_host))}


def _output(config: RenderConfig, versions: Sequence[int]) -> Chain:
    rules = [join(mark_is_set(config.mark_accept), "accept"), *_conntrack_rules(config)]
    rules += [f"oifname {w} accept" for w in _wildcards(config)]  # host -> workload: not policed
    rules.append(f"goto {n.TO_HOST_IF}")
    return _base(n.OUTPUT, rules, versions)


def _forward(config: RenderConfig, versions: Sequence[int]) -> dict[str, Chain]:
    """Forwarded traffic, in two base chains one after the other: the source's policy
    (workload egress, or host-endpoint ingress), then the destination's. A policy's allow
    accepts, which ends only its own base chain. Which policies apply is the iptables
    backend's felix-FORWARD: a workload's traffic gets its endpoints' policy and never
    host-endpoint policy; traffic between host interfaces gets both host endpoints'."""
    first = [join(mark_is_set(config.mark_accept), "ct state untracked accept")]
    first += _conntrack_rules(config)
    source, destination = list(first), list(first)
    for w in _wildcards(config):
        source += [f"iifname {w} jump {n.FROM_ENDPOINT}", f"iifname {w} accept"]
        destination += [f"oifname {w} jump {n.TO_ENDPOINT}", f"oifname {w} accept"]
    for w in _wildcards(config):
        source.append(f"oifname {w} accept")  # to a workload: only its own policy applies
        destination.append(f"iifname {w} accept")  # from a workload: only its own policy
    source.append(f"jump {n.FROM_HOST_IF}")
    destination.append(f"jump {n.TO_HOST_IF}")
    return {
        n.FORWARD: _base(n.FORWARD, source, versions),
        n.FORWARD_TO: _base(n.FORWARD_TO, destination, versions),
    }


def _dispatch(config: RenderConfig) -> dict[str, Chain]:
    """Chains that look an interface up in a verdict map: an unknown workload interface is
    dropped, an unknown host interface returns to the host's rules."""
    unknown = "return"
    return {
        n.FROM_ENDPOINT: Chain(
            (
                f"iifname vmap @{n.MAP_FROM_WORKLOAD}",
                *drop_rules(config, comment_text="From unknown endpoint"),
            )
        ),
        n.TO_ENDPOINT: Chain(
            (
                f"oifname vmap @{n.MAP_TO_WORKLOAD}",
                *drop_rules(config, comment_text="To unknown endpoint"),
            )
        ),
        n.FROM_HOST_IF: Chain((f"iifname vmap @{n.MAP_FROM_HOST}", unknown)),
        n.TO_HOST_IF: Chain((f"oifname vmap @{n.MAP_TO_HOST}", unknown)),
        n.RAW_FROM_HOST_IF: Chain((f"iifname vmap @{n.MAP_RAW_FROM_HOST}", unknown)),
        n.RAW_TO_HOST_IF: Chain((f"oifname vmap @{n.MAP_RAW_TO_HOST}", unknown)),
    }


def _raw(config: RenderConfig, versions: Sequence[int]) -> dict[str, Chain]:
    """Untracked host-endpoint policy, and for IPv6 the reverse-path (anti-spoofing) check on
    workload interfaces (strict: the source must be routed back out of the interface)."""
    prerouting: list[str] = []
    if 6 in versions:
        for w in _wildcards(config):
            prerouting += drop_rules(
                config,
                f"meta nfproto ipv6 iifname {w} fib saddr . iif oif missing",
                "Drop IPv6 spoofed packets",
            )
    prerouting.append(clear_mark(config.mark_accept))
    prerouting += [f"iifname {w} return" for w in _wildcards(config)]
    prerouting.append(f"goto {n.RAW_FROM_HOST_IF}")
    output = [clear_mark(config.mark_accept)]
    output += [f"oifname {w} return" for w in _wildcards(config)]
    output.append(f"goto {n.RAW_TO_HOST_IF}")
    return {
        n.RAW_PREROUTING: _base(n.RAW_PREROUTING, prerouting, versions),
        n.RAW_OUTPUT: _base(n.RAW_OUTPUT, output, versions),
    }


def _failsafe(config: RenderConfig) -> dict[str, Chain]:
    """TCP to these destination ports always passes host endpoints (filter and raw hooks)."""
    return {
        n.FAILSAFE_IN: Chain(
            tuple(f"meta l4proto 6 th dport {p} accept" for p in config.failsafe_inbound_ports)
        ),
        n.FAILSAFE_OUT: Chain(
            tuple(f"meta l4proto 6 th dport {p} accept" for p in config.failsafe_outbound_ports)
        ),
    }


def static_chains(config: RenderConfig, versions: Sequence[int]) -> Rendered:
    """The filter and raw base chains, their helpers and the (empty) maps they look up; the
    maps' elements are the dispatch's (endpoints.dispatch_maps, host_dispatch_maps)."""
    chains = {
        **_input(config, versions),
        n.OUTPUT: _output(config, versions),
        **_forward(config, versions),
        **_dispatch(config),
        **_raw(config, versions),
        **_failsafe(config),
    }
    return Rendered(chains)


def _host_net(ip: str) -> str:
    return f"{ip}/{32 if net_version(ip) == 4 else 128}"


def _snat_mappings(pairs: Sequence[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """One (int, ext) per internal IP: the first mapping wins after a stable sort by int IP."""
    seen: set[str] = set()

    def order(pair: tuple[str, str]) -> tuple[int, int]:
        address = ipaddress.ip_address(pair[0])
        return address.version, int(address)

    for int_ip, ext_ip in sorted(pairs, key=order):
        if int_ip not in seen:
            seen.add(int_ip)
            yield int_ip, ext_ip


def nat_chains(
    config: RenderConfig,
    versions: Sequence[int],
    floating_ips: Iterable[tuple[str, str]] = (),
    masquerade_enabled: bool = False,
) -> Rendered:
    """The NAT base chains (§5.8). `floating_ips` are (int_ip, ext_ip) pairs of all local
    endpoints, of both families. Masquerade (IPv4 only) covers traffic from the masquerade
    pools to anywhere outside all pools."""
    pairs = [(i, e) for i, e in dict.fromkeys(floating_ips) if net_version(i) in versions]
    prerouting = [f"jump {n.FIP_DNAT}"]
    postrouting = [f"jump {n.FIP_SNAT}"]
    if config.metadata_addr:
        prerouting.append(
            f"ip daddr {METADATA_IP} meta l4proto 6 th dport 80 dnat ip to "
            f"{config.metadata_addr}:{config.metadata_port}"
        )
    if masquerade_enabled:
        postrouting.append(f"ip saddr @{n.POOLS_MASQ} ip daddr != @{n.POOLS_ALL} masquerade")

    def dnat(i: str, e: str) -> str:
        kw = ADDR_KEYWORD[net_version(i)]
        return f"{kw} daddr {_host_net(e)} dnat {_NEXTHDR[net_version(i)]} to {i}"

    def snat(i: str, e: str) -> str:
        kw = ADDR_KEYWORD[net_version(i)]
        host = _host_net(i)
        return f"{kw} saddr {host} {kw} daddr {host} snat {_NEXTHDR[net_version(i)]} to {e}"

    chains = {
        n.NAT_PREROUTING: _base(n.NAT_PREROUTING, prerouting, versions),
        n.NAT_OUTPUT: _base(n.NAT_OUTPUT, [f"jump {n.FIP_DNAT}"], versions),
        n.NAT_POSTROUTING: _base(n.NAT_POSTROUTING, postrouting, versions),
        n.FIP_DNAT: Chain(tuple(dnat(i, e) for i, e in pairs)),
        n.FIP_SNAT: Chain(tuple(snat(i, e) for i, e in _snat_mappings(pairs))),
    }
    return Rendered(chains)


def pool_sets(pools: Iterable[IPPool]) -> Rendered:
    """``felix-all-ipam-pools`` and ``felix-masq-ipam-pools`` (IPv4 pools; interval sets)."""
    v4 = [p for p in pools if net_version(p.cidr) == 4]
    return Rendered(
        sets={
            n.POOLS_ALL: (NET_SET, frozenset(_net(p.cidr) for p in v4)),
            n.POOLS_MASQ: (NET_SET, frozenset(_net(p.cidr) for p in v4 if p.masquerade)),
        }
    )


def _net(cidr: str) -> str:
    net = ipaddress.ip_network(cidr, strict=False)
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
