"""The calico ML2 mechanism driver (reference: openstack.md §2).

Neutron calls the hooks in its API processes; each hook re-reads what it needs from the DB
(the dicts Neutron hands us can be stale, e.g. a port's security groups) and writes the
translated values to etcd. Nothing is rolled back in Neutron when etcd fails: the periodic
resync (a worker, see get_workers) repairs etcd.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from neutron.plugins.ml2.drivers import mech_agent
from neutron_lib import context as n_context
from neutron_lib.api.definitions import portbindings
from neutron_lib.callbacks import events, registry, resources
from neutron_lib.plugins import constants as plugin_constants
from neutron_lib.plugins import directory
from neutron_lib.plugins.ml2 import api
from oslo_config import cfg

from calico.common import etcd
from calico.openstack import config
from calico.openstack import translation as t
from calico.openstack.store import CalicoStore

log = logging.getLogger(__name__)

AGENT_TYPE_FELIX = "Calico per-host agent (felix)"
AGENT_BINARY_FELIX = "calico-felix"
VIF_TYPE_TAP = "tap"
# port_filter: Felix enforces security groups; mac_address: the MAC Nova gives the host side.
VIF_DETAILS = {"port_filter": True, "mac_address": "00:61:fe:ed:ca:fe"}
ALLOWED_NETWORK_TYPES = ("local", "flat")
_UNBOUND_VIF_TYPES = frozenset(
    {portbindings.VIF_TYPE_UNBOUND, portbindings.VIF_TYPE_BINDING_FAILED}
)


def is_bound(port: dict[str, Any]) -> bool:
    return bool(port.get(portbindings.HOST_ID)) and (
        port.get(portbindings.VIF_TYPE) not in (None, *_UNBOUND_VIF_TYPES)
    )


def connect_store() -> CalicoStore:
    group = cfg.CONF.calico
    return CalicoStore(etcd.connect(group.etcd_api_version, config.etcd_settings(group)))


class NeutronReader:
    """Fresh reads from Neutron's DB, as plain dicts for translation."""

    def __init__(self) -> None:
        self.context = n_context.get_admin_context()

    @property
    def plugin(self) -> Any:
        return directory.get_plugin()

    def port(self, port_id: str) -> dict[str, Any] | None:
        ports = self.plugin.get_ports(self.context, filters={"id": [port_id]})
        return ports[0] if ports else None

    def endpoint_ports(self) -> list[dict[str, Any]]:
        return [p for p in self.plugin.get_ports(self.context) if t.is_endpoint_port(p)]

    def subnets(self, ids: list[str] | None = None) -> dict[str, dict[str, Any]]:
        filters = {"id": ids} if ids is not None else None
        return {s["id"]: s for s in self.plugin.get_subnets(self.context, filters=filters)}

    def subnet(self, subnet_id: str) -> dict[str, Any] | None:
        return self.subnets([subnet_id]).get(subnet_id)

    def security_group_rules(self, sg_ids: list[str] | None = None) -> dict[str, list[Any]]:
        """Rules by SG ID; every listed (or, with None, every existing) SG has an entry."""
        filters = {"id": sg_ids} if sg_ids is not None else None
        groups = self.plugin.get_security_groups(self.context, filters=filters)
        out: dict[str, list[Any]] = {g["id"]: [] for g in groups}
        if out:
            rules = self.plugin.get_security_group_rules(
                self.context, filters={"security_group_id": list(out)}
            )
            for rule in rules:
                out[rule["security_group_id"]].append(rule)
        return out

    def floating_ips(self, port_ids: list[str] | None = None) -> dict[str, list[t.FloatingIP]]:
        """Floating IPs by the port they are associated with."""
        l3 = directory.get_plugin(plugin_constants.L3)
        out: dict[str, list[t.FloatingIP]] = {}
        if l3 is None:
            return out  # no router service: no floating IPs
        filters = {"port_id": port_ids} if port_ids is not None else None
        for fip in l3.get_floatingips(self.context, filters=filters):
            if fip.get("port_id") and fip.get("fixed_ip_address"):
                out.setdefault(fip["port_id"], []).append(
                    t.FloatingIP(fip["fixed_ip_address"], fip["floating_ip_address"])
                )
        return out

    def endpoint(
        self,
        port: dict[str, Any],
        subnets: dict[str, dict[str, Any]] | None = None,
        fips: dict[str, list[t.FloatingIP]] | None = None,
    ) -> dict[str, Any]:
        """The endpoint JSON for a (freshly read) port."""
        if subnets is None:
            subnets = self.subnets([f["subnet_id"] for f in port.get("fixed_ips") or ()])
        if fips is None:
            fips = self.floating_ips([port["id"]])
        return t.endpoint_data(
            port, subnets, port.get("security_groups") or (), fips.get(port["id"], ())
        )


class CalicoMechanismDriver(mech_agent.SimpleAgentMechanismDriverBase):
    def __init__(self) -> None:
        super().__init__(AGENT_TYPE_FELIX, VIF_TYPE_TAP, dict(VIF_DETAILS))
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._store: CalicoStore | None = None

    # -- set-up ------------------------------------------------------------------------------

    def initialize(self) -> None:
        config.register()
        # SG and floating-IP changes have no ML2 hook; Neutron publishes them as callbacks.
        for event in (events.AFTER_CREATE, events.AFTER_UPDATE, events.AFTER_DELETE):
            registry.subscribe(self._on_sg_rule, resources.SECURITY_GROUP_RULE, event)
            registry.subscribe(self._on_floating_ip, resources.FLOATING_IP, event)
        registry.subscribe(self._on_sg_deleted, resources.SECURITY_GROUP, events.AFTER_DELETE)
        registry.subscribe(self._on_sg_updated, resources.SECURITY_GROUP, events.AFTER_UPDATE)

    def store(self) -> CalicoStore:
        """The etcd connection of this process, made on first use.

        Per PID: API servers fork workers after building the driver, and an HTTP session must
        not be shared across a fork. The first use in a process also writes the Felix config
        keys and Ready, so Felix starts as soon as any server has handled a request.
        """
        with self._lock:
            if self._store is None or self._pid != os.getpid():
                store = connect_store()
                store.ensure_felix_config()
                self._store, self._pid = store, os.getpid()
            return self._store

    def get_workers(self) -> list[Any]:
        from calico.openstack.workers import CalicoWorker  # noqa: PLC0415 (API procs skip it)

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
    # would otherwise hold the port DOWN until an L2 agent RPC that never comes.
    def create_port_precommit(self, context: Any) -> None:
        pass

    def update_port_precommit(self, context: Any) -> None:
        pass

    # -- subnets -----------------------------------------------------------------------------

    def create_subnet_postcommit(self, context: Any) -> None:
        self._sync_subnet(context.current["id"])

    def update_subnet_postcommit(self, context: Any) -> None:
        self._sync_subnet(context.current["id"])

    def delete_subnet_postcommit(self, context: Any) -> None:
        self.store().delete_subnet(context.current["id"])

    def _sync_subnet(self, subnet_id: str) -> None:
        subnet = NeutronReader().subnet(subnet_id)
        if subnet is not None and subnet.get("enable_dhcp"):
            self.store().put_subnet(subnet)
        else:
            self.store().delete_subnet(subnet_id)

    # -- ports -------------------------------------------------------------------------------

    def create_port_postcommit(self, context: Any) -> None:
        # Current Neutron binds after this hook, so the port is normally still unbound here.
        port = context.current
        if t.is_endpoint_port(port) and is_bound(port):
            self.write_port(port["id"])

    def update_port_postcommit(self, context: Any) -> None:
        port, original = context.current, context.original
        if not (t.is_endpoint_port(port) or t.is_endpoint_port(original)):
            return
        if _only_status_changed(port, original):
            return  # our own status write coming back
        if is_bound(original) and t.is_endpoint_port(original):
            # Unbound, or moved to another host / VM: the old key must go.
            if not is_bound(port) or t.endpoint_key(original) != t.endpoint_key(port):
                self._delete_endpoint(original)
        if is_bound(port) and t.is_endpoint_port(port):
            self.write_port(port["id"])

    def delete_port_postcommit(self, context: Any) -> None:
        port = context.current
        if t.is_endpoint_port(port) and is_bound(port):
            self._delete_endpoint(port)

    def _delete_endpoint(self, port: dict[str, Any]) -> None:
        key = t.endpoint_key(port)
        store = self.store()
        store.delete_endpoint(key)
        store.cleanup_workload_dirs(key)

    def write_port(self, port_id: str) -> None:
        """Write a port's profiles, then its endpoint, from a fresh DB read."""
        reader = NeutronReader()
        port = reader.port(port_id)
        if port is None or not (t.is_endpoint_port(port) and is_bound(port)):
            return  # deleted or unbound since: the hook for that change handles it
        store = self.store()
        # Profiles first, so Felix never sees an endpoint pointing at a missing profile.
        sg_ids = list(port.get("security_groups") or ())
        for sg_id, rules in reader.security_group_rules(sg_ids).items():
            store.put_profile(sg_id, rules)
        store.put_endpoint(t.endpoint_key(port), reader.endpoint(port))

    # -- callbacks ---------------------------------------------------------------------------

    def _on_sg_rule(self, resource: str, event: str, trigger: Any, payload: Any = None) -> None:
        sg_ids = set()
        for state in getattr(payload, "states", ()) or ():
            if isinstance(state, dict) and state.get("security_group_id"):
                sg_ids.add(state["security_group_id"])
        metadata = getattr(payload, "metadata", None) or {}
        if metadata.get("security_group_id"):
            sg_ids.add(metadata["security_group_id"])
        self.write_profiles(sorted(sg_ids))

    def _on_sg_updated(self, resource: str, event: str, trigger: Any, payload: Any = None) -> None:
        if payload is not None and payload.resource_id:
            self.write_profiles([payload.resource_id])

    def _on_sg_deleted(self, resource: str, event: str, trigger: Any, payload: Any = None) -> None:
        # Neutron refuses to delete an SG that a port still uses, so nothing refers to it.
        if payload is not None and payload.resource_id:
            self.store().delete_profile(payload.resource_id)

    def write_profiles(self, sg_ids: list[str]) -> None:
        if not sg_ids:
            return
        store = self.store()
        for sg_id, rules in NeutronReader().security_group_rules(sg_ids).items():
            store.put_profile(sg_id, rules)

    def _on_floating_ip(self, resource: str, event: str, trigger: Any, payload: Any = None) -> None:
        # states: (new,) on create and delete, (old, new) on update; rewrite every port
        # involved, old and new, so the NAT moves with the association.
        port_ids = set()
        for state in getattr(payload, "states", ()) or ():
            if isinstance(state, dict) and state.get("port_id"):
                port_ids.add(state["port_id"])
        for port_id in sorted(port_ids):
            self.write_port(port_id)


def _only_status_changed(port: dict[str, Any], original: dict[str, Any]) -> bool:
    changed = {k for k in set(port) | set(original) if port.get(k) != original.get(k)}
    return changed <= {"status", "revision_number", "updated_at"} and "status" in changed
