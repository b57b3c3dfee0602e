"""Policies (felix.md §2.5): `/calico/v1/policy/tier/<tier>/policy/<name>` =
`{selector, order, inbound_rules, outbound_rules, untracked}`; the spec is that value. A policy
applies only once its tier has metadata (see `calicoctl get tier`)."""

from __future__ import annotations

from collections.abc import Mapping

from calico.common import datamodel_v1 as dm
from calico.common import resources as res
from calico.ctl.kinds import (
    Column,
    Filters,
    SingleKeyKind,
    meta_column,
    spec_column,
)


class PolicyKind(SingleKeyKind):
    name = "policy"
    aliases = ("policies", "pol")
    identity = ("tier", "name")
    filters = ("tier",)
    spec_fields = ("selector", "order", "inbound_rules", "outbound_rules", "untracked")

    def key(self, meta: Mapping[str, str]) -> dm.PolicyKey:
        return dm.PolicyKey(meta["tier"], meta["name"])

    def parse(self, raw: str, key: dm.PolicyKey) -> object:
        return res.parse_policy(raw, key)

    def prefixes(self, filters: Filters) -> tuple[str, ...]:
        tier = filters.get("tier")
        return (f"{dm.TIER_DIR}/{tier}/policy",) if tier else (dm.TIER_DIR,)

    def identify(self, path: str) -> dict[str, str] | None:
        key = dm.parse_key(path)
        return {"tier": key.tier, "name": key.policy} if isinstance(key, dm.PolicyKey) else None

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
