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
    SingleKeyKind,
    SpecError,
    meta_column,
    spec_column,
)

BOOLEAN_FIELDS = ("masquerade", "disabled", "ipam")


class IPPoolKind(SingleKeyKind):
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

    def key(self, meta: Mapping[str, str]) -> dm.IPPoolKey:
        return dm.IPPoolKey.for_cidr(meta["name"])

    def parse(self, raw: str, key: dm.IPPoolKey) -> object:
        return res.parse_ip_pool(raw, key)

    def prefixes(self, filters: Filters) -> tuple[str, ...]:
        return (dm.IPAM_DIR,)

    def identify(self, path: str) -> dict[str, str] | None:
        key = dm.parse_key(path)
        return {"name": key.cidr} if isinstance(key, dm.IPPoolKey) else None

    def checked_value(
        self, meta: Mapping[str, str], spec: Mapping[str, Any], problems: list[str]
    ) -> dict[str, Any]:
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
        return value

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
