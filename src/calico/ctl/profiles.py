"""Profiles (felix.md §2.4): rules, tags and labels, stored in three keys under
/calico/v1/policy/profile/<name>/. The document's spec holds all three:

    spec: {inbound_rules: [...], outbound_rules: [...], tags: [...], labels: {...}}

The rules key is always written (absent rule lists mean no rules: the profile admits nothing);
the tags and labels keys exist only when the spec has them. A profile whose rules key is missing
or invalid is a deny-all stand-in for Felix (§2.9), and `get` says so in `status`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
)

RULE_LISTS = ("inbound_rules", "outbound_rules")


class ProfileKind(Kind):
    name = "profile"
    aliases = ("profiles", "pro", "pr")
    identity = ("name",)
    spec_fields = ("inbound_rules", "outbound_rules", "tags", "labels")

    def _keys(self, name: str) -> tuple[dm.ProfileRulesKey, dm.ProfileTagsKey, dm.ProfileLabelsKey]:
        return dm.ProfileRulesKey(name), dm.ProfileTagsKey(name), dm.ProfileLabelsKey(name)

    def keys(self, meta: Mapping[str, str]) -> tuple[str, ...]:
        return tuple(k.path for k in self._keys(meta["name"]))

    def prefixes(self, filters: Filters) -> tuple[str, ...]:
        name = filters.get("name")
        return (f"{dm.PROFILE_DIR}/{name}",) if name else (dm.PROFILE_DIR,)

    def identify(self, path: str) -> dict[str, str] | None:
        key = dm.parse_key(path)
        if isinstance(key, dm.ProfileRulesKey | dm.ProfileTagsKey | dm.ProfileLabelsKey):
            return {"name": key.profile}
        return None

    def values_for(self, meta: Mapping[str, str], spec: Mapping[str, Any]) -> dict[str, str | None]:
        problems = check_fields(spec, self.spec_fields, "spec")
        rules_key, tags_key, labels_key = self._keys(meta["name"])
        rules = {name: spec.get(name) or [] for name in RULE_LISTS}
        values: dict[str, str | None] = {rules_key.path: dumps(rules)}
        values[tags_key.path] = dumps(spec["tags"]) if spec.get("tags") is not None else None
        values[labels_key.path] = dumps(spec["labels"]) if spec.get("labels") is not None else None
        for field, check in _checks(rules_key, tags_key, labels_key).items():
            raw = values[check[0]]
            if raw is None:
                continue
            try:
                check[1](raw)
            except res.InvalidValue as e:
                problems += [_spec_problem(field, p) for p in e.problems]
        if problems:
            raise SpecError(problems)
        return values

    def spec_of(self, resource: Resource) -> dict[str, Any]:
        rules_key, tags_key, labels_key = self.keys(resource.metadata)
        spec: dict[str, Any] = {}
        rules = decode(resource.values[rules_key]) if rules_key in resource.values else None
        if isinstance(rules, dict):
            for name in RULE_LISTS:
                spec[name] = rules.get(name) or []
        elif rules is not None:
            spec["rules"] = rules  # not an object: shown as stored
        if tags_key in resource.values:
            spec["tags"] = decode(resource.values[tags_key])
        if labels_key in resource.values:
            spec["labels"] = decode(resource.values[labels_key])
        return spec

    def problems_of(self, resource: Resource) -> list[str]:
        problems: list[str] = []
        for field, (path, check) in _checks(*self._keys(resource.metadata["name"])).items():
            raw = resource.values.get(path)
            if raw is None:
                if not field:
                    problems.append("rules: missing (Felix uses a deny-all stand-in)")
                continue
            try:
                check(raw)
            except res.InvalidValue as e:
                problems.append(str(e))
        return problems

    def columns(self, wide: bool) -> list[Column]:
        columns: list[Column] = [
            ("NAME", meta_column("name")),
            ("INBOUND", lambda d: _count(d["spec"].get("inbound_rules"))),
            ("OUTBOUND", lambda d: _count(d["spec"].get("outbound_rules"))),
            ("TAGS", lambda d: d["spec"].get("tags")),
        ]
        if wide:
            columns.append(("LABELS", lambda d: d["spec"].get("labels")))
            columns.append(("REVISION", lambda d: d["metadata"]["revision"]))
        return columns


def _checks(
    rules: dm.ProfileRulesKey, tags: dm.ProfileTagsKey, labels: dm.ProfileLabelsKey
) -> dict[str, tuple[str, Callable[[str], object]]]:
    """Spec field ("" for the rule lists) -> (key path, Felix's parser for it)."""
    return {
        "": (rules.path, lambda raw: res.parse_profile_rules(raw, rules)),
        "tags": (tags.path, lambda raw: res.parse_profile_tags(raw, tags)),
        "labels": (labels.path, lambda raw: res.parse_profile_labels(raw, labels)),
    }


def _count(rules: object) -> object:
    return len(rules) if isinstance(rules, list) else None


def _spec_problem(field: str, problem: str) -> str:
    """A parser's problem as a path in the spec ("inbound_rules[0]: ..." -> "spec.inbound_...")."""
    if problem.startswith("key profile ID"):
        return f"metadata.name: {problem}"
    if field and not problem.startswith(field):
        return f"spec.{field}: {problem}"
    return f"spec.{problem}"


KIND = ProfileKind()
