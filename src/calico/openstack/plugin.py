"""The `calico` core plugin (reference: openstack.md §5): ML2 with the calico mechanism driver,
the local and flat type drivers and the router extension, so that `core_plugin = calico` is the
only setting an operator needs.

Floating IPs reach the driver through neutron_lib callbacks (see mech_driver), which the router
code here publishes like the L3 service plugin does; no hooks of our own are needed.
"""

from __future__ import annotations

from neutron.conf.plugins.ml2.drivers import driver_type
from neutron.db import l3_db
from neutron.plugins.ml2 import plugin as ml2_plugin
from neutron_lib.api.definitions import l3 as l3_apidef
from oslo_config import cfg

from calico.openstack import config

MECHANISM_DRIVERS = ["calico"]
TYPE_DRIVERS = ["local", "flat"]
PROJECT_NETWORK_TYPES = ["local", "flat"]


class CalicoPlugin(ml2_plugin.Ml2Plugin, l3_db.L3_NAT_db_mixin):  # type: ignore[misc]
    def __init__(self) -> None:
        config.register()
        # Forced before ML2 loads its managers: the operator sets core_plugin only.
        cfg.CONF.set_override("mechanism_drivers", MECHANISM_DRIVERS, group="ml2")
        cfg.CONF.set_override("type_drivers", TYPE_DRIVERS, group="ml2")
        cfg.CONF.set_override("project_network_types", PROJECT_NETWORK_TYPES, group="ml2")
        driver_type.register_ml2_drivers_flat_opts()  # idempotent; type_flat loads later
        # Flat networks on any physical network name: Calico routes, it bridges nothing.
        cfg.CONF.set_override("flat_networks", ["*"], group="ml2_type_flat")
        super().__init__()

    @property
    def supported_extension_aliases(self) -> list[str]:
        aliases: list[str] = list(super().supported_extension_aliases)
        if l3_apidef.ALIAS not in aliases:
            # Advertising "router" makes Neutron use this plugin as the L3 plugin too.
            aliases.append(l3_apidef.ALIAS)
        return aliases
