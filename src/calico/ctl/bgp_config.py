"""BGP configuration (bgp.md §2.1), global or for one host:

* global (no metadata.host): `spec.as_num` (`/calico/bgp/v1/global/as_num`, the AS of every
  host without its own), `spec.node_mesh` (true/false: `global/node_mesh` = `{"enabled": ...}`)
  and `spec.loglevel` (`none`, `info` or `debug`);
* one host (metadata.host): `spec.as_num` (that host's own AS), `spec.ip_addr_v4` and
  `spec.ip_addr_v6` (its BGP addresses, "" for none) and `spec.rr_cluster_id` (set: it is a
  route reflector of that cluster).

A field left out of the spec is removed from etcd when the document is written (replace
semantics, as for every resource); `get` first, edit, then `apply`. Validation is calico-bgp's
own (`calico.bgp.model.parse_value`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from calico.bgp import model as bgp
from calico.common import datamodel_bgp as bgp_keys
from calico.ctl.kinds import (
    Column,
    Filters,
    Kind,
    Resource,
    SpecError,
    check_fields,
    check_segment,
    dumps,
)

GLOBAL_FIELDS = ("as_num", "node_mesh", "loglevel")
HOST_FIELDS = ("ip_addr_v4", "ip_addr_v6", "as_num", "rr_cluster_id")


def _keys(host: str) -> dict[str, bgp_keys.BgpKey]:
    """Spec field -> key, the primary key first."""
    if not host:
        return {
            "as_num": bgp_keys.BgpGlobalASKey(),
            "node_mesh": bgp_keys.BgpNodeMeshKey(),
            "loglevel": bgp_keys.BgpLogLevelKey(),
        }
    return {
        "ip_addr_v4": bgp_keys.BgpHostIPKey(host, 4),
        "ip_addr_v6": bgp_keys.BgpHostIPKey(host, 6),
        "as_num": bgp_keys.BgpHostASKey(host),
        "rr_cluster_id": bgp_keys.BgpHostRRClusterKey(host),
    }


def _encode(field: str, value: object) -> str:
    """A spec value as the key holds it (node_mesh as JSON, the rest as plain text)."""
    if field == "node_mesh":
        return dumps({"enabled": value})
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise bgp.InvalidValue(field, [f"expected text or a number, got {json.dumps(value)}"])
    return str(value)


def _decode(field: str, raw: str) -> object:
    if field == "node_mesh":
        try:
            value = json.loads(raw)
        except ValueError:
            return raw
        return value.get("enabled", value) if isinstance(value, dict) else value
    if field == "as_num" and raw.isdigit():
        return int(raw)
    return raw


_GLOBAL_KEYS = (bgp_keys.BgpGlobalASKey, bgp_keys.BgpNodeMeshKey, bgp_keys.BgpLogLevelKey)
_HOST_KEYS = (bgp_keys.BgpHostIPKey, bgp_keys.BgpHostASKey, bgp_keys.BgpHostRRClusterKey)


class BgpConfigKind(Kind):
    name = "bgpConfig"
    aliases = ("bgpconfig", "bgpconfigs", "bgp")
    identity = ("host",)
    filters = ("host",)

    def check_metadata(self, meta: Mapping[str, Any]) -> dict[str, str]:
        problems: list[str] = []
        host = check_segment(meta, "host", problems) if meta.get("host") is not None else ""
        if problems:
            raise SpecError(problems)
        return {"host": host}

    def shown_metadata(self, meta: Mapping[str, str]) -> dict[str, str]:
        return {"host": meta["host"]} if meta["host"] else {}

    def label(self, meta: Mapping[str, str]) -> str:
        return f"host {meta['host']}" if meta["host"] else "global"

    def name_filter(self, name: str) -> dict[str, str]:
        return {"host": "" if name == "global" else name}

    def keys(self, meta: Mapping[str, str]) -> tuple[str, ...]:
        return tuple(k.path for k in _keys(meta["host"]).values())

    def prefixes(self, filters: Filters) -> tuple[str, ...]:
        host = filters.get("host")
        if host:
            return (f"{bgp_keys.BGP_HOST_DIR}/{host}",)
        return (bgp_keys.BGP_GLOBAL_DIR, bgp_keys.BGP_HOST_DIR)

    def identify(self, path: str) -> dict[str, str] | None:
        key = bgp_keys.parse_bgp_key(path)
        if isinstance(
            key, bgp_keys.BgpGlobalASKey | bgp_keys.BgpNodeMeshKey | bgp_keys.BgpLogLevelKey
        ):
            return {"host": ""}
        if isinstance(
            key, bgp_keys.BgpHostIPKey | bgp_keys.BgpHostASKey | bgp_keys.BgpHostRRClusterKey
        ):
            return {"host": key.hostname}
        return None

    def values_for(self, meta: Mapping[str, str], spec: Mapping[str, Any]) -> dict[str, str | None]:
        keys = _keys(meta["host"])
        problems = check_fields(spec, tuple(keys), "spec")
        values: dict[str, str | None] = {}
        for field, key in keys.items():
            value = spec.get(field)
            if value is None:
                values[key.path] = None
                continue
            try:
                raw = _encode(field, value)
                bgp.parse_value(key, raw)
            except bgp.InvalidValue as e:
                problems += [f"spec.{field}: {p}" for p in e.problems]
                continue
            values[key.path] = raw
        if not any(v is not None for v in values.values()) and not problems:
            problems.append("spec: empty (to remove the configuration, delete it)")
        if problems:
            raise SpecError(problems)
        return values

    def spec_of(self, resource: Resource) -> dict[str, Any]:
        return {
            field: _decode(field, resource.values[key.path])
            for field, key in _keys(resource.metadata["host"]).items()
            if key.path in resource.values
        }

    def problems_of(self, resource: Resource) -> list[str]:
        problems = []
        for key in _keys(resource.metadata["host"]).values():
            if key.path in resource.values:
                try:
                    bgp.parse_value(key, resource.values[key.path])
                except bgp.InvalidValue as e:
                    problems.append(f"{key.path}: {e}")
        return problems

    def columns(self, wide: bool) -> list[Column]:
        columns: list[Column] = [
            (
                "SCOPE",
                lambda d: f"host {d['metadata']['host']}" if "host" in d["metadata"] else "global",
            ),
            ("AS", lambda d: d["spec"].get("as_num")),
            ("NODE MESH", lambda d: d["spec"].get("node_mesh")),
            ("IPV4", lambda d: d["spec"].get("ip_addr_v4")),
            ("IPV6", lambda d: d["spec"].get("ip_addr_v6")),
        ]
        if wide:
            columns += [
                ("LOGLEVEL", lambda d: d["spec"].get("loglevel")),
                ("RR CLUSTER", lambda d: d["spec"].get("rr_cluster_id")),
                ("REVISION", lambda d: d["metadata"]["revision"]),
            ]
        return columns


KIND = BgpConfigKind()
