"""The agent's `ns-` DHCP interfaces, managed with iproute2 in the agent's own namespace.

Each interface is a device with no ports and no peer that only carries the gateway addresses
dnsmasq serves from. Upstream used a `dummy` device; kernels without the dummy module (the lab's,
neutron-testing.md §9) get a port-less bridge instead, which behaves the same for this purpose.

Addresses are added with `noprefixroute`: the kernel then adds no on-link subnet route, so the
host keeps routing each VM's /32 (/128) to its TAP rather than the whole subnet to ns-X. IPv6
addresses also get `nodad`: a device without carrier never finishes duplicate address detection.

Devices we create are marked with an interface alias, so a restarted agent can find and delete
the ones a previous run left behind without touching any other `ns-` device on the host (the
stock Neutron DHCP agent uses that prefix too).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import subprocess
from collections.abc import Iterable

from calico.dhcp.dnsmasq import DhcpInterface

log = logging.getLogger(__name__)

ALIAS = "calico-dhcp-agent"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def create_portless_device(name: str) -> str:
    """Create `name` as a dummy device, or a bridge where the kernel has no dummy; its kind."""
    if ip("link", "add", name, "type", "dummy", check=False).returncode == 0:
        return "dummy"
    ip("link", "add", name, "type", "bridge")
    return "bridge"


def _links() -> list[dict[str, object]]:
    links: list[dict[str, object]] = json.loads(ip("-j", "-d", "link", "show").stdout or "[]")
    return links


def _global_addresses(name: str) -> set[str]:
    """The device's addresses, as address/prefix, leaving out IPv6 link-local ones."""
    data = json.loads(ip("-j", "addr", "show", "dev", name).stdout or "[]")
    found = set()
    for link in data:
        for info in link.get("addr_info", []):
            addr = ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}")
            if not addr.ip.is_link_local:
                found.add(str(addr))
    return found


class DhcpLinks:
    """Keeps the agent's ns- devices and their addresses as wanted."""

    def ensure(self, interfaces: Iterable[DhcpInterface]) -> dict[str, str]:
        """Create, update and delete our devices; the ones that could not be set up, with the
        reason. Each device is handled on its own: one failure leaves the others working."""
        failed: dict[str, str] = {}
        wanted = {iface.name: iface for iface in interfaces}
        existing = {str(link["ifname"]): link for link in _links()}
        for name, link in existing.items():
            if link.get("ifalias") == ALIAS and name not in wanted:
                log.info("Deleting DHCP interface %s", name)
                ip("link", "del", name, check=False)
        for name, iface in wanted.items():
            try:
                self._ensure_one(iface, existing.get(name))
            except Exception as exc:
                failed[name] = str(exc)
        return failed

    def _ensure_one(self, iface: DhcpInterface, link: dict[str, object] | None) -> None:
        name = iface.name
        if link is None:
            kind = create_portless_device(name)
            ip("link", "set", name, "alias", ALIAS)
            log.info("Created DHCP interface %s (%s)", name, kind)
        elif link.get("ifalias") != ALIAS:
            # Not ours (e.g. a stock Neutron DHCP agent's): never change or delete it.
            raise RuntimeError(f"interface {name} exists and was not made by this agent")
        ip("link", "set", name, "up")
        self._set_addresses(name, iface.addresses)

    @staticmethod
    def _set_addresses(name: str, addresses: Iterable[str]) -> None:
        wanted = {str(ipaddress.ip_interface(a)) for a in addresses}
        current = _global_addresses(name)
        for addr in sorted(current - wanted):
            ip("addr", "del", addr, "dev", name)
        for addr in sorted(wanted - current):
            extra = ["nodad"] if ":" in addr else []
            ip("addr", "add", addr, "dev", name, "noprefixroute", *extra)

    def remove_all(self) -> None:
        """Delete every device marked as ours."""
        for link in _links():
            if link.get("ifalias") == ALIAS:
                log.info("Deleting DHCP interface %s", link["ifname"])
                ip("link", "del", str(link["ifname"]), check=False)
