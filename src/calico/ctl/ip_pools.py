"""IP pools (felix.md §2.7): `/calico/v1/ipam/v<4|6>/pool/<cidr with / as ->` =
`{"cidr": ..., "masquerade": bool, "disabled": bool}`. metadata.name is the pool's CIDR in
canonical form; spec.cidr, when given, must be the same. Felix reads `cidr` and `masquerade`
(outgoing NAT from the pool); `disabled` (no new addresses from the pool), `ipam` and `ipip` are
kept for the other readers of the pool keys and checked for their type."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from calico.common import datamodel_v1 as dm
from calico.common import resources as res
from calico.common.quoting import quoted
from calico.ctl.kinds import (
    Column,
    Filters,
    Kind,
    Resource,
    SpecError,
    check_fields,
    decode,
    dumps,
    meta_column,
    spec_column,
)

BOOLEAN_FIELDS = ("masquerade", "disabled", "ipam")


class IPPoolKind(Kind):
    name = "ipPool"
    aliases = ("ippool", "ippools", "pool", "pools")
    identity = ("name",)
    spec_fields = ("cidr", "masquerade", "disabled", "ipam", "ipip")

    def check_metadata(self, meta: Mapping[str, Any]) -> dict[str, str]:
        name = meta.get("name")
        if name is None:
            raise SpecError(["metadata.name: missing (the pool's CIDR)"])
        try:
            net = ipaddress.ip_network(name, strict=False) if isinstance(name, str) else None
        except ValueError:
            net = None
        if net is None or "%" in str(name):
            raise SpecError([f"metadata.name: {quoted(name)} is not a CIDR"])
        return {"name": str(name)}  # not canonical: only for reading or deleting what exists

    def _key(self, meta: Mapping[str, str]) -> dm.IPPoolKey:
        return dm.IPPoolKey.for_cidr(meta["name"])

    def keys(self, meta: Mapping[str, str]) -> tuple[str, ...]:
        return (self._key(meta).path,)

    def prefixes(self, filters: Filters) -> tuple[str, ...]:
        return (dm.IPAM_DIR,)

    def identify(self, path: str) -> dict[str, str] | None:
        key = dm.parse_key(path)
        return {"name": key.cidr} if isinstance(key, dm.IPPoolKey) else None

    def values_for(self, meta: Mapping[str, str], spec: Mapping[str, Any]) -> dict[str, str | None]:
        problems = check_fields(spec, self.spec_fields, "spec")
        canonical = str(ipaddress.ip_network(meta["name"], strict=False))
        if canonical != meta["name"]:
            problems.append(
                f"metadata.name: {quoted(meta['name'])} is not canonical: write {canonical}"
            )
        value = dict(spec)
        cidr = value.setdefault("cidr", meta["name"])
        if cidr != meta["name"]:
            problems.append(f"spec.cidr: {quoted(cidr)} is not the pool's name {meta['name']}")
        for field in BOOLEAN_FIELDS:
            if field in value and not isinstance(value[field], bool):
                problems.append(f"spec.{field}: expected true or false, got {quoted(value[field])}")
        if "ipip" in value and not (
            isinstance(value["ipip"], str) and res.INTERFACE_NAME_RE.fullmatch(value["ipip"])
        ):
            problems.append(f"spec.ipip: {quoted(value['ipip'])} is not an interface name")
        key = self._key(meta)
        raw = dumps(value)
        try:
            res.parse_ip_pool(raw, key)
        except res.InvalidValue as e:
            problems += [f"spec.{p}" for p in e.problems]
        if problems:
            raise SpecError(problems)
        return {key.path: raw}

    def spec_of(self, resource: Resource) -> dict[str, Any]:
        value = decode(resource.values[self.keys(resource.metadata)[0]])
        return value if isinstance(value, dict) else {"value": value}

    def problems_of(self, resource: Resource) -> list[str]:
        key = self._key(resource.metadata)
        try:
            res.parse_ip_pool(resource.values[key.path], key)
        except res.InvalidValue as e:
            return [str(e)]
        return []

    def columns(self, wide: bool) -> list[Column]:
        columns: list[Column] = [
            ("CIDR", meta_column("name")),
            ("MASQUERADE", lambda d: bool(d["spec"].get("masquerade"))),
            ("DISABLED", lambda d: bool(d["spec"].get("disabled"))),
        ]
        if wide:
            columns += [("IPIP", spec_column("ipip")), ("REVISION", meta_column("revision"))]
        return columns


KIND = IPPoolKind()
