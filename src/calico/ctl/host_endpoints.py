"""Host endpoints (felix.md §2.3): `/calico/v1/host/<host>/endpoint/<name>`; the spec is the
stored value (`name` = the interface, `expected_ipv4_addrs`, `expected_ipv6_addrs`,
`profile_ids`, `labels`); `status.status` is what Felix reports for it."""

from __future__ import annotations

from collections.abc import Mapping

from calico.common import datamodel_v1 as dm
from calico.common import resources as res
from calico.ctl.kinds import (
    Column,
    Filters,
    meta_column,
    spec_column,
    status_column,
)
from calico.ctl.workload_endpoints import EndpointKind, endpoint_ips

EXPECTED = ("expected_ipv4_addrs", "expected_ipv6_addrs")


class HostEndpointKind(EndpointKind):
    name = "hostEndpoint"
    aliases = ("hostendpoint", "hostendpoints", "hep", "heps")
    identity = ("host", "name")
    filters = ("host",)
    spec_fields = (
        "name",
        "expected_ipv4_addrs",
        "expected_ipv6_addrs",
        "profile_ids",
        "profile_id",
        "labels",
    )

    def key(self, meta: Mapping[str, str]) -> dm.HostEndpointKey:
        return dm.HostEndpointKey(meta["host"], meta["name"])

    def parse(self, raw: str, key: dm.HostEndpointKey) -> object:
        return res.parse_host_endpoint(raw, key)

    def prefixes(self, filters: Filters) -> tuple[str, ...]:
        host = filters.get("host")
        return (f"{dm.HOST_DIR}/{host}/endpoint",) if host else (dm.HOST_DIR,)

    def identify(self, path: str) -> dict[str, str] | None:
        key = dm.parse_key(path)
        if not isinstance(key, dm.HostEndpointKey):
            return None
        return {"host": key.hostname, "name": key.endpoint}

    def status_key(self, meta: Mapping[str, str]) -> dm.HostEndpointStatusKey:
        return dm.HostEndpointStatusKey.for_endpoint(self.key(meta))

    def columns(self, wide: bool) -> list[Column]:
        columns: list[Column] = [
            ("HOST", meta_column("host")),
            ("NAME", meta_column("name")),
            ("INTERFACE", spec_column("name")),
            ("IPS", lambda d: endpoint_ips(d["spec"], *EXPECTED)),
            ("PROFILES", spec_column("profile_ids")),
            ("STATUS", status_column("status")),
        ]
        if wide:
            columns.append(("LABELS", spec_column("labels")))
        return columns


KIND = HostEndpointKind()
