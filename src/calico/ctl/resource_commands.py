"""`calicoctl get|create|apply|replace|delete`: the same five verbs for every resource kind.

Writes validate every document first (the kind, the identity in `metadata`, the spec through
Felix's parsers) and write nothing if any is invalid (exit 2); then each document is written
with compare-and-swap (`store`), in file order, one line of output each. `apply` is create or
replace, and writes nothing when the resource already holds exactly the document.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from calico.common.etcd.base import KVStore
from calico.common.quoting import quoted
from calico.ctl import (
    bgp_config,
    bgp_peers,
    documents,
    host_endpoints,
    ip_pools,
    output,
    policies,
    profiles,
    store,
    tiers,
    workload_endpoints,
)
from calico.ctl.documents import API_VERSION, Document
from calico.ctl.errors import Invalid, NotFound
from calico.ctl.kinds import Filters, Kind, Resource, SpecError

KINDS: tuple[Kind, ...] = (
    workload_endpoints.KIND,
    host_endpoints.KIND,
    profiles.KIND,
    tiers.KIND,
    policies.KIND,
    ip_pools.KIND,
    bgp_peers.KIND,
    bgp_config.KIND,
)
Emit = Callable[[str], object]
TOP_LEVEL = ("apiVersion", "kind", "metadata", "spec", "status")


def kind_named(name: object) -> Kind:
    if isinstance(name, str):
        for kind in KINDS:
            if name.lower() in (kind.name.lower(), *kind.aliases):
                return kind
    known = ", ".join(k.name for k in KINDS)
    raise Invalid(f"unknown resource kind {quoted(name)} (one of: {known})")


def plan(doc: Document, need_spec: bool = True) -> store.Write:
    """A validated write for one document; Invalid naming the document and each field."""
    data = doc.data
    problems = [f"{name}: unknown field" for name in data if name not in TOP_LEVEL]
    if data.get("apiVersion", API_VERSION) != API_VERSION:
        problems.append(f"apiVersion: {quoted(data['apiVersion'])} (need {API_VERSION})")
    try:
        kind = kind_named(data.get("kind"))
    except Invalid as e:
        raise Invalid(f"{doc.where}: kind: {e}") from None
    metadata = data.get("metadata")
    if not isinstance(metadata, dict):
        raise Invalid(f"{doc.where} ({kind.name}): metadata: missing or not a mapping")
    allowed = (*kind.identity, "revision")
    problems += [f"metadata.{n}: unknown field" for n in metadata if n not in allowed]
    revision = metadata.get("revision")
    if revision is not None and not (
        isinstance(revision, int) and not isinstance(revision, bool) and revision > 0
    ):
        problems.append(f"metadata.revision: {quoted(revision)} is not a revision number")
        revision = None
    try:
        meta = kind.check_metadata(metadata)
    except SpecError as e:
        lines = (f"{doc.where} ({kind.name}): {p}" for p in [*problems, *e.problems])
        raise Invalid(*lines) from None
    label = f"{doc.where} ({kind.name} {kind.label(meta)})"
    spec = data.get("spec")
    values: dict[str, str | None] = {}
    if not need_spec:
        pass  # delete and get name resources; their spec is not read
    elif not isinstance(spec, dict):
        problems.append("spec: missing or not a mapping")
    else:
        try:
            values = kind.values_for(meta, spec)
        except SpecError as e:
            problems += e.problems
    if problems:
        raise Invalid(*(f"{label}: {p}" for p in problems))
    return store.Write(kind, meta, values, revision)


def plan_all(docs: Sequence[Document], need_spec: bool = True) -> list[store.Write]:
    """Every document validated before anything is written: all problems, then Invalid."""
    writes: list[store.Write] = []
    lines: list[str] = []
    for doc in docs:
        try:
            writes.append(plan(doc, need_spec))
        except Invalid as e:
            lines += e.lines
    if lines:
        raise Invalid(*lines, "nothing was written")
    return writes


def write_file(
    client: KVStore, path: str, mode: str, emit: Emit, stdin: TextIO | None = None
) -> None:
    """create / replace / apply every document of a file; one line per document as it is
    written (so that a failure part-way still shows what was written before it)."""
    for w in plan_all(documents.load(path, stdin)):
        emit(f"{w.label} {store.execute(client, w, mode)}\n")


def delete_file(client: KVStore, path: str, emit: Emit, stdin: TextIO | None = None) -> None:
    for w in plan_all(documents.load(path, stdin), need_spec=False):
        emit(f"{w.label} {store.delete(client, w.kind, w.meta, w.revision)}\n")


def find(client: KVStore, kind: Kind, name: str | None, filters: Filters) -> list[Resource]:
    """The resources of `kind` matching the filters (and the name, if given)."""
    narrowed: dict[str, str | None] = {k: v for k, v in filters.items() if v}
    if name is not None:
        narrowed.update(kind.name_filter(name))
    return store.list_resources(client, kind, narrowed)


def delete_named(client: KVStore, kind: Kind, name: str, filters: Filters) -> str:
    found = find(client, kind, name, filters)
    if not found:
        raise NotFound(f"no {kind.name} named {quoted(name)}{_filter_text(filters)}")
    if len(found) > 1:
        labels = ", ".join(kind.label(r.metadata) for r in found)
        options = " ".join(f"--{f}" for f in kind.filters)
        raise Invalid(
            f"{len(found)} {kind.name}s are named {quoted(name)} ({labels}): narrow with {options}"
        )
    meta = found[0].metadata
    return f"{kind.name} {kind.label(meta)} {store.delete(client, kind, meta)}\n"


def _filter_text(filters: Filters) -> str:
    given = [f"{k} {v}" for k, v in filters.items() if v]
    return f" ({', '.join(given)})" if given else ""


def get(
    client: KVStore,
    kind: Kind | None,
    name: str | None,
    filters: Filters,
    fmt: str,
    path: str | None = None,
    stdin: TextIO | None = None,
) -> str:
    """The listing (or the resources a file names) in the chosen format."""
    resources: list[Resource] = []
    if path is not None:
        for w in plan_all(documents.load(path, stdin), need_spec=False):
            found = store.list_resources(client, w.kind, dict(w.meta))
            if not found:
                raise NotFound(f"{w.label} does not exist")
            resources += found
    else:
        assert kind is not None
        resources = find(client, kind, name, filters)
        if name is not None and not resources:
            raise NotFound(f"no {kind.name} named {quoted(name)}{_filter_text(filters)}")
    docs = [r.document() for r in resources]
    if fmt in ("json", "yaml"):
        return output.dump(docs, fmt)
    return render_table(docs, fmt == "wide", kind)


def render_table(docs: Sequence[dict[str, Any]], wide: bool, kind: Kind | None = None) -> str:
    """One table per kind, in the order the kinds first appear (only the headings of `kind`
    when there is nothing to list)."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    if kind is not None:
        by_kind[kind.name] = []
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    parts = []
    for kind_name, group in by_kind.items():
        columns = kind_named(kind_name).columns(wide)
        rows = [[fn(doc) for _, fn in columns] for doc in group]
        parts.append(output.table([h for h, _ in columns], rows))
    return "\n".join(parts)


def kind_filters(kind: Kind, given: Mapping[str, str | None]) -> dict[str, str | None]:
    """The CLI's filter options that `kind` understands; Invalid for the others."""
    extra = [k for k, v in given.items() if v and k not in kind.filters]
    if extra:
        raise Invalid(f"{kind.name} cannot be filtered by --{extra[0]}")
    return {k: v for k, v in given.items() if k in kind.filters}
