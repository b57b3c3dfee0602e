"""`calicoctl endpoint show`: every endpoint (workload and host) with its host, interface,
addresses, profiles, labels as policy sees them (its profiles' labels, then its own: felix.md
§3.4), state and the status Felix reports; filtered by host, orchestrator, workload and a label
selector. `--detailed` adds, per endpoint, every field, whether each profile exists, why Felix
would ignore it, and the tiers of policy that apply to it (from its host's calc graph)."""

from __future__ import annotations

from typing import Any

from calico.common import datamodel_v1 as dm
from calico.common import resources as res
from calico.common.etcd.base import KVStore
from calico.common.selectors import BadSelector, parse_selector
from calico.ctl import output
from calico.ctl.connection import Local
from calico.ctl.errors import Invalid
from calico.ctl.explain.command import load_snapshot
from calico.ctl.explain.model import EndpointRecord, Snapshot
from calico.ctl.workload_endpoints import read_statuses


def _labels(snapshot: Snapshot, profile_ids: tuple[str, ...], own: res.Labels) -> dict[str, str]:
    merged: dict[str, str] = {}
    for profile_id in profile_ids:
        key = dm.ProfileLabelsKey(profile_id)
        raw = snapshot.items.get(key.path)
        try:
            labels = res.parse_profile_labels(raw, key) if raw is not None else res.EMPTY_LABELS
        except res.InvalidValue:
            labels = res.EMPTY_LABELS
        merged.update(labels.items())
    merged.update(own.items())
    return merged


def _row(snapshot: Snapshot, record: EndpointRecord, statuses: dict[object, str]) -> dict[str, Any]:
    key = record.key
    ep = record.endpoint
    row: dict[str, Any] = {"host": key.hostname}
    if isinstance(key, dm.WorkloadEndpointKey):
        row.update(kind="workload", orchestrator=key.orchestrator, workload=key.workload)
        status_key: object = dm.WorkloadEndpointStatusKey.for_endpoint(key)
    else:
        row.update(kind="host", orchestrator=None, workload=None)
        status_key = dm.HostEndpointStatusKey.for_endpoint(key)
    row["name"] = key.endpoint
    row["interface"] = ep.name if ep is not None else None
    row["ips"] = [*record.addresses(4), *record.addresses(6)]
    row["state"] = ep.state if isinstance(ep, res.WorkloadEndpoint) else None
    row["status"] = statuses.get(status_key)
    row["profiles"] = list(ep.profile_ids) if ep is not None else []
    row["labels"] = _labels(snapshot, ep.profile_ids, ep.labels) if ep is not None else {}
    row["key"] = key.path
    if record.problem:
        row["problem"] = record.problem
    return row


def _details(snapshot: Snapshot, record: EndpointRecord, row: dict[str, Any]) -> None:
    ep = record.endpoint
    row["own_labels"] = dict(ep.labels) if ep is not None else {}
    row["missing_profiles"] = [
        p for p in row["profiles"] if dm.ProfileRulesKey(p).path not in snapshot.items
    ]
    if isinstance(ep, res.WorkloadEndpoint):
        row["mac"] = ep.mac
        row["gateways"] = [g for g in (ep.ipv4_gateway, ep.ipv6_gateway) if g]
        row["nat"] = [f"{n.int_ip}->{n.ext_ip}" for n in ep.ipv4_nat + ep.ipv6_nat]
    view = snapshot.view(record.key.hostname)
    if isinstance(record.key, dm.WorkloadEndpointKey):
        update = view.state.workload_endpoints.get(record.key)
        tiers = update.tiers if update is not None else None
    else:
        hupdate = view.state.host_endpoints.get(record.key)
        tiers = hupdate.tiers if hupdate is not None else None
    if tiers is None:
        row["programmed"] = False
        if record.problem is None and ep is not None:
            prefixes = ",".join(view.prefixes)
            row["problem"] = f"ignored by Felix (interface not in InterfacePrefix {prefixes})"
    else:
        row["programmed"] = True
        row["tiers"] = {t.name: list(t.policies) for t in tiers}


def show(
    client: KVStore,
    local: Local | None,
    host: str | None,
    orchestrator: str | None,
    workload: str | None,
    selector: str | None,
    detailed: bool,
    fmt: str,
) -> str:
    try:
        matcher = parse_selector(selector) if selector is not None else None
    except BadSelector as e:
        raise Invalid(f"--selector: {e}") from None
    snapshot = load_snapshot(client, local)
    statuses = read_statuses(client, host)
    rows = []
    for record in snapshot.endpoints:
        key = record.key
        if host and key.hostname != host:
            continue
        if (orchestrator or workload) and not isinstance(key, dm.WorkloadEndpointKey):
            continue
        if isinstance(key, dm.WorkloadEndpointKey) and (
            (orchestrator and key.orchestrator != orchestrator)
            or (workload and key.workload != workload)
        ):
            continue
        row = _row(snapshot, record, statuses)
        if matcher is not None and (record.endpoint is None or not matcher.evaluate(row["labels"])):
            continue
        if detailed:
            _details(snapshot, record, row)
        rows.append(row)
    if fmt in ("json", "yaml"):
        return output.dump(rows, fmt)
    if detailed:
        return "\n".join(_block(row) for row in rows)
    headings = ["HOST", "ORCHESTRATOR", "WORKLOAD", "NAME", "INTERFACE", "IPS", "STATE", "STATUS"]
    fields = ["host", "orchestrator", "workload", "name", "interface", "ips", "state", "status"]
    if fmt == "wide":
        headings += ["PROFILES", "LABELS"]
        fields += ["profiles", "labels"]
    return output.table(headings, [[row[f] for f in fields] for row in rows])


def _block(row: dict[str, Any]) -> str:
    pairs = [(name.replace("_", " "), value) for name, value in row.items() if name != "tiers"]
    text = output.key_values(pairs)
    for tier, policies in (row.get("tiers") or {}).items():
        text += f"tier {tier}:  {', '.join(policies)}\n"
    return text
