"""A flow from SRC to DST, explained: find the endpoints (by ID, workload or address; an address
outside every endpoint is an external host), build the first packet, and walk it through the
source's egress chains (on the source's host) and then the destination's ingress chains (on the
destination's host), each computed by that host's own calc graph and renderer."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from calico.common import datamodel_v1 as dm
from calico.common import protocols
from calico.common import resources as res
from calico.common.selectors import parse_selector, tag_id
from calico.ctl.errors import Invalid, NotFound
from calico.ctl.explain import chains, trace
from calico.ctl.explain.iptables import Packet
from calico.ctl.explain.model import EndpointRecord, HostView, Snapshot
from calico.felix.calc import messages as m
from calico.felix.dataplane import names
from calico.felix.dataplane.rendering import drop_rules

ECHO_REQUEST = {4: (8, 0), 6: (128, 0)}
WorkloadKey = dm.WorkloadEndpointKey


@dataclass(frozen=True)
class Party:
    """One end of the flow: a workload endpoint (record) or an external address."""

    given: str
    address: str
    record: EndpointRecord | None = None

    @property
    def label(self) -> str:
        if self.record is None:
            return f"external host {self.address}"
        key = self.record.key
        assert isinstance(key, WorkloadKey)
        return f"workload endpoint {key.hostname}/{key.orchestrator}/{key.workload}/{key.endpoint}"

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"given": self.given, "address": self.address}
        if self.record is not None:
            out["endpoint"] = self.record.key.path
        return out


@dataclass
class Explanation:
    packet: Packet
    source: Party
    destination: Party
    legs: list[trace.Leg] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        allowed = all(leg.verdict == trace.ALLOW for leg in self.legs)
        return trace.ALLOW if allowed else trace.DENY

    def as_json(self) -> dict[str, Any]:
        p = self.packet
        packet = {k: v for k, v in p.__dict__.items() if v is not None and k != "src_mac"}
        return {
            "packet": packet,
            "source": self.source.as_json(),
            "destination": self.destination.as_json(),
            "legs": [leg.as_json() for leg in self.legs],
            "notes": self.notes,
            "verdict": self.verdict,
        }


# --- Finding the endpoints ------------------------------------------------------------------


def _names(key: dm.WorkloadEndpointKey | dm.HostEndpointKey) -> set[str]:
    if isinstance(key, dm.HostEndpointKey):
        return {key.path, f"{key.hostname}/{key.endpoint}", key.endpoint}
    return {
        key.path,
        f"{key.hostname}/{key.orchestrator}/{key.workload}/{key.endpoint}",
        f"{key.orchestrator}/{key.workload}/{key.endpoint}",
        f"{key.workload}/{key.endpoint}",
        key.endpoint,
        key.workload,
    }


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return "%" not in text


def find(snapshot: Snapshot, text: str) -> EndpointRecord | None:
    """The endpoint `text` names (None: an address outside every endpoint)."""
    if _is_address(text):
        address = str(ipaddress.ip_address(text))
        found = snapshot.by_address(address)
    else:
        found = [r for r in snapshot.endpoints if text in _names(r.key)]
        if not found:
            raise NotFound(f"no endpoint is named {text!r} (give an endpoint ID, workload or IP)")
    if len(found) > 1:
        listed = ", ".join(r.key.path for r in found[:5])
        raise Invalid(f"{text!r} names {len(found)} endpoints ({listed}): give the endpoint ID")
    if found and isinstance(found[0].key, dm.HostEndpointKey):
        raise Invalid(
            f"{text!r} is host endpoint {found[0].key.path}: explain traces workload endpoints "
            "and external addresses"
        )
    return found[0] if found else None


def _address(record: EndpointRecord, version: int) -> str:
    addresses = record.addresses(version)
    if not addresses:
        raise Invalid(f"{record.key.path} has no IPv{version} address")
    return addresses[0]


def parties(snapshot: Snapshot, src: str, dst: str, ipv6: bool) -> tuple[Party, Party, int]:
    given = [ipaddress.ip_address(t).version for t in (src, dst) if _is_address(t)]
    if len(set(given)) > 1:
        raise Invalid("SRC and DST are addresses of different IP versions")
    version = given[0] if given else (6 if ipv6 else 4)
    out = []
    for text in (src, dst):
        record = find(snapshot, text)
        if record is None:
            out.append(Party(text, str(ipaddress.ip_address(text))))
        else:
            address = str(ipaddress.ip_address(text)) if _is_address(text) else None
            out.append(Party(text, address or _address(record, version), record))
    if out[0].record is None and out[1].record is None:
        raise Invalid("neither SRC nor DST is a workload endpoint: Calico polices neither end")
    return out[0], out[1], version


def make_packet(
    source: Party,
    destination: Party,
    version: int,
    protocol: str,
    port: int | None,
    src_port: int | None,
    icmp_type: int | None,
    icmp_code: int | None,
) -> Packet:
    number = protocols.number(protocol.lower())
    if number is None or not 1 <= number <= 255:
        raise Invalid(f"--protocol: unknown protocol {protocol!r} (a name or 1-255)")
    if number == protocols.ICMP and version == 6:
        number = protocols.ICMPV6  # "icmp" between IPv6 addresses is ICMPv6
    is_icmp = number in (protocols.ICMP, protocols.ICMPV6)
    if (port is not None or src_port is not None) and not protocols.has_ports(str(number)):
        raise Invalid(f"--port/--src-port: protocol {protocol} has no ports")
    if (icmp_type is not None or icmp_code is not None) and not is_icmp:
        raise Invalid("--icmp-type/--icmp-code need --protocol icmp (or icmpv6)")
    if is_icmp and icmp_type is None:
        icmp_type, default_code = ECHO_REQUEST[version]
        icmp_code = default_code if icmp_code is None else icmp_code
    mac = None
    if source.record is not None and isinstance(source.record.endpoint, res.WorkloadEndpoint):
        mac = source.record.endpoint.mac
    return Packet(
        version,
        number,
        source.address,
        destination.address,
        src_port,
        port,
        icmp_type if is_icmp else None,
        icmp_code if is_icmp else None,
        mac,
    )


# --- The legs ---------------------------------------------------------------------------------


def explain(snapshot: Snapshot, source: Party, destination: Party, packet: Packet) -> Explanation:
    result = Explanation(packet, source, destination)
    if source.record is not None:
        result.legs.append(_leg(snapshot, source.record, "egress", packet))
    if destination.record is not None:
        result.legs.append(_leg(snapshot, destination.record, "ingress", packet))
    if source.record is None:
        result.notes.append("the source is outside every endpoint: only the ingress side applies")
    if destination.record is None:
        result.notes.append(
            "the destination is outside every endpoint: only the egress side applies"
        )
    return result


def _leg(snapshot: Snapshot, record: EndpointRecord, direction: str, packet: Packet) -> trace.Leg:
    key = record.key
    assert isinstance(key, WorkloadKey)
    view = snapshot.view(key.hostname)
    inbound = direction == "ingress"
    leg = trace.Leg(direction, key.path, key.hostname)
    override = view.render.drop_action_override
    if override != "DROP":
        leg.notes.append(f"DropActionOverride={override} on host {key.hostname}")
    leg.notes += [f"host {key.hostname}: configuration problem: {p}" for p in view.problems]
    update = view.state.workload_endpoints.get(key)
    if update is None:
        return _no_chains(leg, view, inbound, _invalid_reason(record, view))
    owner = view.workloads.owner(update.endpoint.name)
    if owner is not None and owner.id != key:
        leg.notes.append(
            f"interface {update.endpoint.name} is also named by {owner.id.path}, which owns it "
            "(the first in key order): its chains apply and this endpoint reports error"
        )
        update = owner
    if not update.endpoint.active:
        return _no_chains(leg, view, inbound, "inactive: Felix programs no chains and no route")
    leg.notes += _ignored_policies(snapshot, update)
    written = _written_rules(snapshot, update)
    table = chains.endpoint_table(
        update,
        inbound,
        packet.ip_version,
        view.render,
        view.state.policies,
        view.state.profiles,
        written,
    )
    labels = _set_labels(written, packet.ip_version)
    trace.run_leg(leg, table, _ipsets(view, packet.ip_version), packet, labels)
    return leg


def _no_chains(leg: trace.Leg, view: HostView, inbound: bool, why: str) -> trace.Leg:
    if inbound:
        leg.verdict, leg.reason = trace.DENY, f"{why}: the packet is not delivered to it"
        return leg
    # Its interface is not in the dispatch chain: "From unknown endpoint" (DropActionOverride
    # applies to that drop like to every other).
    accepted = any("-j ACCEPT" in line for line in drop_rules(view.render))
    leg.verdict = trace.ALLOW if accepted else trace.DENY
    leg.reason = f"{why}: the dispatch chain drops its packets as from an unknown endpoint"
    if accepted:
        leg.reason += ", but DropActionOverride accepts them"
    return leg


def _invalid_reason(record: EndpointRecord, view: HostView) -> str:
    if record.problem is not None:
        return f"invalid, so Felix treats it as deleted ({record.problem})"
    endpoint = record.endpoint
    if isinstance(endpoint, res.WorkloadEndpoint) and not endpoint.name.startswith(view.prefixes):
        prefixes = ",".join(view.prefixes)
        return (
            f"its interface {endpoint.name} does not start with InterfacePrefix ({prefixes}) "
            f"on host {view.hostname}, so Felix treats it as deleted"
        )
    return "not programmed by Felix"


def _ignored_policies(snapshot: Snapshot, update: m.WorkloadEndpointUpdate) -> list[str]:
    """Policies whose selector matches the endpoint but that Felix does not apply to it: their
    tier has no metadata, or they are untracked (host endpoints only)."""
    labels: dict[str, str] = {}
    for profile_id in update.endpoint.profile_ids:
        labels_key = dm.ProfileLabelsKey(profile_id)
        raw = snapshot.items.get(labels_key.path)
        try:
            labels.update(res.parse_profile_labels(raw, labels_key) if raw is not None else {})
        except res.InvalidValue:
            continue
    labels.update(update.endpoint.labels)
    notes = []
    for path in sorted(snapshot.items):
        key = dm.parse_key(path)
        if not isinstance(key, dm.PolicyKey):
            continue
        try:
            policy = res.parse_policy(snapshot.items[path], key)
        except res.InvalidValue:
            continue
        if not parse_selector(policy.selector).evaluate(labels):
            continue
        name = f"{key.tier}/{key.policy}"
        if dm.TierMetadataKey(key.tier).path not in snapshot.items:
            notes.append(f"policy {name} matches, but tier {key.tier} has no metadata: ignored")
        elif policy.untracked:
            notes.append(f"policy {name} matches, but it is untracked: host endpoints only")
    return notes


def _ipsets(view: HostView, version: int) -> dict[str, frozenset[str]]:
    return {
        names.ipset_name(set_id, version): frozenset(
            a for a in members if ipaddress.ip_address(a).version == version
        )
        for set_id, members in view.state.ip_sets.items()
    }


def _set_labels(
    written: dict[str, tuple[tuple[res.Rule, ...], tuple[res.Rule, ...]]], version: int
) -> dict[str, str]:
    """Kernel IP-set name -> what it holds ("tag web", 'selector "role == 'db'"').'"""
    labels: dict[str, str] = {}
    for inbound, outbound in written.values():
        for rule in inbound + outbound:
            for tag in (rule.src_tag, rule.not_src_tag, rule.dst_tag, rule.not_dst_tag):
                if tag is not None:
                    labels[names.ipset_name(tag_id(tag), version)] = f"tag {tag}"
            for text in (
                rule.src_selector,
                rule.not_src_selector,
                rule.dst_selector,
                rule.not_dst_selector,
            ):
                if text is not None:
                    set_id = parse_selector(text).unique_id
                    labels[names.ipset_name(set_id, version)] = f'selector "{text}"'
    return labels


def _written_rules(
    snapshot: Snapshot, update: m.WorkloadEndpointUpdate
) -> dict[str, tuple[tuple[res.Rule, ...], tuple[res.Rule, ...]]]:
    """The rules as stored, for the descriptions (the messages carry IP-set IDs instead of
    tags and selectors)."""
    out: dict[str, tuple[tuple[res.Rule, ...], tuple[res.Rule, ...]]] = {}
    for tier in update.tiers:
        for policy in tier.policies:
            key = dm.PolicyKey(tier.name, policy)
            raw = snapshot.items.get(key.path)
            try:
                parsed = res.parse_policy(raw, key) if raw is not None else None
            except res.InvalidValue:
                parsed = None
            if parsed is not None:
                out[f"{tier.name}/{policy}"] = (parsed.inbound_rules, parsed.outbound_rules)
    for profile_id in update.endpoint.profile_ids:
        rules_key = dm.ProfileRulesKey(profile_id)
        raw = snapshot.items.get(rules_key.path)
        try:
            rules = res.parse_profile_rules(raw, rules_key) if raw is not None else None
        except res.InvalidValue:
            rules = None
        if rules is not None:
            out[profile_id] = (rules.inbound_rules, rules.outbound_rules)
    return out
