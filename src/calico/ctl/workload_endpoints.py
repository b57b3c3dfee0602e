"""Workload endpoints (felix.md §2.2):
`/calico/v1/host/<host>/workload/<orchestrator>/<workload>/endpoint/<name>`; the spec is the
stored value (`state`, `name` = the interface, `mac`, `profile_ids`, `ipv4_nets`, ...,
`labels`, and the Neutron driver's `fqdn` and `ipv*_subnet_ids` for DHCP). `status.status` is
what Felix reports for it under /calico/felix/v1 (`up`, `down`, `error`).

Validation is Felix's (`parse_workload_endpoint`) and, when the DHCP fields are present, the
DHCP agent's (`parse_dhcp_endpoint`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from calico.common import datamodel_v1 as dm
from calico.common import resources as res
from calico.common.etcd.base import KVStore
from calico.ctl.kinds import (
    Column,
    Filters,
    Resource,
    SingleKeyKind,
    decode,
    meta_column,
    spec_column,
    status_column,
)
from calico.ctl.store import etcd_call
from calico.dhcp.model import parse_dhcp_endpoint

FELIX_FIELDS = (
    "state",
    "name",
    "mac",
    "profile_ids",
    "profile_id",
    "ipv4_nets",
    "ipv6_nets",
    "ipv4_gateway",
    "ipv6_gateway",
    "ipv4_nat",
    "ipv6_nat",
    "labels",
)
DHCP_FIELDS = ("fqdn", "ipv4_subnet_ids", "ipv6_subnet_ids")


def status_prefix(host: str | None) -> str:
    return dm.felix_host_status_dir(host) if host else dm.FELIX_HOST_DIR


def read_statuses(client: KVStore, host: str | None) -> dict[object, str]:
    """Felix's reported status of every endpoint (of one host, or all), by status key."""
    prefix = status_prefix(host)
    items = etcd_call(f"reading {prefix}", lambda: client.read_prefix(prefix).items)
    statuses: dict[object, str] = {}
    for path, raw in items.items():
        key = dm.parse_key(path)
        if isinstance(key, dm.WorkloadEndpointStatusKey | dm.HostEndpointStatusKey):
            value = decode(raw)
            status = value.get("status") if isinstance(value, dict) else None
            statuses[key] = status if isinstance(status, str) else raw
    return statuses


def endpoint_ips(spec: Mapping[str, Any], *fields: str) -> list[str]:
    out: list[str] = []
    for field in fields:
        value = spec.get(field)
        if isinstance(value, list):
            out += [str(v).split("/")[0] for v in value]
    return out


class EndpointKind(SingleKeyKind):
    """A kind of endpoint (workload or host): Felix reports each one's status."""

    def status_key(self, meta: Mapping[str, str]) -> object:
        """The key of the status Felix reports for the endpoint `meta` names."""
        raise NotImplementedError

    def read_status(self, client: KVStore, resources: Sequence[Resource]) -> None:
        if not resources:
            return
        hosts = {r.metadata["host"] for r in resources}
        statuses = read_statuses(client, hosts.pop() if len(hosts) == 1 else None)
        for resource in resources:
            if (status := statuses.get(self.status_key(resource.metadata))) is not None:
                resource.status = {"status": status}


class WorkloadEndpointKind(EndpointKind):
    name = "workloadEndpoint"
    aliases = ("workloadendpoint", "workloadendpoints", "wep", "weps")
    identity = ("host", "orchestrator", "workload", "name")
    filters = ("host", "orchestrator", "workload")
    spec_fields = FELIX_FIELDS + DHCP_FIELDS

    def key(self, meta: Mapping[str, str]) -> dm.WorkloadEndpointKey:
        return dm.WorkloadEndpointKey(
            meta["host"], meta["orchestrator"], meta["workload"], meta["name"]
        )

    def parse(self, raw: str, key: dm.WorkloadEndpointKey) -> object:
        return res.parse_workload_endpoint(raw, key)

    def check_write(self, raw: str, key: dm.WorkloadEndpointKey, spec: Mapping[str, Any]) -> None:
        self.parse(raw, key)
        if any(field in spec for field in DHCP_FIELDS):
            parse_dhcp_endpoint(raw, key)  # what the DHCP agent reads from the same value

    def prefixes(self, filters: Filters) -> tuple[str, ...]:
        path = dm.HOST_DIR
        if filters.get("host"):
            path += f"/{filters['host']}/workload"
            if filters.get("orchestrator"):
                path += f"/{filters['orchestrator']}"
                if filters.get("workload"):
                    path += f"/{filters['workload']}"
        return (path,)

    def identify(self, path: str) -> dict[str, str] | None:
        key = dm.parse_key(path)
        if not isinstance(key, dm.WorkloadEndpointKey):
            return None
        return {
            "host": key.hostname,
            "orchestrator": key.orchestrator,
            "workload": key.workload,
            "name": key.endpoint,
        }

    def status_key(self, meta: Mapping[str, str]) -> dm.WorkloadEndpointStatusKey:
        return dm.WorkloadEndpointStatusKey.for_endpoint(self.key(meta))

    def after_delete(self, client: KVStore, meta: Mapping[str, str]) -> None:
        # v2 keeps empty directories: .../<workload>/endpoint and .../<workload> (no-op on v3).
        endpoint_dir = self.key(meta).path.rpartition("/")[0]
        if client.delete_empty_dir(endpoint_dir):
            client.delete_empty_dir(endpoint_dir.rpartition("/")[0])

    def columns(self, wide: bool) -> list[Column]:
        columns: list[Column] = [
            ("HOST", meta_column("host")),
            ("ORCHESTRATOR", meta_column("orchestrator")),
            ("WORKLOAD", meta_column("workload")),
            ("NAME", meta_column("name")),
            ("INTERFACE", spec_column("name")),
            ("IPS", lambda d: endpoint_ips(d["spec"], "ipv4_nets", "ipv6_nets")),
            ("STATE", spec_column("state")),
            ("STATUS", status_column("status")),
        ]
        if wide:
            columns += [
                ("MAC", spec_column("mac")),
                ("PROFILES", spec_column("profile_ids")),
                ("LABELS", spec_column("labels")),
            ]
        return columns


KIND = WorkloadEndpointKind()
