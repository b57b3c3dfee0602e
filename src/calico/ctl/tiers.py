"""Tiers (felix.md §2.5): `/calico/v1/policy/tier/<name>/metadata` = `{"order": N}`. A tier
without its metadata key is ignored by Felix, and so are its policies."""

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


class TierKind(Kind):
    name = "tier"
    aliases = ("tiers",)
    identity = ("name",)
    spec_fields = ("order",)

    def keys(self, meta: Mapping[str, str]) -> tuple[str, ...]:
        return (dm.TierMetadataKey(meta["name"]).path,)

    def prefixes(self, filters: Filters) -> tuple[str, ...]:
        return (dm.TIER_DIR,)

    def identify(self, path: str) -> dict[str, str] | None:
        key = dm.parse_key(path)
        return {"name": key.tier} if isinstance(key, dm.TierMetadataKey) else None

    def values_for(self, meta: Mapping[str, str], spec: Mapping[str, Any]) -> dict[str, str | None]:
        problems = check_fields(spec, self.spec_fields, "spec")
        key = dm.TierMetadataKey(meta["name"])
        raw = dumps(dict(spec))
        try:
            res.parse_tier_metadata(raw, key)
        except res.InvalidValue as e:
            problems += [f"spec.{p}" for p in e.problems]
        if problems:
            raise SpecError(problems)
        return {key.path: raw}

    def spec_of(self, resource: Resource) -> dict[str, Any]:
        value = decode(resource.values[self.keys(resource.metadata)[0]])
        return value if isinstance(value, dict) else {"value": value}

    def problems_of(self, resource: Resource) -> list[str]:
        key = dm.TierMetadataKey(resource.metadata["name"])
        try:
            res.parse_tier_metadata(resource.values[key.path], key)
        except res.InvalidValue as e:
            return [str(e)]
        return []

    def columns(self, wide: bool) -> list[Column]:
        columns: list[Column] = [("NAME", meta_column("name")), ("ORDER", spec_column("order"))]
        if wide:
            columns.append(("REVISION", lambda d: d["metadata"]["revision"]))
        return columns


KIND = TierKind()
