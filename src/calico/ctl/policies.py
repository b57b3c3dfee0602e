"""Policies (felix.md §2.5): `/calico/v1/policy/tier/<tier>/policy/<name>` =
`{selector, order, inbound_rules, outbound_rules, untracked}`; the spec is that value. A policy
applies only once its tier has metadata (see `calicoctl get tier`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from calico.common import datamodel_v1 as dm
from calico.common import resources as res
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


class PolicyKind(Kind):
    name = "policy"
    aliases = ("policies", "pol")
    identity = ("tier", "name")
    filters = ("tier",)
    spec_fields = ("selector", "order", "inbound_rules", "outbound_rules", "untracked")

    def keys(self, meta: Mapping[str, str]) -> tuple[str, ...]:
        return (dm.PolicyKey(meta["tier"], meta["name"]).path,)

    def prefixes(self, filters: Filters) -> tuple[str, ...]:
        tier = filters.get("tier")
        return (f"{dm.TIER_DIR}/{tier}/policy",) if tier else (dm.TIER_DIR,)

    def identify(self, path: str) -> dict[str, str] | None:
        key = dm.parse_key(path)
        return {"tier": key.tier, "name": key.policy} if isinstance(key, dm.PolicyKey) else None

    def values_for(self, meta: Mapping[str, str], spec: Mapping[str, Any]) -> dict[str, str | None]:
        problems = check_fields(spec, self.spec_fields, "spec")
        key = dm.PolicyKey(meta["tier"], meta["name"])
        raw = dumps(dict(spec))
        try:
            res.parse_policy(raw, key)
        except res.InvalidValue as e:
            problems += [f"spec.{p}" for p in e.problems]
        if problems:
            raise SpecError(problems)
        return {key.path: raw}

    def spec_of(self, resource: Resource) -> dict[str, Any]:
        value = decode(resource.values[self.keys(resource.metadata)[0]])
        return value if isinstance(value, dict) else {"value": value}

    def problems_of(self, resource: Resource) -> list[str]:
        key = dm.PolicyKey(resource.metadata["tier"], resource.metadata["name"])
        try:
            res.parse_policy(resource.values[key.path], key)
        except res.InvalidValue as e:
            return [str(e)]
        return []

    def columns(self, wide: bool) -> list[Column]:
        columns: list[Column] = [
            ("TIER", meta_column("tier")),
            ("NAME", meta_column("name")),
            ("ORDER", spec_column("order")),
            ("SELECTOR", spec_column("selector")),
        ]
        if wide:
            columns += [
                ("INBOUND", lambda d: _count(d["spec"].get("inbound_rules"))),
                ("OUTBOUND", lambda d: _count(d["spec"].get("outbound_rules"))),
                ("UNTRACKED", lambda d: bool(d["spec"].get("untracked"))),
                ("REVISION", lambda d: d["metadata"]["revision"]),
            ]
        return columns


def _count(rules: object) -> object:
    return len(rules) if isinstance(rules, list) else 0


KIND = PolicyKind()
