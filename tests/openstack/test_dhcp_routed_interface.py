"""RoutedInterfaceDriver with Neutron's real ip_lib, in a lab namespace (root; needs the
`openstack` extra).

Neutron's privileged calls run in-process (we are root; no privsep daemon, no sudo): what is
tested is the driver's effect on a real kernel: the ns- device (dummy, or a port-less bridge
where the kernel has no dummy), its MAC / MTU / state, the gateway addresses without on-link
subnet routes, and its removal.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from neutron import privileged
from neutron.conf.agent import common as agent_config
from oslo_config import cfg

from calico.dhcp.interface import RoutedInterfaceDriver
from calico.lab.netns import NetNS

pytestmark = pytest.mark.root

DEVICE = "ns-5e8b0f9a-3c"
MAC = "02:00:00:00:00:01"
CONTEXTS = (
    privileged.default,
    privileged.link_cmd,
    privileged.namespace_cmd,
    privileged.dhcp_release_cmd,
    privileged.conntrack_cmd,
)


@pytest.fixture(autouse=True)
def in_process_privileges() -> Iterator[None]:
    agent_config.register_root_helper(cfg.CONF)
    # An empty root helper: commands run as ourselves (root), not through sudo.
    cfg.CONF.set_override("root_helper", "", "AGENT")
    for context in CONTEXTS:
        context.set_client_mode(False)
    try:
        yield
    finally:
        for context in CONTEXTS:
            context.set_client_mode(True)
        cfg.CONF.clear_override("root_helper", "AGENT")


def ip_json(ns: NetNS, *args: str) -> Any:
    out = subprocess.run(
        ["ip", "-n", ns.name, "-j", *args], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out or "[]")


def kernel_has_dummy(ns: NetNS) -> bool:
    probe = subprocess.run(
        ["ip", "-n", ns.name, "link", "add", "probe0", "type", "dummy"],
        capture_output=True,
        check=False,
    )
    if probe.returncode == 0:
        subprocess.run(["ip", "-n", ns.name, "link", "del", "probe0"], check=True)
    return probe.returncode == 0


def test_routed_driver_properties() -> None:
    driver = RoutedInterfaceDriver(cfg.CONF)
    assert driver.use_gateway_ips is True
    assert driver.bridged is False
    port = type("Port", (), {"id": "5e8b0f9a-3c1d-4e2f-9a7b-0c1d2e3f4a5b"})()
    assert driver.get_device_name(port) == DEVICE


def test_plug_init_l3_unplug(netns: Callable[[], NetNS]) -> None:
    ns = netns()
    driver = RoutedInterfaceDriver(cfg.CONF)
    driver.plug("net-1", "port-1", DEVICE, MAC, namespace=ns.name, mtu=1400)

    (link,) = ip_json(ns, "-d", "link", "show", "dev", DEVICE)
    expected_kind = "dummy" if kernel_has_dummy(ns) else "bridge"
    assert link["linkinfo"]["info_kind"] == expected_kind
    assert link["address"] == MAC
    assert link["mtu"] == 1400
    assert "UP" in link["flags"]
    # Attached to nothing: no master, and (as a bridge) no ports.
    assert "master" not in link
    assert not [other for other in ip_json(ns, "link", "show") if other.get("master") == DEVICE]

    driver.init_l3(DEVICE, ["10.65.0.1/24", "fd00:65::1/64"], namespace=ns.name)
    (addrs,) = ip_json(ns, "addr", "show", "dev", DEVICE)
    found = {
        f"{a['local']}/{a['prefixlen']}": a
        for a in addrs["addr_info"]
        if not a["local"].startswith("fe80")
    }
    assert set(found) == {"10.65.0.1/24", "fd00:65::1/64"}
    assert not found["fd00:65::1/64"].get("tentative")  # usable by dnsmasq
    routes_v4 = {r["dst"] for r in ip_json(ns, "-4", "route", "show")}
    routes_v6 = {r["dst"] for r in ip_json(ns, "-6", "route", "show")}
    assert "10.65.0.0/24" not in routes_v4
    assert "fd00:65::/64" not in routes_v6

    # Changing the addresses keeps removing the on-link routes.
    driver.init_l3(DEVICE, ["10.65.1.1/24"], namespace=ns.name)
    (addrs,) = ip_json(ns, "-4", "addr", "show", "dev", DEVICE)
    assert [f"{a['local']}/{a['prefixlen']}" for a in addrs["addr_info"]] == ["10.65.1.1/24"]
    assert "10.65.1.0/24" not in {r["dst"] for r in ip_json(ns, "-4", "route", "show")}

    driver.unplug(DEVICE, namespace=ns.name)
    assert not [x for x in ip_json(ns, "link", "show") if x["ifname"] == DEVICE]
    driver.unplug(DEVICE, namespace=ns.name)  # already gone: no error
