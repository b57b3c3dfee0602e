"""BGP peers (bgp.md §2.1): `/calico/bgp/v1/global/peer_v<4|6>/<ip>` (a peer of every host) or
`/calico/bgp/v1/host/<host>/peer_v<4|6>/<ip>` (of one host), each `{"ip": ..., "as_num": ...}`.

metadata.name is the peer's address (canonical), metadata.host the host for a per-host peer
(absent: global); spec.as_num is the peer's AS number (asplain, written as text as calico/node
did). Validation is calico-bgp's own (`calico.bgp.model.parse_value`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from calico.bgp import model as bgp
from calico.common import datamodel_bgp as bgp_keys
from calico.common.quoting import quoted
from calico.ctl.kinds import (
    Column,
    Filters,
    Kind,
    Resource,
    SpecError,
    check_fields,
    check_segment,
    decode,
    dumps,
    meta_column,
)

PeerKey = bgp_keys.BgpGlobalPeerKey | bgp_keys.BgpHostPeerKey


def canonical_ip(value: object) -> str | None:
    if not isinstance(value, str) or "%" in value:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


class BgpPeerKind(Kind):
    name = "bgpPeer"
    aliases = ("bgppeer", "bgppeers", "peer", "peers")
    identity = ("host", "name")
    filters = ("host",)
    spec_fields = ("ip", "as_num")

    def check_metadata(self, meta: Mapping[str, Any]) -> dict[str, str]:
        problems: list[str] = []
        host = check_segment(meta, "host", problems) if meta.get("host") is not None else ""
        ip = canonical_ip(meta.get("name"))
        if ip is None:
            problems.append(f"metadata.name: {quoted(meta.get('name'))} is not an IP address")
        elif ip != meta.get("name"):
            problems.append(
                f"metadata.name: {quoted(meta.get('name'))} is not canonical: write {ip}"
            )
        if problems:
            raise SpecError(problems)
        return {"host": host, "name": str(ip)}

    def shown_metadata(self, meta: Mapping[str, str]) -> dict[str, str]:
        return (
            {"host": meta["host"], "name": meta["name"]} if meta["host"] else {"name": meta["name"]}
        )

    def label(self, meta: Mapping[str, str]) -> str:
        return f"{meta['host'] or 'global'}/{meta['name']}"

    def name_filter(self, name: str) -> dict[str, str]:
        return {"name": canonical_ip(name) or name}

    def key(self, meta: Mapping[str, str]) -> PeerKey:
        version = ipaddress.ip_address(meta["name"]).version
        if meta["host"]:
            return bgp_keys.BgpHostPeerKey(meta["host"], version, meta["name"])
        return bgp_keys.BgpGlobalPeerKey(version, meta["name"])

    def keys(self, meta: Mapping[str, str]) -> tuple[str, ...]:
        return (self.key(meta).path,)

    def prefixes(self, filters: Filters) -> tuple[str, ...]:
        host = filters.get("host")
        if host:
            return (f"{bgp_keys.BGP_HOST_DIR}/{host}",)
        return (bgp_keys.BGP_GLOBAL_DIR, bgp_keys.BGP_HOST_DIR)

    def identify(self, path: str) -> dict[str, str] | None:
        key = bgp_keys.parse_bgp_key(path)
        if isinstance(key, bgp_keys.BgpGlobalPeerKey):
            return {"host": "", "name": key.ip}
        if isinstance(key, bgp_keys.BgpHostPeerKey):
            return {"host": key.hostname, "name": key.ip}
        return None

    def values_for(self, meta: Mapping[str, str], spec: Mapping[str, Any]) -> dict[str, str | None]:
        problems = check_fields(spec, self.spec_fields, "spec")
        if spec.get("ip") is not None and canonical_ip(spec["ip"]) != meta["name"]:
            problems.append(f"spec.ip: {quoted(spec['ip'])} is not the peer's name {meta['name']}")
        key = self.key(meta)
        raw: str | None = None
        try:
            bgp.usable_address(meta["name"], key.version, "metadata.name")
        except bgp.InvalidValue as e:
            problems += [f"metadata.name: {p}" for p in e.problems]
        try:
            as_num = bgp.parse_as_num(spec.get("as_num"), "spec.as_num")
            raw = dumps({"ip": meta["name"], "as_num": str(as_num)})
            bgp.parse_value(key, raw)
        except bgp.InvalidValue as e:
            problems += [_problem(p) for p in e.problems]
        if problems or raw is None:
            raise SpecError(problems)
        return {key.path: raw}

    def spec_of(self, resource: Resource) -> dict[str, Any]:
        value = decode(resource.values[self.keys(resource.metadata)[0]])
        if not isinstance(value, dict):
            return {"value": value}
        as_num = value.get("as_num")
        if isinstance(as_num, str) and as_num.isdigit():
            as_num = int(as_num)
        return {"as_num": as_num}

    def problems_of(self, resource: Resource) -> list[str]:
        key = self.key(resource.metadata)
        try:
            bgp.parse_value(key, resource.values[key.path])
        except bgp.InvalidValue as e:
            return [str(e)]
        return []

    def columns(self, wide: bool) -> list[Column]:
        columns: list[Column] = [
            (
                "SCOPE",
                lambda d: f"host {d['metadata']['host']}" if "host" in d["metadata"] else "global",
            ),
            ("PEER", meta_column("name")),
            ("AS", lambda d: d["spec"].get("as_num")),
        ]
        if wide:
            columns.append(("REVISION", meta_column("revision")))
        return columns


def _problem(problem: str) -> str:
    return problem if problem.startswith("spec.") else f"spec.as_num: {problem}"


KIND = BgpPeerKind()
