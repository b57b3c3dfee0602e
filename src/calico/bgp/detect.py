"""This host's BGP address of one family, when `--ip`/`--ip6` do not give it: the address of
the interface the default route leaves by (its preferred source when the route names one),
read over netlink in the network namespace calico-bgp runs in. The result says how it was
found, for the log (bgp.md §5.3: autodetection picking the wrong interface was a common
problem, so the method is always logged and `--ip` overrides it).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute

IFA_F_TENTATIVE = 0x40
IFA_F_DEPRECATED = 0x20
IFA_F_DADFAILED = 0x08
RT_TABLE_MAIN = 254
_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}


@dataclass(frozen=True, slots=True)
class Detected:
    address: str
    method: str  # e.g. "the address of eth0, the interface of the default route"


def detect(version: int) -> Detected | None:
    """The address, or None if there is no default route or no usable address on its
    interface."""
    family = _FAMILIES[version]
    with IPRoute() as ipr:
        routes = [r for r in ipr.get_default_routes(family=family) if _table(r) == RT_TABLE_MAIN]
        routes.sort(key=lambda r: r.get_attr("RTA_PRIORITY") or 0)
        for route in routes:
            index = route.get_attr("RTA_OIF")
            if index is None:
                continue
            name = _link_name(ipr, index)
            source = route.get_attr("RTA_PREFSRC")
            if source and _usable(source, version):
                return Detected(str(ipaddress.ip_address(source)), f"the preferred source of "
                                f"the default route (via {name})")  # fmt: skip
            for addr in ipr.get_addr(family=family, index=index):
                text = addr.get_attr("IFA_ADDRESS")
                flags = addr.get_attr("IFA_FLAGS") or addr["flags"]
                bad = flags & (IFA_F_TENTATIVE | IFA_F_DEPRECATED | IFA_F_DADFAILED)
                if addr["scope"] == 0 and not bad and _usable(text, version):
                    return Detected(
                        str(ipaddress.ip_address(text)),
                        f"the first global address of {name}, the interface of the default route",
                    )
    return None


def local_addresses() -> set[str]:
    """Every address on this network namespace's interfaces (canonical text)."""
    with IPRoute() as ipr:
        found = {addr.get_attr("IFA_ADDRESS") for addr in ipr.get_addr()}
    return {str(ipaddress.ip_address(a)) for a in found if a}


def _table(route: Any) -> int:
    return int(route.get_attr("RTA_TABLE") or route["table"])


def _link_name(ipr: IPRoute, index: int) -> str:
    links = ipr.get_links(index)
    return str(links[0].get_attr("IFLA_IFNAME")) if links else f"interface {index}"


def _usable(text: object, version: int) -> bool:
    try:
        addr = ipaddress.ip_address(str(text))
    except ValueError:
        return False
    return addr.version == version and not (
        addr.is_loopback or addr.is_link_local or addr.is_multicast or addr.is_unspecified
    )
