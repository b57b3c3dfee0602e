"""Tiers (felix.md §2.5): `/calico/v1/policy/tier/<name>/metadata` = `{"order": N}`. A tier
without its metadata key is ignored by Felix, and so are its policies."""

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


class TierKind(SingleKeyKind):
    name = "tier"
    aliases = ("tiers",)
    identity = ("name",)
    spec_fields = ("order",)

    def key(self, meta: Mapping[str, str]) -> dm.TierMetadataKey:
        return dm.TierMetadataKey(meta["name"])

    def parse(self, raw: str, key: dm.TierMetadataKey) -> object:
        return res.parse_tier_metadata(raw, key)

    def prefixes(self, filters: Filters) -> tuple[str, ...]:
        return (dm.TIER_DIR,)

    def identify(self, path: str) -> dict[str, str] | None:
        key = dm.parse_key(path)
        return {"name": key.tier} if isinstance(key, dm.TierMetadataKey) else None

    def columns(self, wide: bool) -> list[Column]:
        columns: list[Column] = [("NAME", meta_column("name")), ("ORDER", spec_column("order"))]
        if wide:
            columns.append(("REVISION", lambda d: d["metadata"]["revision"]))
        return columns


KIND = TierKind()
