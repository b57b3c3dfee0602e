"""The periodic resync: etcd made to match Neutron's DB (openstack.md §4.1).

Needs no Neutron: it reads Neutron through anything shaped like `NeutronData` (in Neutron, a
calico.openstack.neutron_reader.NeutronReader; in tests/unit/test_openstack_worker.py, plain
dicts) and writes through a CalicoStore.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from calico.common.datamodel_v1 import (
    DHCP_SUBNET_DIR,
    HOST_DIR,
    PROFILE_DIR,
    BadKey,
    WorkloadEndpointKey,
    parse_key,
)
from calico.common.etcd.base import EtcdError, KVStore
from calico.common.quoting import quoted
from calico.openstack.constants import ORCHESTRATOR
from calico.openstack.endpoints import FloatingIP, endpoint_key, is_bound
from calico.openstack.security_groups import profile_values, sg_id_from_profile
from calico.openstack.store import CalicoStore
from calico.openstack.subnets import subnet_values
from calico.openstack.translation import dumps, warn_left_out

log = logging.getLogger(__name__)

Counts = dict[str, int]
Subnets = dict[str, dict[str, Any]]
Versioned = dict[str, tuple[str, int]]  # path -> (value, version)


class NeutronData(Protocol):
    """What the resync reads from Neutron (NeutronReader's methods of the same names)."""

    def subnets(self) -> Subnets:
        """Every subnet by ID."""
        ...

    def profiles(self) -> dict[str, tuple[list[Any], dict[str, list[str]]]]:
        """Every SG: {SG ID: (its rules, the address groups they refer to)}."""
        ...

    def endpoint_ports(self) -> list[dict[str, Any]]:
        """Every endpoint port (bound or not)."""
        ...

    def floating_ips(self) -> dict[str, list[FloatingIP]]:
        """Every associated floating IP, by port ID."""
        ...

    def endpoint(
        self, port: dict[str, Any], subnets: Subnets, fips: dict[str, list[FloatingIP]]
    ) -> dict[str, Any]:
        """The endpoint JSON of a port (endpoints.endpoint_data)."""
        ...


def reconcile(
    client: KVStore,
    current: Versioned,
    wanted: dict[str, str],
    *,
    delete_extra: bool = True,
) -> Counts:
    """Make etcd match wanted for the keys in current (with versions) and wanted.

    Every write is compare-and-swap, so a hook that wrote newer data since our read wins
    (its key has a newer version, our write fails and is dropped).
    """
    counts = {"created": 0, "updated": 0, "deleted": 0, "conflicts": 0}
    for path, value in wanted.items():
        if path not in current:
            ok = client.create(path, value)
            counts["created" if ok else "conflicts"] += 1
        elif current[path][0] != value:
            ok = client.put_if(path, value, current[path][1]) is not None
            counts["updated" if ok else "conflicts"] += 1
    if delete_extra:
        for path, (_, version) in current.items():
            if path not in wanted:
                ok = client.delete_if(path, version)
                counts["deleted" if ok else "conflicts"] += 1
    return counts


def resync(store: CalicoStore, reader: NeutronData) -> dict[str, Counts]:
    """One pass: etcd vs Neutron's DB for subnets, profiles, endpoints (openstack.md §4.1).

    Only keys the driver owns are touched: DHCP subnets, `openstack-sg-` profiles and endpoints
    of the "openstack" orchestrator (including keys an older version wrote with IDs that are no
    longer valid, which are deleted).

    Failures are isolated: an object that cannot be translated is logged once and left out
    (its stale key, if any, is deleted: fail closed) while every other object is reconciled;
    a section that fails as a whole (Neutron's DB unreadable, say) deletes nothing and does not
    stop the other sections, and the Felix config keys are written in any case. Each section's
    counts include "skipped", the objects left out.
    """
    client = store.client
    report: dict[str, Counts] = {}
    # Profiles before endpoints, so that endpoints never point at missing profiles; extra ones are
    # deleted last, once no endpoint refers to them any more (and only if the profile section
    # knew what it wanted).
    subnets: Subnets | None = None
    extra_profiles: Versioned | None = None
    try:
        report["subnets"], subnets = _resync_subnets(client, reader)
    except Exception as e:
        report["subnets"] = _section_failed("subnets", e)
    try:
        report["profiles"], extra_profiles = _resync_profiles(client, reader)
    except Exception as e:
        report["profiles"] = _section_failed("profiles", e)
    try:
        report["endpoints"] = _resync_endpoints(store, reader, subnets)
    except Exception as e:
        report["endpoints"] = _section_failed("endpoints", e)
    if extra_profiles is not None:
        try:
            report["profiles"]["deleted"] = reconcile(client, extra_profiles, {})["deleted"]
        except Exception as e:
            _section_failed("extra profiles", e)
    try:
        store.ensure_felix_config()
    except Exception as e:
        report["felix_config"] = _section_failed("Felix config", e)
    return report


def _section_failed(what: str, e: Exception) -> Counts:
    """A whole section failed (nothing deleted for it); the rest of the pass goes on."""
    if isinstance(e, EtcdError):
        log.warning("resync: %s failed: etcd: %s", what, e)
    else:
        log.exception("resync: %s failed; the other sections go on", what)
    return {"failed": 1}


def _wanted(objects: list[tuple[str, Callable[[], dict[str, str]]]]) -> tuple[dict[str, str], int]:
    """The {path: JSON} of every object that translates, and how many did not.

    objects: (what, translate) for each; one that cannot be translated, or whose translation
    fails unexpectedly, is logged once and left out.
    """
    wanted: dict[str, str] = {}
    skipped = 0
    for what, translate in objects:
        try:
            wanted.update(translate())
        except Exception as e:
            warn_left_out(what, e, "resync: ")
            skipped += 1
    return wanted, skipped


def _resync_subnets(client: KVStore, reader: NeutronData) -> tuple[Counts, Subnets]:
    """Reconcile the DHCP subnets; return the counts and Neutron's subnets (for endpoints)."""
    # In each section etcd is read before Neutron: anything written in between is newer than
    # our read, so the CAS writes and deletes cannot undo it.
    etcd_subnets = client.read_prefix_versioned(DHCP_SUBNET_DIR)
    subnets = reader.subnets()
    wanted, skipped = _wanted(
        [
            (f"subnet {quoted(subnet_id)}", partial(subnet_values, subnet))
            for subnet_id, subnet in subnets.items()
            if subnet.get("enable_dhcp")
        ]
    )
    return {**reconcile(client, etcd_subnets, wanted), "skipped": skipped}, subnets


def _resync_profiles(client: KVStore, reader: NeutronData) -> tuple[Counts, Versioned]:
    """Reconcile the wanted profiles; return the counts and the extra ones (to delete last)."""
    etcd_profiles = {
        path: value
        for path, value in client.read_prefix_versioned(PROFILE_DIR).items()
        if _owned_profile(path)
    }
    wanted, skipped = _wanted(
        [
            (f"security group {quoted(sg_id)}", partial(profile_values, sg_id, rules, groups))
            for sg_id, (rules, groups) in reader.profiles().items()
        ]
    )
    counts = reconcile(client, etcd_profiles, wanted, delete_extra=False)
    extra = {p: v for p, v in etcd_profiles.items() if p not in wanted}
    return {**counts, "skipped": skipped}, extra


def _resync_endpoints(store: CalicoStore, reader: NeutronData, subnets: Subnets | None) -> Counts:
    client = store.client
    etcd_endpoints = {
        path: value
        for path, value in client.read_prefix_versioned(HOST_DIR).items()
        if _openstack_endpoint(path)
    }
    if subnets is None:
        subnets = reader.subnets()
    fips = reader.floating_ips()
    wanted, skipped = _wanted(
        [
            (f"port {quoted(port.get('id'))}", partial(_endpoint, reader, port, subnets, fips))
            for port in reader.endpoint_ports()
            if is_bound(port)
        ]
    )
    counts = reconcile(client, etcd_endpoints, wanted)
    for path in set(etcd_endpoints) - set(wanted):
        store.cleanup_workload_dirs(path)
    return {**counts, "skipped": skipped}


def _endpoint(
    reader: NeutronData,
    port: dict[str, Any],
    subnets: Subnets,
    fips: dict[str, list[FloatingIP]],
) -> dict[str, str]:
    key = endpoint_key(port)
    return {key.path: dumps(reader.endpoint(port, subnets, fips))}


def _owned_profile(path: str) -> bool:
    """Every key under an `openstack-sg-` profile is ours, also one whose profile ID is no
    longer valid (an older version's): the resync deletes what it does not want there."""
    parts = path.split("/")
    return (
        len(parts) >= 7
        and path.startswith(PROFILE_DIR + "/")
        and sg_id_from_profile(parts[5]) is not None
    )


def _openstack_endpoint(path: str) -> bool:
    """An endpoint of the "openstack" orchestrator, or a key in its part of the tree that
    does not parse (a hostile device_id written by an older version: a BadKey, or with a "/"
    in it, more segments); other orchestrators' keys are never ours."""
    key = parse_key(path)
    if isinstance(key, WorkloadEndpointKey):
        return key.orchestrator == ORCHESTRATOR
    parts = path.split("/")
    # "", "calico", "v1", "host", <host>, "workload", <orchestrator>, <workload>, ...
    return (
        (key is None or isinstance(key, BadKey))
        and len(parts) >= 10
        and path.startswith(HOST_DIR + "/")
        and parts[5] == "workload"
        and parts[6] == ORCHESTRATOR
    )
