"""Background work of the Neutron side: election, resync and status (openstack.md §4).

Neutron 29 runs no eventlet hub, so this is a neutron_lib worker (started by
neutron-periodic-workers through get_workers) running one plain thread. Only the elected
server resyncs and reports status; every server serves API hooks.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from calico.common.datamodel_v1 import (
    DHCP_SUBNET_DIR,
    FELIX_HOST_DIR,
    HOST_DIR,
    PROFILE_DIR,
    BadKey,
    FelixStatusKey,
    NeutronElectionKey,
    WorkloadEndpointKey,
    WorkloadEndpointStatusKey,
    parse_key,
)
from calico.common.etcd.base import EtcdError, KVStore
from calico.common.quoting import quoted
from calico.common.resources import InvalidValue, decode_object
from calico.openstack import translation as t
from calico.openstack.store import CalicoStore

log = logging.getLogger(__name__)

RESYNC_INTERVAL_SECS = 60
ELECTION_TTL_SECS = 60
ELECTION_REFRESH_SECS = 10
NON_MASTER_CHECK_SECS = 5
STATUS_POLL_SECS = 5

# Felix's endpoint status -> Neutron port status.
PORT_STATUS = {"up": "ACTIVE", "down": "DOWN", "error": "ERROR"}


# --- Election ------------------------------------------------------------------------------


class Elector:
    """One master among several neutron-servers: whoever holds the election key (TTL 60 s,
    refreshed every 10 s by compare-and-swap on its version). A holder that dies stops
    refreshing and the key expires; a holder on this host whose PID is gone is removed at
    once."""

    def __init__(
        self,
        client: KVStore,
        name: str,
        ttl: int = ELECTION_TTL_SECS,
        pid_alive: Callable[[int], bool] | None = None,
    ):
        self.client = client
        self.name = name
        self.id = f"{name}:{os.getpid()}"
        self.ttl = ttl
        self._version: int | None = None  # our key's version while we are master
        self._pid_alive = pid_alive or _pid_alive
        self.key = NeutronElectionKey().path

    @property
    def master(self) -> bool:
        return self._version is not None

    def step(self) -> bool:
        """Refresh or try to take the lead; True if we are master afterwards."""
        try:
            if self._version is not None:
                self._version = self.client.put_if(self.key, self.id, self._version, self.ttl)
                if self._version is None:
                    log.warning("lost the election key; stepping down")
                return self.master
            current = self.client.get_versioned(self.key)
            if current is not None:
                holder, version = current
                if not self._stale(holder):
                    return False
                log.info("deleting the stale election key of %s", quoted(holder))
                self.client.delete_if(self.key, version)
            if self.client.create(self.key, self.id, ttl=self.ttl):
                # Read back for the version to refresh against.
                mine = self.client.get_versioned(self.key)
                if mine is not None and mine[0] == self.id:
                    self._version = mine[1]
                    log.info("elected master as %s", self.id)
        except EtcdError as e:
            log.warning("election step failed: %s", e)
            self._version = None
        return self.master

    def _stale(self, holder: str) -> bool:
        name, _, pid = holder.rpartition(":")
        return name == self.name and pid.isdigit() and not self._pid_alive(int(pid))

    def stand_down(self) -> None:
        if self._version is not None:
            try:
                self.client.delete_if(self.key, self._version)
            except EtcdError as e:
                log.warning("could not delete the election key: %s", e)
            self._version = None


def _pid_alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


# --- Resync --------------------------------------------------------------------------------


def reconcile(
    client: KVStore,
    current: dict[str, tuple[str, int]],
    wanted: dict[str, str],
    *,
    delete_extra: bool = True,
) -> dict[str, int]:
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


def resync(store: CalicoStore, reader: Any) -> dict[str, dict[str, int]]:
    """One pass: etcd vs Neutron's DB for subnets, profiles, endpoints (openstack.md §4.1).

    reader: a mech_driver.NeutronReader. Only keys the driver owns are touched: DHCP
    subnets, `openstack-sg-` profiles and endpoints of the "openstack" orchestrator (including
    keys an older version wrote with IDs that are no longer valid, which are deleted).

    Failures are isolated: an object that cannot be translated is logged once and left out
    (its stale key, if any, is deleted: fail closed) while every other object is reconciled;
    a section that fails as a whole (Neutron's DB unreadable, say) deletes nothing and does not
    stop the other sections, and the Felix config keys are written in any case. Each section's
    counts include "skipped", the objects left out.
    """
    client = store.client
    report: dict[str, dict[str, int]] = {}
    # Profiles before endpoints, so that endpoints never point at missing profiles; extra ones are
    # deleted last, once no endpoint refers to them any more (and only if the profile section
    # knew what it wanted).
    subnets: dict[str, dict[str, Any]] | None = None
    extra_profiles: dict[str, tuple[str, int]] | None = None
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


def _section_failed(what: str, e: Exception) -> dict[str, int]:
    """A whole section failed (nothing deleted for it); the rest of the pass goes on."""
    if isinstance(e, EtcdError):
        log.warning("resync: %s failed: etcd: %s", what, e)
    else:
        log.exception("resync: %s failed; the other sections go on", what)
    return {"failed": 1}


def _translated(what: str, translate: Callable[[], dict[str, str]]) -> dict[str, str] | None:
    """One object's {path: JSON}, or None (logged once) if it cannot be translated."""
    try:
        return translate()
    except t.Untranslatable as e:
        t.warn_once(f"resync: {e}: left out of etcd")
    except Exception as e:
        t.warn_once(f"resync: {what} failed: {type(e).__name__}: {quoted(str(e))}", exc_info=e)
    return None


def _resync_subnets(
    client: KVStore, reader: Any
) -> tuple[dict[str, int], dict[str, dict[str, Any]]]:
    """Reconcile the DHCP subnets; return the counts and Neutron's subnets (for endpoints)."""
    # In each section etcd is read before Neutron: anything written in between is newer than
    # our read, so the CAS writes and deletes cannot undo it.
    etcd_subnets = client.read_prefix_versioned(DHCP_SUBNET_DIR)
    subnets: dict[str, dict[str, Any]] = reader.subnets()
    wanted: dict[str, str] = {}
    skipped = 0
    for subnet_id, subnet in subnets.items():
        if not subnet.get("enable_dhcp"):
            continue
        values = _translated(f"subnet {quoted(subnet_id)}", partial(t.subnet_values, subnet))
        if values is None:
            skipped += 1
        else:
            wanted.update(values)
    return {**reconcile(client, etcd_subnets, wanted), "skipped": skipped}, subnets


def _resync_profiles(
    client: KVStore, reader: Any
) -> tuple[dict[str, int], dict[str, tuple[str, int]]]:
    """Reconcile the wanted profiles; return the counts and the extra ones (to delete last)."""
    etcd_profiles = {
        path: value
        for path, value in client.read_prefix_versioned(PROFILE_DIR).items()
        if _owned_profile(path)
    }
    wanted: dict[str, str] = {}
    skipped = 0
    for sg_id, (rules, groups) in reader.profiles().items():
        translate = partial(t.profile_values, sg_id, rules, groups)
        values = _translated(f"security group {quoted(sg_id)}", translate)
        if values is None:
            skipped += 1
        else:
            wanted.update(values)
    counts = reconcile(client, etcd_profiles, wanted, delete_extra=False)
    extra = {p: v for p, v in etcd_profiles.items() if p not in wanted}
    return {**counts, "skipped": skipped}, extra


def _resync_endpoints(
    store: CalicoStore, reader: Any, subnets: dict[str, dict[str, Any]] | None
) -> dict[str, int]:
    client = store.client
    etcd_endpoints = {
        path: value
        for path, value in client.read_prefix_versioned(HOST_DIR).items()
        if _openstack_endpoint(path)
    }
    if subnets is None:
        subnets = reader.subnets()
    fips = reader.floating_ips()
    wanted: dict[str, str] = {}
    skipped = 0
    for port in reader.endpoint_ports():
        if not _bound(port):
            continue
        translate = partial(_endpoint, reader, port, subnets, fips)
        values = _translated(f"port {quoted(port.get('id'))}", translate)
        if values is None:
            skipped += 1
        else:
            wanted.update(values)
    counts = reconcile(client, etcd_endpoints, wanted)
    for path in set(etcd_endpoints) - set(wanted):
        store.cleanup_workload_dirs(path)
    return {**counts, "skipped": skipped}


def _endpoint(
    reader: Any, port: dict[str, Any], subnets: dict[str, Any], fips: dict[str, Any]
) -> dict[str, str]:
    key = t.endpoint_key(port)
    return {key.path: t.dumps(reader.endpoint(port, subnets, fips))}


def _owned_profile(path: str) -> bool:
    """Every key under an `openstack-sg-` profile is ours, also one whose profile ID is no
    longer valid (an older version's): the resync deletes what it does not want there."""
    parts = path.split("/")
    return (
        len(parts) >= 7
        and path.startswith(PROFILE_DIR + "/")
        and t.sg_id_from_profile(parts[5]) is not None
    )


def _openstack_endpoint(path: str) -> bool:
    """An endpoint of the "openstack" orchestrator, or a key in its part of the tree that
    does not parse (a hostile device_id written by an older version: a BadKey, or with a "/"
    in it, more segments); other orchestrators' keys are never ours."""
    key = parse_key(path)
    if isinstance(key, WorkloadEndpointKey):
        return key.orchestrator == t.ORCHESTRATOR
    parts = path.split("/")
    # "", "calico", "v1", "host", <host>, "workload", <orchestrator>, <workload>, ...
    return (
        (key is None or isinstance(key, BadKey))
        and len(parts) >= 10
        and path.startswith(HOST_DIR + "/")
        and parts[5] == "workload"
        and parts[6] == t.ORCHESTRATOR
    )


def _bound(port: dict[str, Any]) -> bool:
    from calico.openstack.mech_driver import is_bound  # noqa: PLC0415 (needs Neutron)

    return is_bound(port)


# --- Status --------------------------------------------------------------------------------


class StatusReporter:
    """Felix's reports in etcd -> Neutron: the Felix agent row and port status.

    Polls a snapshot of /calico/felix/v1/host every few seconds (simple, and it cannot miss
    an event); writes to Neutron only what changed since the last poll.
    """

    def __init__(self, client: KVStore, plugin: Callable[[], Any], context: Any):
        self.client = client
        self._plugin = plugin
        self.context = context
        self._reported: dict[str, str] = {}  # port id -> status we last wrote
        self._hosts: set[str] = set()

    def poll(self) -> None:
        from calico.openstack.mech_driver import (  # noqa: PLC0415 (needs Neutron)
            AGENT_BINARY_FELIX,
            AGENT_TYPE_FELIX,
        )

        items = self.client.read_prefix(FELIX_HOST_DIR).items
        plugin = self._plugin()
        live_hosts: set[str] = set()
        statuses: dict[tuple[str, str], str] = {}  # (host, port id) -> Neutron status
        for path, value in items.items():
            key = parse_key(path)
            if isinstance(key, FelixStatusKey):
                live_hosts.add(key.hostname)
            elif isinstance(key, WorkloadEndpointStatusKey) and key.orchestrator == "openstack":
                statuses[(key.hostname, key.endpoint)] = _port_status(value)
        for host in sorted(live_hosts):
            # Every poll is a heartbeat: keeps the agent alive for bind_port.
            state = {
                "agent_type": AGENT_TYPE_FELIX,
                "binary": AGENT_BINARY_FELIX,
                "host": host,
                "topic": "N/A",
                "configurations": {},
                "start_flag": host not in self._hosts,
            }
            try:
                plugin.create_or_update_agent(self.context, state)
            except Exception as e:  # one host's row must not stop the others' or the ports'
                t.warn_once(f"status: agent row of {quoted(host)} failed: {e!r}", exc_info=e)
        self._hosts = live_hosts

        for port in plugin.get_ports(self.context):
            if not t.is_endpoint_port(port) or not _bound(port):
                continue
            host = port["binding:host_id"]
            # Only the host the port lives on now counts: a report from its old host is stale.
            status = statuses.get((host, port["id"]))
            if status is None:
                # No report: Felix down on that host, or the report vanished.
                if host in live_hosts and port["id"] not in self._reported:
                    continue  # Felix has not got to this endpoint yet
                status = "ERROR" if port["id"] in self._reported or host not in live_hosts else None
            if status is None or self._reported.get(port["id"]) == status:
                continue
            if port.get("status") != status:
                try:
                    plugin.update_port_status(self.context, port["id"], status, host=host)
                except Exception as e:  # one port (deleted meanwhile, say) must not stop all
                    log.warning("status: port %s: %s", quoted(port["id"]), quoted(repr(e)))
                    continue
            self._reported[port["id"]] = status


def _port_status(raw: str) -> str:
    try:
        status = decode_object(raw, "endpoint status").get("status")
    except InvalidValue:  # not a JSON object
        return "ERROR"
    return PORT_STATUS.get(status, "ERROR") if isinstance(status, str) else "ERROR"


# --- The worker ----------------------------------------------------------------------------


class BackgroundLoop:
    """Election, then (as master) resync every 60 s and status polls; one thread."""

    def __init__(self, store: CalicoStore, elector: Elector, reader: Any, status: Any):
        self.store = store
        self.elector = elector
        self.reader = reader
        self.status = status
        self.stop_event = threading.Event()
        self._next_resync = 0.0
        self._next_election = 0.0

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                self.tick()
                self.stop_event.wait(1.0)
        finally:
            self.elector.stand_down()

    def tick(self) -> None:
        now = time.monotonic()
        if now >= self._next_election:
            was_master = self.elector.master
            master = self.elector.step()
            if master and not was_master:
                self._next_resync = 0.0  # resync at once on taking over
            wait = ELECTION_REFRESH_SECS if master else NON_MASTER_CHECK_SECS
            self._next_election = now + wait + (0 if master else random.uniform(0, 1))  # noqa: S311
        if not self.elector.master:
            return
        # One failed pass must not end the thread (the next one retries), and a failed resync
        # must not stop the status polls or the other way round.
        if now >= self._next_resync:
            self._next_resync = now + RESYNC_INTERVAL_SECS
            try:
                log.info("resync: %s", resync(self.store, self.reader))
            except Exception:
                log.exception("resync pass failed")
        if self.status is not None:
            try:
                self.status.poll()
            except Exception:
                log.exception("status poll failed")


def _make_worker_base() -> type:
    from neutron_lib import worker  # noqa: PLC0415 (only where Neutron runs workers)

    return worker.BaseWorker  # type: ignore[no-any-return]


class CalicoWorker(_make_worker_base()):  # type: ignore[misc]
    """Started by neutron-periodic-workers in its own process."""

    def __init__(self) -> None:
        super().__init__(worker_process_count=1, desc="calico-resync-status")
        self._loop: BackgroundLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, name: str = "calico-worker", desc: str | None = None) -> None:
        super().start(name=name, desc=desc)
        from neutron_lib import context as n_context  # noqa: PLC0415
        from neutron_lib.plugins import directory  # noqa: PLC0415
        from oslo_config import cfg  # noqa: PLC0415

        from calico.openstack.mech_driver import NeutronReader, connect_store  # noqa: PLC0415

        store = connect_store()
        elector = Elector(store.client, cfg.CONF.calico.elector_name)
        status = StatusReporter(store.client, directory.get_plugin, n_context.get_admin_context())
        self._loop = BackgroundLoop(store, elector, NeutronReader(), status)
        self._thread = threading.Thread(target=self._loop.run, name="calico-worker", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop_event.set()

    def reset(self) -> None:
        pass
