"""`parse_*(raw_json, key)` for every kind of value Felix reads: endpoints, profiles, tiers,
policies, pools. Pure."""

from __future__ import annotations

from typing import Any

from calico.common.datamodel_v1 import (
    POOL_ID_RE,
    HostEndpointKey,
    IPPoolKey,
    PolicyKey,
    ProfileLabelsKey,
    ProfileRulesKey,
    ProfileTagsKey,
    TierMetadataKey,
    WorkloadEndpointKey,
    valid_id,
)
from calico.common.quoting import quoted
from calico.common.resources.checks import (
    canonicalise_mac,
    check_ids,
    check_interface_name,
    check_ip,
    check_ip_list,
    check_key_id,
    check_labels,
    check_order,
    check_selector,
    decode_json,
    decode_object,
    describe,
    endpoint_net,
    rule_net,
    validate_selector,
)
from calico.common.resources.rules import check_rules
from calico.common.resources.values import (
    EMPTY_LABELS,
    HOST_ONLY_FIELDS,
    WORKLOAD_ONLY_FIELDS,
    HostEndpoint,
    InvalidValue,
    IPPool,
    Labels,
    NatMapping,
    Policy,
    ProfileRules,
    SelectorValidator,
    TierMetadata,
    WorkloadEndpoint,
)

# --- Endpoints ---------------------------------------------------------------------------------


def _profile_ids(data: dict[str, Any], errs: list[str]) -> tuple[str, ...]:
    value = data.get("profile_ids")
    if value is None and data.get("profile_id") is not None:
        value = [data["profile_id"]]  # legacy single profile
    return () if value is None else check_ids(value, "profile_ids", errs)


def _nat(
    value: object, version: int, nets: tuple[str, ...], field: str, errs: list[str]
) -> tuple[NatMapping, ...]:
    if not isinstance(value, list):
        errs.append(f"{field}: expected a list, got {type(value).__name__}")
        return ()
    host_len = 32 if version == 4 else 128
    out: list[NatMapping] = []
    for i, item in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            errs.append(f"{where}: expected an object with int_ip and ext_ip")
            continue
        if item.get("int_ip") is None or item.get("ext_ip") is None:
            errs.append(f"{where}: both int_ip and ext_ip are required")
            continue
        int_ip = check_ip(item["int_ip"], version, f"{where}.int_ip", errs)
        ext_ip = check_ip(item["ext_ip"], version, f"{where}.ext_ip", errs)
        if int_ip is not None and f"{int_ip}/{host_len}" not in nets:
            errs.append(f"{where}: int_ip {int_ip} is not in ipv{version}_nets as /{host_len}")
        elif int_ip is not None and ext_ip is not None:
            out.append(NatMapping(int_ip, ext_ip))
    return tuple(out)


def parse_workload_endpoint(raw_json: str, key: WorkloadEndpointKey) -> WorkloadEndpoint:
    """Validate a workload endpoint (§2.2). Unknown fields are ignored."""
    what = describe("workload endpoint", key)
    data = decode_object(raw_json, what)
    errs: list[str] = []
    check_key_id(key.endpoint, "endpoint ID", errs)

    state = data.get("state")
    if state not in ("active", "inactive"):
        errs.append(f"state: {'missing' if state is None else repr(state)} (need active/inactive)")
    name = data.get("name")
    if name is None:
        errs.append("name: missing")
    else:
        check_interface_name(name, errs)
    mac = data.get("mac")
    if mac is not None:
        canonical = canonicalise_mac(mac) if isinstance(mac, str) else None
        if canonical is None:
            errs.append(f"mac: invalid MAC address {quoted(mac)}")
        mac = canonical
    profile_ids = _profile_ids(data, errs)

    nets: dict[int, tuple[str, ...]] = {}
    gateways: dict[int, str | None] = {}
    nats: dict[int, tuple[NatMapping, ...]] = {}
    for version in (4, 6):
        field = f"ipv{version}_nets"
        value = data.get(field)
        if value is None:
            nets[version] = ()
        elif not isinstance(value, list):
            errs.append(f"{field}: expected a list, got {type(value).__name__}")
            nets[version] = ()
        else:
            checked = [endpoint_net(v, version, f"{field}[{i}]", errs) for i, v in enumerate(value)]
            nets[version] = tuple(n for n in checked if n is not None)
        field = f"ipv{version}_gateway"
        gateways[version] = (
            None if data.get(field) is None else check_ip(data[field], version, field, errs)
        )
        field = f"ipv{version}_nat"
        nats[version] = (
            ()
            if data.get(field) is None
            else _nat(data[field], version, nets[version], field, errs)
        )
    for field in HOST_ONLY_FIELDS:
        if field in data:
            errs.append(f"{field}: not allowed on a workload endpoint")
    labels = (
        EMPTY_LABELS if data.get("labels") is None else check_labels(data["labels"], "labels", errs)
    )

    if errs:
        raise InvalidValue(what, errs)
    return WorkloadEndpoint(
        state=str(state),
        name=str(name),
        mac=mac,
        profile_ids=profile_ids,
        ipv4_nets=nets[4],
        ipv6_nets=nets[6],
        ipv4_gateway=gateways[4],
        ipv6_gateway=gateways[6],
        ipv4_nat=nats[4],
        ipv6_nat=nats[6],
        labels=labels,
    )


def parse_host_endpoint(raw_json: str, key: HostEndpointKey) -> HostEndpoint:
    """Validate a host endpoint (§2.3). Unknown fields are ignored."""
    what = describe("host endpoint", key)
    data = decode_object(raw_json, what)
    errs: list[str] = []
    check_key_id(key.endpoint, "endpoint ID", errs)

    name = data.get("name")
    if name is not None:
        check_interface_name(name, errs)
    expected: dict[int, tuple[str, ...]] = {}
    for version in (4, 6):
        field = f"expected_ipv{version}_addrs"
        expected[version] = (
            () if data.get(field) is None else check_ip_list(data[field], version, field, errs)
        )
    if name is None and not data.get("expected_ipv4_addrs") and not data.get("expected_ipv6_addrs"):
        errs.append("need 'name' or at least one expected IP address")
    for field in WORKLOAD_ONLY_FIELDS:
        if field in data:
            errs.append(f"{field}: not allowed on a host endpoint")
    profile_ids = _profile_ids(data, errs)
    labels = (
        EMPTY_LABELS if data.get("labels") is None else check_labels(data["labels"], "labels", errs)
    )

    if errs:
        raise InvalidValue(what, errs)
    return HostEndpoint(
        name=name,
        expected_ipv4_addrs=expected[4],
        expected_ipv6_addrs=expected[6],
        profile_ids=profile_ids,
        labels=labels,
    )


# --- Profiles, tiers, policies, pools ------------------------------------------------------------


def parse_profile_rules(
    raw_json: str,
    key: ProfileRulesKey,
    selector_validator: SelectorValidator | None = validate_selector,
) -> ProfileRules:
    """Validate a profile's rules; a missing list means no rules. Any bad rule fails it all."""
    what = describe("profile rules", key)
    data = decode_object(raw_json, what)
    errs: list[str] = []
    check_key_id(key.profile, "profile ID", errs)
    validator = selector_validator
    inbound = check_rules(data, "inbound_rules", errs, validator)
    outbound = check_rules(data, "outbound_rules", errs, validator)
    if errs:
        raise InvalidValue(what, errs)
    return ProfileRules(inbound, outbound)


def parse_profile_tags(raw_json: str, key: ProfileTagsKey) -> tuple[str, ...]:
    """Validate a profile's tags: a JSON list of tag names."""
    what = describe("profile tags", key)
    data = decode_json(raw_json, what)
    errs: list[str] = []
    check_key_id(key.profile, "profile ID", errs)
    tags = check_ids(data, "tags", errs)
    if errs:
        raise InvalidValue(what, errs)
    return tags


def parse_profile_labels(raw_json: str, key: ProfileLabelsKey) -> Labels:
    """Validate a profile's labels: a JSON object of label name -> string value."""
    what = describe("profile labels", key)
    data = decode_json(raw_json, what)
    errs: list[str] = []
    check_key_id(key.profile, "profile ID", errs)
    labels = check_labels(data, "labels", errs)
    if errs:
        raise InvalidValue(what, errs)
    return labels


def parse_tier_metadata(raw_json: str, key: TierMetadataKey) -> TierMetadata:
    what = describe("tier metadata", key)
    data = decode_object(raw_json, what)
    errs: list[str] = []
    check_key_id(key.tier, "tier name", errs)
    order = check_order(data.get("order"), errs)
    if errs:
        raise InvalidValue(what, errs)
    return TierMetadata(order)


def parse_policy(
    raw_json: str, key: PolicyKey, selector_validator: SelectorValidator | None = validate_selector
) -> Policy:
    """Validate a policy (§2.5): selector required; any bad rule fails the whole policy."""
    what = describe("policy", key)
    data = decode_object(raw_json, what)
    errs: list[str] = []
    check_key_id(key.tier, "tier name", errs)
    check_key_id(key.policy, "policy ID", errs)
    validator = selector_validator
    selector = data.get("selector")
    if selector is None:
        errs.append("selector: missing")
    elif not isinstance(selector, str):
        errs.append(f"selector: expected a string, got {quoted(selector)}")
    elif (problem := check_selector(selector, validator)) is not None:
        errs.append(f"selector: {problem}")
    order = check_order(data.get("order"), errs)
    inbound = check_rules(data, "inbound_rules", errs, validator)
    outbound = check_rules(data, "outbound_rules", errs, validator)
    untracked = data.get("untracked")
    if untracked is not None and not isinstance(untracked, bool):
        errs.append(f"untracked: expected a boolean, got {quoted(untracked)}")
    if errs:
        raise InvalidValue(what, errs)
    return Policy(str(selector), order, inbound, outbound, bool(untracked))


def parse_ip_pool(raw_json: str, key: IPPoolKey) -> IPPool:
    """Validate an IPAM pool (§2.7); only cidr and masquerade are kept."""
    what = describe("IP pool", key)
    data = decode_object(raw_json, what)
    errs: list[str] = []
    if not valid_id(key.pool_id, POOL_ID_RE):
        errs.append(f"key pool ID {quoted(key.pool_id)} is invalid (need [0-9.:a-fA-F-]{{1,43}})")
    cidr: str | None = None
    if data.get("cidr") is None:
        errs.append("cidr: missing")
    else:
        cidr = rule_net(data["cidr"], key.version, "cidr", errs)
    masquerade = data.get("masquerade", False)
    if masquerade is None:
        masquerade = False
    elif not isinstance(masquerade, bool):
        errs.append(f"masquerade: expected a boolean, got {quoted(masquerade)}")
    if errs:
        raise InvalidValue(what, errs)
    return IPPool(str(cidr), masquerade)
