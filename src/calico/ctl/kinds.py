"""What a resource kind is to calicoctl: its identity (metadata fields), the etcd keys one
resource is stored in, the validation of its spec (Felix's own parsers), and its table columns.

A document is `{apiVersion: v1, kind: K, metadata: {...identity..., revision}, spec: {...}}`;
`status` is read-only (printed by `get`, ignored when written). The spec of most kinds is the
etcd value itself, in the data model's own field names (felix.md §2), so what is validated is
exactly what is written and what Felix will read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from calico.common import datamodel_v1 as dm
from calico.common.etcd.base import KVStore
from calico.common.quoting import quoted
from calico.common.resources import InvalidValue
from calico.ctl.documents import API_VERSION

Column = tuple[str, Callable[[dict[str, Any]], object]]
Filters = Mapping[str, str | None]
Versioned = dict[str, tuple[str, int]]


class SpecError(ValueError):
    """A spec (or metadata) that fails validation: every problem, each naming its field."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


@dataclass
class Resource:
    """One resource as stored in etcd: its identity, raw values by key path, their versions,
    and (for endpoints) the status Felix reports."""

    kind: Kind
    metadata: dict[str, str]
    values: dict[str, str] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    status: dict[str, Any] | None = None

    @property
    def revision(self) -> int:
        """The highest modification index of its keys (v2 modifiedIndex, v3 mod_revision)."""
        return max(self.versions.values(), default=0)

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": self.kind.name,
            "metadata": {**self.kind.shown_metadata(self.metadata), "revision": self.revision},
            "spec": self.kind.spec_of(self),
        }
        problems = self.kind.problems_of(self)
        status = dict(self.status or {})
        if problems:
            status["valid"] = False
            status["problems"] = problems
        if status:
            doc["status"] = status
        return doc


def decode(raw: str) -> Any:
    """A stored JSON value; the raw text itself if it is not JSON (shown, never hidden)."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return raw


def dumps(value: object) -> str:
    """The one encoding of values calicoctl writes (compact, keys in the document's order)."""
    return json.dumps(value, separators=(",", ":"))


def problems_of(error: InvalidValue) -> list[str]:
    return list(error.problems)


def check_segment(meta: Mapping[str, Any], name: str, problems: list[str]) -> str:
    """A required identity field that must be a valid key segment."""
    value = meta.get(name)
    if value is None:
        problems.append(f"metadata.{name}: missing")
        return ""
    if not dm.valid_id(value):
        problems.append(f"metadata.{name}: invalid {quoted(value)} (need {dm.ID_SEGMENT_RULE})")
        return ""
    return str(value)


def check_fields(data: Mapping[str, Any], allowed: Sequence[str], where: str) -> list[str]:
    """A problem per field not in `allowed` (a typo Felix would silently ignore)."""
    return [
        f"{where}.{name}: unknown field (known: {', '.join(allowed)})"
        for name in data
        if name not in allowed
    ]


class Kind:
    """The base of every resource kind; each resource module defines one subclass."""

    name: str = ""
    aliases: tuple[str, ...] = ()
    identity: tuple[str, ...] = ("name",)
    filters: tuple[str, ...] = ()  # the `get`/`delete` options that narrow a listing
    spec_fields: tuple[str, ...] = ()

    # -- identity and keys ------------------------------------------------------------------

    def check_metadata(self, meta: Mapping[str, Any]) -> dict[str, str]:
        """The identity fields, validated; SpecError naming each bad field."""
        problems: list[str] = []
        out = {name: check_segment(meta, name, problems) for name in self.identity}
        if problems:
            raise SpecError(problems)
        return out

    def label(self, meta: Mapping[str, str]) -> str:
        """How messages name one resource."""
        return "/".join(meta[name] for name in self.identity)

    def keys(self, meta: Mapping[str, str]) -> tuple[str, ...]:
        """Every key the resource is stored in, the primary key (its claim) first."""
        raise NotImplementedError

    def prefixes(self, filters: Filters) -> tuple[str, ...]:
        """The prefixes to read to list the resources `filters` can match."""
        raise NotImplementedError

    def identify(self, path: str) -> dict[str, str] | None:
        """The identity of the resource `path` belongs to, or None."""
        raise NotImplementedError

    def shown_metadata(self, meta: Mapping[str, str]) -> dict[str, str]:
        """The identity as documents show it."""
        return dict(meta)

    def name_filter(self, name: str) -> dict[str, str]:
        """What `get KIND NAME` / `delete KIND NAME` look for."""
        return {"name": name}

    def matches(self, meta: Mapping[str, str], filters: Filters) -> bool:
        return all(meta.get(name) == value for name, value in filters.items() if value is not None)

    # -- values -------------------------------------------------------------------------------

    def values_for(self, meta: Mapping[str, str], spec: Mapping[str, Any]) -> dict[str, str | None]:
        """The raw value of each key (None: the key must not exist), validated by Felix's
        parsers; SpecError with every problem."""
        raise NotImplementedError

    def spec_of(self, resource: Resource) -> dict[str, Any]:
        raise NotImplementedError

    def problems_of(self, resource: Resource) -> list[str]:
        """Why Felix would treat the stored resource as deleted (empty: it is valid)."""
        return []

    def read_status(self, client: KVStore, resources: Sequence[Resource]) -> None:
        """Fill in `status` for the listed resources (endpoints only)."""

    def after_delete(self, client: KVStore, meta: Mapping[str, str]) -> None:
        """Tidy up after a delete (v2's empty directories)."""

    # -- output -------------------------------------------------------------------------------

    def columns(self, wide: bool) -> list[Column]:
        raise NotImplementedError


class SingleKeyKind(Kind):
    """A resource stored as one JSON value in one key, which one of Felix's parsers validates
    (tiers, policies, IP pools, endpoints): each subclass names the key and the parser."""

    def key(self, meta: Mapping[str, str]) -> Any:
        """The resource's key (a calico.common.datamodel_v1 key object)."""
        raise NotImplementedError

    def parse(self, raw: str, key: Any) -> object:
        """Felix's parser for the value; raises InvalidValue."""
        raise NotImplementedError

    def checked_value(
        self, meta: Mapping[str, str], spec: Mapping[str, Any], problems: list[str]
    ) -> dict[str, Any]:
        """The value to write for `spec`, after checks of the kind's own (appended to
        `problems`) that Felix's parser does not make."""
        return dict(spec)

    def check_write(self, raw: str, key: Any, spec: Mapping[str, Any]) -> None:
        """What a write must pass: Felix's parser (raises InvalidValue)."""
        self.parse(raw, key)

    def keys(self, meta: Mapping[str, str]) -> tuple[str, ...]:
        return (self.key(meta).path,)

    def values_for(self, meta: Mapping[str, str], spec: Mapping[str, Any]) -> dict[str, str | None]:
        problems = check_fields(spec, self.spec_fields, "spec")
        value = self.checked_value(meta, spec, problems)
        key = self.key(meta)
        raw = dumps(value)
        try:
            self.check_write(raw, key, spec)
        except InvalidValue as e:
            problems += [f"spec.{p}" for p in e.problems]
        if problems:
            raise SpecError(problems)
        return {key.path: raw}

    def spec_of(self, resource: Resource) -> dict[str, Any]:
        value = decode(resource.values[self.keys(resource.metadata)[0]])
        return value if isinstance(value, dict) else {"value": value}

    def problems_of(self, resource: Resource) -> list[str]:
        key = self.key(resource.metadata)
        try:
            self.parse(resource.values[key.path], key)
        except InvalidValue as e:
            return [str(e)]
        return []


def meta_column(name: str) -> Callable[[dict[str, Any]], object]:
    return lambda doc: doc["metadata"].get(name)


def spec_column(name: str) -> Callable[[dict[str, Any]], object]:
    return lambda doc: doc["spec"].get(name)


def status_column(name: str) -> Callable[[dict[str, Any]], object]:
    return lambda doc: doc.get("status", {}).get(name)
