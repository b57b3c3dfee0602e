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

from __future__ import annotations

import ipaddress
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from calico.common import protocols
from calico.common.resources import Port
from calico.felix.calc.messages import (
    ActivePolicyUpdate,
    ActiveProfileUpdate,
    HostEndpointUpdate,
    ResolvedRule,
    TierInfo,
    WorkloadEndpointUpdate,
)
from calico.felix.dataplane import names

Chains = dict[str, list[str]]

DROP_ACTIONS = ("DROP", "ACCEPT", "LOG-and-DROP", "LOG-and-ACCEPT")
ENDPOINT_TO_HOST_ACTIONS = ("DROP", "RETURN", "ACCEPT")
SECURITY_DISABLED_COMMENT = "!SECURITY DISABLED! DROP overridden to ACCEPT"
DROP_LOG_PREFIX = "calico-drop: "
DEFAULT_LOG_PREFIX = "calico-packet"
RULE_LOG_LEVEL = 5  # notice, for the log action and rule log prefixes
MAX_COMMENT_LEN = 255
_COMMENT_UNSAFE_RE = re.compile(r"[^A-Za-z0-9 _.,:/()=+@!-]")
MAX_MULTIPORT_ENTRIES = 15  # kernel limit of xt_multiport; a range takes two entries
METADATA_IP = "169.254.169.254"
# ICMPv6 the host must accept from workloads: MLD (130-132), router and neighbour
# solicitation (133, 135) and neighbour advertisement (136).
ICMPV6_HOST_TYPES = (130, 131, 132, 133, 135, 136)
DHCP_PORTS = {4: (68, 67), 6: (546, 547)}  # (client sport, server dport)

_ICMP_PROTOCOL = {4: "icmp", 6: "ipv6-icmp"}  # iptables-save's names (protocols.IPTABLES_NAMES)


class UnrenderableRule(ValueError):
    """A rule the kernel could not load (e.g. ports without a port protocol): fail closed."""


# --- configuration -------------------------------------------------------------------------------


def marks_from_mask(mask: int) -> tuple[int, int, int]:
    """(accept, next-tier, endpoint) marks: the mask's set bits, least significant first (§5.2)."""
    bits = [1 << i for i in range(32) if mask & (1 << i)]
    if len(bits) < 3:
        raise ValueError(f"IptablesMarkMask {mask:#x} has {len(bits)} bits set; Felix needs 3")
    return bits[0], bits[1], bits[2]


@dataclass(frozen=True)
class RenderConfig:
    """Everything the renderer needs from Felix's configuration, already parsed."""

    interface_prefixes: tuple[str, ...] = ("cali",)
    mark_accept: int = 0x1000000
    mark_next_tier: int = 0x2000000
    mark_endpoint: int = 0x4000000
    drop_action_override: str = "DROP"
    default_endpoint_to_host_action: str = "DROP"
    metadata_addr: str | None = "127.0.0.1"  # an IP address; None = no metadata rules
    metadata_port: int = 8775
    failsafe_inbound_ports: tuple[int, ...] = (22,)
    failsafe_outbound_ports: tuple[int, ...] = (2379, 2380, 4001, 7001)

    def __post_init__(self) -> None:
        if self.drop_action_override not in DROP_ACTIONS:
            raise ValueError(f"bad DropActionOverride {self.drop_action_override!r}")
        if self.default_endpoint_to_host_action not in ENDPOINT_TO_HOST_ACTIONS:
            raise ValueError(
                f"bad DefaultEndpointToHostAction {self.default_endpoint_to_host_action!r}"
            )
        if self.metadata_addr is not None:
            # A host name must be resolved by the caller; the DNAT lives in the IPv4 nat table.
            ipaddress.IPv4Address(self.metadata_addr)

    @classmethod
    def from_config(cls, values: Mapping[str, Any]) -> RenderConfig:
        """From parsed parameters (config/params.py names). MetadataAddr must be an IPv4
        address or None here: a host name is resolved by the driver (driver/resolver.py)."""
        accept, next_tier, endpoint = marks_from_mask(values["IptablesMarkMask"])
        return cls(
            interface_prefixes=tuple(values["InterfacePrefix"]),
            mark_accept=accept,
            mark_next_tier=next_tier,
            mark_endpoint=endpoint,
            drop_action_override=values["DropActionOverride"],
            default_endpoint_to_host_action=values["DefaultEndpointToHostAction"],
            metadata_addr=values["MetadataAddr"],
            metadata_port=values["MetadataPort"],
            failsafe_inbound_ports=tuple(values["FailsafeInboundHostPorts"]),
            failsafe_outbound_ports=tuple(values["FailsafeOutboundHostPorts"]),
        )


def is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


# --- small rule builders ---------------------------------------------------------------------


def _join(*parts: str) -> str:
    return " ".join(part for part in parts if part)


def comment(text: str) -> str:
    """A comment match. Comments quote IDs from the datastore, so every character outside a
    small safe set (quotes, backslashes, newlines and other control characters, non-ASCII)
    becomes "_": whatever the text, the comment stays one argument of one rule."""
    clean = _COMMENT_UNSAFE_RE.sub("_", text)[:MAX_COMMENT_LEN]
    return f'-m comment --comment "{clean}"'


def mark_is_set(mark: int) -> str:
    return f"-m mark --mark {mark:#x}/{mark:#x}"


def mark_is_clear(mark: int) -> str:
    return f"-m mark --mark 0x0/{mark:#x}"


def set_mark(mark: int) -> str:
    return f"-j MARK --set-xmark {mark:#x}/{mark:#x}"


def clear_mark(mark: int) -> str:
    return f"-j MARK --set-xmark 0x0/{mark:#x}"


def log_target(prefix: str, level: int = RULE_LOG_LEVEL) -> str:
    # iptables-save omits LOG's default level (4), so we do too.
    level_part = "" if level == 4 else f" --log-level {level}"
    return f'-j LOG --log-prefix "{prefix}"{level_part}'


def drop_rules(config: RenderConfig, match: str = "", comment_text: str | None = None) -> list[str]:
    """The rules for "drop `match`", honouring DropActionOverride (§5.6.1). Every drop Felix
    generates goes through here, so the override covers them all."""
    override = config.drop_action_override
    note = comment(comment_text) if comment_text else ""
    rules = []
    if override.startswith("LOG-"):
        rules.append(_join(match, note, log_target(DROP_LOG_PREFIX, level=4)))
    if override.endswith("ACCEPT"):
        rules.append(_join(match, comment(SECURITY_DISABLED_COMMENT), "-j ACCEPT"))
    else:
        rules.append(_join(match, note, "-j DROP"))
    return rules


# --- rule rendering (§5.6) -------------------------------------------------------------------


def _protocol(proto: str) -> str:
    return protocols.iptables_name(proto)


def _net_version(net: str) -> int:
    return 6 if ":" in net else 4


def _port_entries(port: Port) -> int:
    return 2 if isinstance(port, str) and ":" in port else 1


def chunk_ports(ports: Sequence[Port]) -> list[list[Port]]:
    """Split a port list into multiport-sized chunks (at most 15 entries, a range counting 2)."""
    chunks: list[list[Port]] = []
    used = 0
    for port in ports:
        size = _port_entries(port)
        if not chunks or used + size > MAX_MULTIPORT_ENTRIES:
            chunks.append([])
            used = 0
        chunks[-1].append(port)
        used += size
    return chunks


def _multiport(direction: str, ports: Sequence[Port], negate: bool) -> str:
    flag = "--sports" if direction == "src" else "--dports"
    listed = ",".join(str(port) for port in ports)
    return f"-m multiport {'! ' if negate else ''}{flag} {listed}"


def _icmp(ip_version: int, icmp_type: int, code: int | None, negate: bool) -> str:
    value = f"{icmp_type}" if code is None else f"{icmp_type}/{code}"
    module, flag = ("icmp", "--icmp-type") if ip_version == 4 else ("icmp6", "--icmpv6-type")
    return f"-m {module} {'! ' if negate else ''}{flag} {value}"


def _in_family(rule: ResolvedRule, ip_version: int) -> bool:
    """False if the rule belongs only to the other family's table (§2.6: skip, don't widen)."""
    if rule.ip_version is not None and rule.ip_version != ip_version:
        return False
    nets = (rule.src_net, rule.not_src_net, rule.dst_net, rule.not_dst_net)
    if any(net is not None and _net_version(net) != ip_version for net in nets):
        return False
    other_icmp = _ICMP_PROTOCOL[10 - ip_version]
    return rule.protocol is None or _protocol(rule.protocol) != other_icmp


def _net_matches(flag: str, net: str | None, not_net: str | None) -> tuple[str, str] | None:
    """(basic match, extra match) for one side's nets; None if the rule can never match.

    iptables allows one ``-s``; when both a net and a negated net are given, the negation is
    dropped if disjoint (redundant), and otherwise written as an iprange match."""
    if net is None or not_net is None:
        if net is not None:
            return f"{flag} {net}", ""
        return (f"! {flag} {not_net}", "") if not_net is not None else ("", "")
    pos, neg = ipaddress.ip_network(net), ipaddress.ip_network(not_net)
    if not pos.overlaps(neg):
        return f"{flag} {net}", ""
    if pos.subnet_of(neg):  # type: ignore[arg-type]
        return None
    side = "--src-range" if flag == "-s" else "--dst-range"
    return f"{flag} {net}", f"-m iprange ! {side} {neg[0]}-{neg[-1]}"


def _basic_matches(rule: ResolvedRule) -> tuple[str, str] | None:
    """``-s -d -p`` in iptables-save's order, plus any iprange negations; None = never matches."""
    src = _net_matches("-s", rule.src_net, rule.not_src_net)
    dst = _net_matches("-d", rule.dst_net, rule.not_dst_net)
    if src is None or dst is None:
        return None
    proto = ""
    if rule.protocol is not None:
        if rule.not_protocol is not None and _protocol(rule.not_protocol) == _protocol(
            rule.protocol
        ):
            return None  # "tcp and not tcp"
        proto = f"-p {_protocol(rule.protocol)}"  # a different negated protocol is implied
    elif rule.not_protocol is not None:
        proto = f"! -p {_protocol(rule.not_protocol)}"
    return _join(src[0], dst[0], proto), _join(src[1], dst[1])


def _ipset_matches(ids: Iterable[str], side: str, ip_version: int, negate: bool) -> list[str]:
    bang = "! " if negate else ""
    return [f"-m set {bang}--match-set {names.ipset_name(i, ip_version)} {side}" for i in ids]


def _icmp_matches(rule: ResolvedRule, ip_version: int) -> tuple[str, str]:
    """(positive, negated) ICMP matches; they need the family's ICMP protocol."""
    pos = neg = ""
    if rule.icmp_type is not None:
        pos = _icmp(ip_version, rule.icmp_type, rule.icmp_code, negate=False)
    if rule.not_icmp_type is not None:
        neg = _icmp(ip_version, rule.not_icmp_type, rule.not_icmp_code, negate=True)
    wanted = _ICMP_PROTOCOL[ip_version]
    if (pos or neg) and (rule.protocol is None or _protocol(rule.protocol) != wanted):
        raise UnrenderableRule(f"ICMP type match needs protocol {wanted}")
    return pos, neg


def _port_chunks(ports: tuple[Port, ...] | None) -> list[list[Port]]:
    return chunk_ports(ports) if ports else [[]]


def rule_matches(rule: ResolvedRule, ip_version: int) -> list[str]:
    """The match part of each iptables rule `rule` becomes ([] = skipped in this table).

    Usually one; long positive port lists make one per (src chunk x dst chunk), OR semantics.
    Positive matches come first, then the negated ones (§5.6)."""
    if not _in_family(rule, ip_version):
        return []
    basic = _basic_matches(rule)
    if basic is None:
        return []
    has_ports = rule.src_ports or rule.dst_ports or rule.not_src_ports or rule.not_dst_ports
    if has_ports and not protocols.has_ports(rule.protocol or ""):
        raise UnrenderableRule(f"port match needs a port protocol, not {rule.protocol!r}")
    icmp_pos, icmp_neg = _icmp_matches(rule, ip_version)
    negated = [
        basic[1],
        *_ipset_matches(rule.not_src_ip_set_ids, "src", ip_version, negate=True),
        *_ipset_matches(rule.not_dst_ip_set_ids, "dst", ip_version, negate=True),
        *[_multiport("src", c, True) for c in chunk_ports(rule.not_src_ports or ())],
        *[_multiport("dst", c, True) for c in chunk_ports(rule.not_dst_ports or ())],
        icmp_neg,
    ]
    sets = [
        *_ipset_matches(rule.src_ip_set_ids, "src", ip_version, negate=False),
        *_ipset_matches(rule.dst_ip_set_ids, "dst", ip_version, negate=False),
    ]
    out = []
    for src, dst in itertools.product(_port_chunks(rule.src_ports), _port_chunks(rule.dst_ports)):
        ports = [
            _multiport("src", src, False) if src else "",
            _multiport("dst", dst, False) if dst else "",
        ]
        out.append(_join(basic[0], *sets, *ports, icmp_pos, *(n for n in negated if n)))
    return out


def render_rule(rule: ResolvedRule, ip_version: int, config: RenderConfig) -> list[str]:
    """The iptables rules for one policy/profile rule in the `ip_version` table (§5.6).

    Raises UnrenderableRule for a rule the kernel would reject; `rules_chain` turns that into a
    drop (fail closed)."""
    matches = rule_matches(rule, ip_version)
    if not matches:
        return []
    prefix = f"{rule.log_prefix or DEFAULT_LOG_PREFIX}: "
    if rule.action in ("allow", "next-tier"):
        mark = config.mark_accept if rule.action == "allow" else config.mark_next_tier
        rules = [_join(m, set_mark(mark)) for m in matches]
        if rule.log_prefix:  # log what this rule let through, once, before returning
            rules.append(_join(mark_is_set(mark), log_target(prefix)))
        return [*rules, _join(mark_is_set(mark), "-j RETURN")]
    if rule.action == "deny":
        rules = []
        for match in matches:
            if rule.log_prefix:
                rules.append(_join(match, log_target(prefix)))
            rules += drop_rules(config, match)
        return rules
    if rule.action == "log":
        return [_join(m, log_target(prefix)) for m in matches]
    raise UnrenderableRule(f"unknown action {rule.action!r}")


def rules_chain(rules: Iterable[ResolvedRule], ip_version: int, config: RenderConfig) -> list[str]:
    """A profile/policy chain body: each rule in order; an unrenderable rule becomes a drop."""
    out: list[str] = []
    for rule in rules:
        try:
            out += render_rule(rule, ip_version, config)
        except UnrenderableRule:
            out += drop_rules(config, comment_text="ERROR failed to parse rules")
    return out


def policy_chains(update: ActivePolicyUpdate, ip_version: int, config: RenderConfig) -> Chains:
    """``felix-p-<tier/policy>-i`` and ``-o``. Untracked policies' chains go in the raw table."""
    tier, policy = update.id.tier, update.id.policy
    return {
        names.policy_chain(tier, policy, True): rules_chain(
            update.inbound_rules, ip_version, config
        ),
        names.policy_chain(tier, policy, False): rules_chain(
            update.outbound_rules, ip_version, config
        ),
    }


def profile_chains(update: ActiveProfileUpdate, ip_version: int, config: RenderConfig) -> Chains:
    """``felix-p-<profile>-i`` and ``-o`` (a stand-in profile arrives as deny-all rules)."""
    return {
        names.profile_chain(update.id, True): rules_chain(update.inbound_rules, ip_version, config),
        names.profile_chain(update.id, False): rules_chain(
            update.outbound_rules, ip_version, config
        ),
    }


# --- per-endpoint chains (§5.5) --------------------------------------------------------------


def _tier_rules(tiers: Sequence[TierInfo], inbound: bool, config: RenderConfig) -> list[str]:
    """Each non-empty tier: clear NEXT-TIER, try its policies in order, drop at its end unless a
    policy accepted (returned) or said next-tier."""
    accept, next_tier = config.mark_accept, config.mark_next_tier
    rules: list[str] = []
    for tier in tiers:
        if not tier.policies:
            continue
        rules.append(_join(comment(f"Start of tier {tier.name}"), clear_mark(next_tier)))
        for policy in tier.policies:
            chain = names.policy_chain(tier.name, policy, inbound)
            rules.append(_join(mark_is_clear(next_tier), f"-j {chain}"))
            rules.append(
                _join(mark_is_set(accept), comment("Return if policy accepted"), "-j RETURN")
            )
        rules += drop_rules(config, mark_is_clear(next_tier), "Drop if no policy in tier passed")
    return rules


def _profile_rules(profile_ids: Sequence[str], inbound: bool, config: RenderConfig) -> list[str]:
    rules: list[str] = []
    for profile in profile_ids:
        rules.append(f"-j {names.profile_chain(profile, inbound)}")
        rules.append(
            _join(mark_is_set(config.mark_accept), comment("Profile accepted packet"), "-j RETURN")
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
        rules.append(_join(comment(f"Start of tier {tier.name}"), clear_mark(next_tier)))
        for policy in tier.policies:
            chain = names.policy_chain(tier.name, policy, inbound)
            rules.append(_join(mark_is_clear(next_tier), f"-j {chain}"))
            rules.append(_join(mark_is_set(accept), "-j NOTRACK"))
            rules.append(
                _join(mark_is_set(accept), comment("Return if policy accepted"), "-j RETURN")
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
    target: Callable[[str], str],
    end: list[str],
) -> Chains:
    chains: Chains = {root: []}
    common = _common_prefix(interfaces) if interfaces else ""
    groups: dict[str, list[str]] = {}
    for iface in sorted(interfaces):
        names.check_interface_name(iface)  # it is written into rules below
        groups.setdefault(iface[len(common) : len(common) + 1], []).append(iface)
    for char, members in sorted(groups.items()):
        if len(members) == 1 or not char:  # one interface (or the prefix itself): direct rule
            chains[root] += [f"{flag} {i} -g {target(i)}" for i in members]
            continue
        leaf = names.dispatch_leaf_chain(leaf_prefix, char)
        chains[root].append(f"{flag} {common}{char}+ -g {leaf}")
        chains[leaf] = [f"{flag} {i} -g {target(i)}" for i in members] + end
    chains[root] += end
    return chains


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
        ends = [[_join(comment("Unknown interface, return"), "-j RETURN")]] * 2
    else:
        prefixes = config.interface_prefixes
        roots = (names.CHAIN_FROM_ENDPOINT, names.CHAIN_TO_ENDPOINT)
        leaves = (names.CHAIN_FROM_EP_LEAF_PREFIX, names.CHAIN_TO_EP_LEAF_PREFIX)
        ends = [drop_rules(config, comment_text=f"{d} unknown endpoint") for d in ("From", "To")]
    chains = _dispatch_tree(
        ifaces,
        roots[0],
        leaves[0],
        "-i",
        lambda i: names.endpoint_chain("from", i, prefixes),
        ends[0],
    )
    chains.update(
        _dispatch_tree(
            ifaces,
            roots[1],
            leaves[1],
            "-o",
            lambda i: names.endpoint_chain("to", i, prefixes),
            ends[1],
        )
    )
    return chains


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
    rules = [_join(mark_is_set(config.mark_accept), "-j ACCEPT")]
    rules += _conntrack_rules(config)
    rules += _mark_workload_traffic("-i", config)
    rules.append(_join(mark_is_clear(config.mark_endpoint), f"-g {names.CHAIN_FROM_HOST_IF}"))
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
        _join(mark_is_set(config.mark_accept), "-j ACCEPT"),
        *_conntrack_rules(config),
        *_mark_workload_traffic("-o", config),
        _join(mark_is_clear(config.mark_endpoint), f"-g {names.CHAIN_TO_HOST_IF}"),
    ]


def _forward_chain(config: RenderConfig) -> list[str]:
    prefixes = config.interface_prefixes
    rules = [_join(mark_is_set(config.mark_accept), "-m conntrack --ctstate UNTRACKED -j ACCEPT")]
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
    prerouting.append(_join(mark_is_clear(ep), f"-g {names.CHAIN_FROM_HOST_IF}"))
    output = [clear_mark(accept), *_mark_workload_traffic("-o", config)]
    output.append(_join(mark_is_clear(ep), f"-g {names.CHAIN_TO_HOST_IF}"))
    chains[names.CHAIN_PREROUTING] = prerouting
    chains[names.CHAIN_OUTPUT] = output
    chains.update(failsafe_chains(config))
    return chains


def _host_net(ip: str) -> str:
    return f"{ip}/{32 if _net_version(ip) == 4 else 128}"


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
    pairs = [(i, e) for i, e in dict.fromkeys(floating_ips) if _net_version(i) == ip_version]
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
