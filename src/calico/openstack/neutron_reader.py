"""Fresh reads from Neutron's database, as the plain dicts the translation takes.

The only module that reads Neutron's data: the driver's hooks (calico.openstack.mech_driver) and
the resync (calico.openstack.resync, through calico.openstack.workers) both use a
NeutronReader. The hooks re-read what they need rather than trust the dicts Neutron hands them,
which can be stale (a port's security groups, say).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from neutron_lib import context as n_context
from neutron_lib.plugins import constants as plugin_constants
from neutron_lib.plugins import directory

from calico.openstack.endpoints import FloatingIP, endpoint_data, is_endpoint_port
from calico.openstack.security_groups import address_group_ids


class NeutronReader:
    """Fresh reads from Neutron's DB, as plain dicts for translation (an admin context)."""

    def __init__(self) -> None:
        self.context = n_context.get_admin_context()

    @property
    def plugin(self) -> Any:
        return directory.get_plugin()

    def port(self, port_id: str) -> dict[str, Any] | None:
        ports = self.plugin.get_ports(self.context, filters={"id": [port_id]})
        return ports[0] if ports else None

    def endpoint_ports(self) -> list[dict[str, Any]]:
        return [p for p in self.plugin.get_ports(self.context) if is_endpoint_port(p)]

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

    def address_groups(self, ids: Iterable[str]) -> dict[str, list[str]]:
        """The CIDRs of each address group asked for that exists (a missing one is absent:
        rules referring to it then admit nothing)."""
        wanted = sorted(set(ids))
        getter = getattr(self.plugin, "get_address_groups", None)
        if not wanted or getter is None:
            return {}
        groups = getter(self.context, filters={"id": wanted})
        return {g["id"]: list(g.get("addresses") or ()) for g in groups}

    def security_groups_using_address_group(self, address_group_id: str) -> list[str]:
        rules = self.plugin.get_security_group_rules(
            self.context, filters={"remote_address_group_id": [address_group_id]}
        )
        return sorted({r["security_group_id"] for r in rules})

    def profiles(
        self, sg_ids: list[str] | None = None
    ) -> dict[str, tuple[list[Any], dict[str, list[str]]]]:
        """What security_groups.profile_values needs for each SG (all SGs with None):
        {sg_id: (rules, address groups those rules refer to)}."""
        rules = self.security_group_rules(sg_ids)
        groups = self.address_groups(
            address_group_ids(r for sg_rules in rules.values() for r in sg_rules)
        )
        return {sg_id: (sg_rules, groups) for sg_id, sg_rules in rules.items()}

    def floating_ips(self, port_ids: list[str] | None = None) -> dict[str, list[FloatingIP]]:
        """Floating IPs by the port they are associated with."""
        l3 = directory.get_plugin(plugin_constants.L3)
        out: dict[str, list[FloatingIP]] = {}
        if l3 is None:
            return out  # no router service: no floating IPs
        filters = {"port_id": port_ids} if port_ids is not None else None
        for fip in l3.get_floatingips(self.context, filters=filters):
            if fip.get("port_id") and fip.get("fixed_ip_address"):
                out.setdefault(fip["port_id"], []).append(
                    FloatingIP(fip["fixed_ip_address"], fip["floating_ip_address"])
                )
        return out

    def endpoint(
        self,
        port: dict[str, Any],
        subnets: dict[str, dict[str, Any]] | None = None,
        fips: dict[str, list[FloatingIP]] | None = None,
    ) -> dict[str, Any]:
        """The endpoint JSON for a (freshly read) port."""
        if subnets is None:
            subnets = self.subnets([f["subnet_id"] for f in port.get("fixed_ips") or ()])
        if fips is None:
            fips = self.floating_ips([port["id"]])
        return endpoint_data(
            port, subnets, port.get("security_groups") or (), fips.get(port["id"], ())
        )
