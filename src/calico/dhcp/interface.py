"""`RoutedInterfaceDriver`: routed-TAP DHCP with Neutron's stock DHCP agent (openstack.md §6.1).

dhcp_agent.ini: `interface_driver = RoutedInterfaceDriver` (entry point in the
`neutron.interface_drivers` group) or the full path `calico.dhcp.interface.RoutedInterfaceDriver`.

Compared with a bridged interface driver:

* the DHCP port device `ns-...` is attached to nothing: a `dummy` device, or, on kernels without
  the dummy module (neutron-testing.md §9), a bridge with no ports;
* `use_gateway_ips`: the DHCP port takes each subnet's gateway IP instead of a Neutron-allocated
  address (every compute host answers as the gateway; routed, so nothing clashes);
* `bridged = False`: Neutron's Dnsmasq driver then adds `--bridge-interface=ns-...,tap*`, so
  requests arriving on any TAP are served from the ns- device's DHCP contexts;
* `init_l3` removes the on-link subnet routes the kernel adds with the addresses: the host routes
  each VM's /32 (/128) to its TAP, not the whole subnet to ns-.

Neutron is optional (the `openstack` extra): without it this module still imports, but defines
no driver (`NEUTRON_AVAILABLE` is False); nothing else in `calico.dhcp` imports it.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from calico.dhcp.dnsmasq import DEVICE_PREFIX

log = logging.getLogger(__name__)

try:
    from neutron.agent.linux import bridge_lib, ip_lib
    from neutron.agent.linux import interface as neutron_interface
except ImportError:
    NEUTRON_AVAILABLE = False
else:
    NEUTRON_AVAILABLE = True

if NEUTRON_AVAILABLE:

    class RoutedInterfaceDriver(neutron_interface.LinuxInterfaceDriver):  # type: ignore[misc]
        """DHCP ports on routed (not bridged) TAP networks."""

        DEV_NAME_PREFIX = DEVICE_PREFIX  # "ns-", as Neutron's own DHCP devices and the agent's

        @property
        def use_gateway_ips(self) -> bool:
            return True

        @property
        def bridged(self) -> bool:
            return False

        def plug_new(
            self,
            network_id: str,
            port_id: str,
            device_name: str,
            mac_address: str,
            bridge: str | None = None,
            namespace: str | None = None,
            prefix: str | None = None,
            mtu: int | None = None,
        ) -> None:
            wrapper = ip_lib.IPWrapper(namespace=namespace)
            try:
                device = wrapper.add_dummy(device_name)
            except Exception as exc:  # the kernel's "not supported", whatever privsep makes of it
                log.info("No dummy device for %s (%s): using a port-less bridge", device_name, exc)
                device = bridge_lib.BridgeDevice.addbr(device_name, namespace)
            # Before any address is added: a bridge without ports has no carrier, so duplicate
            # address detection would leave its IPv6 addresses tentative (unusable) for ever.
            ip_lib.sysctl([f"net.ipv6.conf.{device_name}.accept_dad=0"], namespace=namespace)
            device.link.set_address(mac_address)
            if mtu:
                self.set_mtu(device_name, mtu, namespace=namespace, prefix=prefix)
            device.link.set_up()

        def init_l3(
            self,
            device_name: str,
            ip_cidrs: list[str],
            namespace: str | None = None,
            preserve_ips: list[str] | None = None,
            clean_connections: bool = False,
        ) -> None:
            super().init_l3(
                device_name,
                ip_cidrs,
                namespace=namespace,
                preserve_ips=preserve_ips,
                clean_connections=clean_connections,
            )
            device = ip_lib.IPDevice(device_name, namespace=namespace)
            for cidr in ip_cidrs:
                subnet = ipaddress.ip_interface(cidr).network
                if subnet.prefixlen == subnet.max_prefixlen:
                    continue  # a host address adds no subnet route
                try:
                    device.route.delete_onlink_route(str(subnet))
                except Exception as exc:  # already gone: fine
                    log.debug("No on-link route %s on %s to delete: %s", subnet, device_name, exc)

        def set_mtu(
            self,
            device_name: str,
            mtu: int,
            namespace: str | None = None,
            prefix: str | None = None,
        ) -> None:
            ip_lib.IPDevice(device_name, namespace=namespace).link.set_mtu(mtu)

        def unplug(
            self,
            device_name: str,
            bridge: str | None = None,
            namespace: str | None = None,
            prefix: str | None = None,
        ) -> None:
            try:
                ip_lib.IPDevice(device_name, namespace=namespace).link.delete()
            except Exception as exc:  # already gone: fine
                log.debug("Could not delete %s: %s", device_name, exc)


def neutron_driver_class() -> Any:
    """The driver class; ImportError naming the missing extra if Neutron is not installed."""
    if not NEUTRON_AVAILABLE:
        raise ImportError("RoutedInterfaceDriver needs Neutron: pip install '.[openstack]'")
    return RoutedInterfaceDriver
