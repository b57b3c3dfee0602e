"""The calico ML2 mechanism driver (reference: openstack.md §2).

Neutron calls the hooks in its API processes; each hook re-reads what it needs from the DB
(the dicts Neutron hands us can be stale, e.g. a port's security groups) and writes the
translated values to etcd. Nothing is rolled back in Neutron when etcd fails: the periodic
resync (a worker, see get_workers) repairs etcd.

Failures are isolated per object: a hook or callback that handles several objects (the SGs of a
port, the ports of a floating IP, the SGs using an address group) logs a failing one and carries
on with the others, and never fails the API call for it. The one thing refused at the API is a
port that cannot be an endpoint from its own data (endpoints.port_problems: a hostile
device_id, say): create and update precommit raise InvalidInput, so Neutron answers 400 and the
port is not created or changed.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from neutron.plugins.ml2.drivers import mech_agent
from neutron_lib import exceptions as n_exc
from neutron_lib.callbacks import events, registry, resources
from neutron_lib.plugins.ml2 import api

from calico.common.datamodel_v1 import WorkloadEndpointKey
from calico.common.etcd.base import EtcdError
from calico.common.quoting import quoted
from calico.openstack import config
from calico.openstack.constants import (
    AGENT_TYPE_FELIX,
    ALLOWED_NETWORK_TYPES,
    BINDING_HOST,
    VIF_DETAILS,
    VIF_TYPE_TAP,
)
from calico.openstack.endpoints import (
    endpoint_key,
    is_bound_endpoint,
    is_endpoint_port,
    port_problems,
)
from calico.openstack.neutron_reader import NeutronReader
from calico.openstack.store import CalicoStore
from calico.openstack.translation import Untranslatable, warn_left_out, warn_once
from calico.openstack.workers import CalicoWorker

log = logging.getLogger(__name__)


class CalicoMechanismDriver(mech_agent.SimpleAgentMechanismDriverBase):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(AGENT_TYPE_FELIX, VIF_TYPE_TAP, dict(VIF_DETAILS))
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._store: CalicoStore | None = None

    # -- set-up ------------------------------------------------------------------------------

    def initialize(self) -> None:
        conf = config.register()
        # A bad [calico] etcd option stops Neutron at start, not at the first port.
        config.etcd_settings(conf.calico)
        # SG and floating-IP changes have no ML2 hook; Neutron publishes them as callbacks.
        for event in (events.AFTER_CREATE, events.AFTER_UPDATE, events.AFTER_DELETE):
            registry.subscribe(self._on_sg_rule, resources.SECURITY_GROUP_RULE, event)
            registry.subscribe(self._on_floating_ip, resources.FLOATING_IP, event)
        registry.subscribe(self._on_sg_deleted, resources.SECURITY_GROUP, events.AFTER_DELETE)
        registry.subscribe(self._on_sg_updated, resources.SECURITY_GROUP, events.AFTER_UPDATE)
        # Address groups (neutron/db/address_group_db.py): adding and removing addresses and
        # renaming publish AFTER_UPDATE, deleting (refused while a rule uses it) AFTER_DELETE.
        for event in (events.AFTER_UPDATE, events.AFTER_DELETE):
            registry.subscribe(self._on_address_group, resources.ADDRESS_GROUP, event)

    def store(self) -> CalicoStore:
        """The etcd connection of this process, made on first use.

        Per PID: API servers fork workers after building the driver, and an HTTP session must
        not be shared across a fork. The first use in a process also writes the Felix config
        keys and Ready, so Felix starts as soon as any server has handled a request.
        """
        with self._lock:
            if self._store is None or self._pid != os.getpid():
                store = config.connect_store()
                store.ensure_felix_config()
                self._store, self._pid = store, os.getpid()
            return self._store

    def get_workers(self) -> list[Any]:
        return [CalicoWorker()]

    # -- binding -----------------------------------------------------------------------------

    def get_allowed_network_types(self, agent: Any = None) -> tuple[str, ...]:
        return ALLOWED_NETWORK_TYPES

    def get_mappings(self, agent: Any) -> dict[str, Any]:
        return {}  # never consulted: check_segment_for_agent below does not use mappings

    def check_segment_for_agent(self, segment: dict[str, Any], agent: Any) -> bool:
        network_type = segment[api.NETWORK_TYPE]
        if network_type in ALLOWED_NETWORK_TYPES:
            return True
        log.warning(
            "calico cannot bind segment %s of type %s (only local and flat)",
            segment[api.ID],
            network_type,
        )
        return False

    # Felix reports endpoint status itself (status worker): no provisioning blocks, which
    # would otherwise hold the port DOWN until an L2 agent RPC that never comes. The precommit
    # hooks only refuse ports that could never be endpoints (an HTTP 400, nothing stored).
    def create_port_precommit(self, context: Any) -> None:
        refuse_untranslatable_port(context.current, None)

    def update_port_precommit(self, context: Any) -> None:
        refuse_untranslatable_port(context.current, context.original)

    # -- subnets -----------------------------------------------------------------------------

    def create_subnet_postcommit(self, context: Any) -> None:
        isolated(f"subnet {quoted(context.current['id'])}", self._sync_subnet, context.current)

    def update_subnet_postcommit(self, context: Any) -> None:
        isolated(f"subnet {quoted(context.current['id'])}", self._sync_subnet, context.current)

    def delete_subnet_postcommit(self, context: Any) -> None:
        subnet_id = context.current["id"]
        isolated(f"subnet {quoted(subnet_id)}", lambda: self.store().delete_subnet(subnet_id))

    def _sync_subnet(self, current: dict[str, Any]) -> None:
        subnet = NeutronReader().subnet(current["id"])
        if subnet is not None and subnet.get("enable_dhcp"):
            try:
                self.store().put_subnet(subnet)
                return
            except Untranslatable:
                # Fail closed: no DHCP for a subnet that cannot be served as it is.
                self.store().delete_subnet(current["id"])
                raise
        self.store().delete_subnet(current["id"])

    # -- ports -------------------------------------------------------------------------------

    def create_port_postcommit(self, context: Any) -> None:
        # Current Neutron binds after this hook, so the port is normally still unbound here.
        port = context.current
        if is_bound_endpoint(port):
            isolated(f"port {quoted(port['id'])}", self.write_port, port["id"])

    def update_port_postcommit(self, context: Any) -> None:
        port, original = context.current, context.original
        if not (is_endpoint_port(port) or is_endpoint_port(original)):
            return
        if _only_status_changed(port, original):
            return  # our own status write coming back
        isolated(f"port {quoted(port['id'])}", self._update_port, port, original)

    def _update_port(self, port: dict[str, Any], original: dict[str, Any]) -> None:
        if is_bound_endpoint(original):
            # Unbound, or moved to another host / VM: the old key must go.
            old_key = endpoint_key_or_none(original)
            if old_key is not None and (
                not is_bound_endpoint(port) or endpoint_key_or_none(port) != old_key
            ):
                self._delete_endpoint(old_key)
        if is_bound_endpoint(port):
            self.write_port(port["id"])

    def delete_port_postcommit(self, context: Any) -> None:
        port = context.current
        if is_bound_endpoint(port):
            key = endpoint_key_or_none(port)
            if key is not None:
                isolated(f"port {quoted(port['id'])}", self._delete_endpoint, key)

    def _delete_endpoint(self, key: WorkloadEndpointKey) -> None:
        store = self.store()
        store.delete_endpoint(key)
        store.cleanup_workload_dirs(key)

    def write_port(self, port_id: str) -> None:
        """Write a port's profiles, then its endpoint, from a fresh DB read.

        A port whose own data cannot be translated gets no endpoint, and loses any it had
        (fail closed); a security group that cannot be translated is logged and skipped.
        """
        reader = NeutronReader()
        port = reader.port(port_id)
        if port is None or not is_bound_endpoint(port):
            return  # deleted or unbound since: the hook for that change handles it
        store = self.store()
        # Profiles first, so Felix never sees an endpoint pointing at a missing profile.
        self._write_profiles(reader, store, list(port.get("security_groups") or ()))
        key = endpoint_key_or_none(port)
        if key is None:
            return  # logged; the VM has no connectivity until the port is fixed
        try:
            data = reader.endpoint(port)
        except Untranslatable as e:
            warn_once(f"{e}: no endpoint (the VM has no connectivity)")
            self._delete_endpoint(key)
            return
        store.put_endpoint(key, data)

    # -- callbacks ---------------------------------------------------------------------------

    def _on_sg_rule(self, resource: str, event: str, trigger: Any, payload: Any = None) -> None:
        sg_ids = set()
        for state in getattr(payload, "states", ()) or ():
            if isinstance(state, dict) and state.get("security_group_id"):
                sg_ids.add(state["security_group_id"])
        metadata = getattr(payload, "metadata", None) or {}
        if metadata.get("security_group_id"):
            sg_ids.add(metadata["security_group_id"])
        isolated("security group rule change", self.write_profiles, sorted(sg_ids))

    def _on_sg_updated(self, resource: str, event: str, trigger: Any, payload: Any = None) -> None:
        if payload is not None and payload.resource_id:
            isolated("security group update", self.write_profiles, [payload.resource_id])

    def _on_sg_deleted(self, resource: str, event: str, trigger: Any, payload: Any = None) -> None:
        # Neutron refuses to delete an SG that a port still uses, so nothing refers to it.
        if payload is not None and payload.resource_id:
            sg_id = payload.resource_id
            isolated(f"security group {quoted(sg_id)}", lambda: self.store().delete_profile(sg_id))

    def _on_address_group(
        self, resource: str, event: str, trigger: Any, payload: Any = None
    ) -> None:
        """Addresses added or removed (or the group renamed, or deleted): rewrite the profile
        of every SG with a rule whose remote is this group."""
        if payload is None or not payload.resource_id:
            return
        group_id = payload.resource_id
        what = f"address group {quoted(group_id)}"
        isolated(what, self._rewrite_address_group_users, group_id)

    def _rewrite_address_group_users(self, group_id: str) -> None:
        sg_ids = NeutronReader().security_groups_using_address_group(group_id)
        self.write_profiles(sg_ids)

    def write_profiles(self, sg_ids: list[str]) -> None:
        if sg_ids:
            self._write_profiles(NeutronReader(), self.store(), sg_ids)

    @staticmethod
    def _write_profiles(reader: NeutronReader, store: CalicoStore, sg_ids: list[str]) -> None:
        """Each SG's profile, one at a time: a failing SG does not stop the others."""
        if not sg_ids:
            return
        for sg_id, (rules, groups) in reader.profiles(sg_ids).items():
            isolated(f"security group {quoted(sg_id)}", store.put_profile, sg_id, rules, groups)

    def _on_floating_ip(self, resource: str, event: str, trigger: Any, payload: Any = None) -> None:
        # states: (new,) on create and delete, (old, new) on update; rewrite every port
        # involved, old and new, so the NAT moves with the association.
        port_ids = set()
        for state in getattr(payload, "states", ()) or ():
            if isinstance(state, dict) and state.get("port_id"):
                port_ids.add(state["port_id"])
        for port_id in sorted(port_ids):
            isolated(f"port {quoted(port_id)}", self.write_port, port_id)


# Port fields whose change can make a port refusable (see refuse_untranslatable_port).
_PORT_CHECKED_FIELDS = ("id", "device_id", "device_owner", BINDING_HOST, "mac_address")


def refuse_untranslatable_port(port: dict[str, Any], original: dict[str, Any] | None) -> None:
    """Raise InvalidInput (HTTP 400) for an endpoint port that could not be an endpoint.

    An update that leaves every checked field as it was goes through even if the port was
    already bad (one stored by an older version): refusing it would only block unrelated
    changes, and the port stays without an endpoint (logged) until its fields are fixed.
    """
    problems = port_problems(port)
    if not problems:
        return
    if original is not None and all(port.get(f) == original.get(f) for f in _PORT_CHECKED_FIELDS):
        warn_once(f"port {quoted(port.get('id'))}: " + "; ".join(problems))
        return
    raise n_exc.InvalidInput(
        error_message="Calico cannot network this port: " + "; ".join(problems)
    )


def endpoint_key_or_none(port: dict[str, Any]) -> WorkloadEndpointKey | None:
    """The port's endpoint key, or None (logged once) when its data cannot form one."""
    try:
        return endpoint_key(port)
    except Untranslatable as e:
        warn_once(f"{e}: no endpoint (the VM has no connectivity)")
        return None


def isolated(what: str, fn: Callable[..., Any], *args: Any) -> bool:
    """Run fn(*args) for one object; a failure is logged and never reaches the caller (the
    API request, or the loop over the other objects). True if it succeeded.

    Untranslatable data is logged once (the object stays out of etcd: fail closed); an etcd
    failure is logged each time (the resync repairs it); anything else once with its
    traceback.
    """
    try:
        fn(*args)
        return True
    except EtcdError as e:
        log.warning("%s: etcd failed, the resync will repair it: %s", what, e)
    except Exception as e:
        warn_left_out(what, e)
    return False


def _only_status_changed(port: dict[str, Any], original: dict[str, Any]) -> bool:
    changed = {k for k in set(port) | set(original) if port.get(k) != original.get(k)}
    return changed <= {"status", "revision_number", "updated_at"} and "status" in changed
