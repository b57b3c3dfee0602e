"""The lab topology and its probes, without Felix: the host side is programmed by hand.

Two VMs on one compute host. With proxy ARP/NDP and forwarding on but no host routes, the
VMs cannot reach each other; with the /32 and /128 routes added in the HOST namespace they
can (ICMP, TCP, UDP, v4 and v6); with a route removed again, that VM is unreachable. This
proves the wiring and the probes that the Felix end-to-end tests rely on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from calico.lab.netns import list_namespaces
from calico.lab.probes import ping, tcp_ok, udp_ok, wait_until
from calico.lab.topology import ComputeHost, Workload


@pytest.fixture
def host() -> Iterator[ComputeHost]:
    with ComputeHost(forwarding=False, external=True) as host:
        yield host


@pytest.fixture
def pair(host: ComputeHost) -> tuple[Workload, Workload]:
    a = host.add_workload("10.65.0.2", "fd00:65::2", label="vma")
    b = host.add_workload("10.65.0.3", "fd00:65::3", label="vmb")
    host.sysctl("net.ipv4.ip_forward", "1")
    host.sysctl("net.ipv6.conf.all.forwarding", "1")
    for vm in (a, b):
        host.program_by_hand(vm, routes=False)
    return a, b


def test_workload_shape(host: ComputeHost, pair: tuple[Workload, Workload]) -> None:
    a, b = pair
    assert re.fullmatch(r"tap[0-9a-f-]{11}", a.tap) and a.tap == "tap" + a.port_id[:11]
    assert re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", a.mac) and a.mac != b.mac
    vm_routes = a.run(["ip", "route", "show"]).stdout
    assert "default via 169.254.1.1 dev eth0 onlink" in vm_routes
    assert "default via fe80::1 dev eth0" in a.run(["ip", "-6", "route", "show"]).stdout
    assert "10.65.0.2/32" in a.run(["ip", "addr", "show", "eth0"]).stdout
    assert a.endpoint_key("h1") == (
        f"/calico/v1/host/h1/workload/openstack/{a.workload_id}/endpoint/{a.port_id}"
    )
    data = json.loads(a.endpoint_json(["web"], {"role": "frontend"}))
    assert data == {
        "state": "active",
        "name": a.tap,
        "mac": a.mac,
        "profile_ids": ["web"],
        "ipv4_nets": ["10.65.0.2/32"],
        "ipv4_gateway": "169.254.1.1",
        "ipv6_nets": ["fd00:65::2/128"],
        "ipv6_gateway": "fe80::1",
        "labels": {"role": "frontend"},
    }
    # The taps live in the host namespace, not in the root namespace.
    assert a.tap in host.run(["ip", "link", "show"]).stdout


def test_no_routes_no_connectivity_then_routes_give_all(
    host: ComputeHost, pair: tuple[Workload, Workload]
) -> None:
    a, b = pair
    # Without host routes: nothing gets through (the host sends to its default route).
    assert not ping(a, b)
    assert not tcp_ok(a, b, 80)
    assert not udp_ok(a, b, 5000)
    assert not ping(a, b, v6=True)
    # Proxy ARP already answered for the gateway, though: it is the routes that are missing.
    assert a.gateway_resolved()

    for vm in pair:
        host.add_routes(vm)
    assert host.route_to(b.ip) == b.tap and host.route_to(b.ip6 or "") == b.tap
    # v6: the host's TAP link-local address may still be tentative (DAD) for a moment.
    assert wait_until(lambda: ping(a, b, v6=True), 5)
    assert ping(a, b) and ping(b, a)
    assert tcp_ok(a, b, 80) and tcp_ok(b, a, 8080)
    assert udp_ok(a, b, 5000) and udp_ok(b, a, 5001)
    assert tcp_ok(a, b, 80, v6=True) and udp_ok(b, a, 5000, v6=True)
    assert a.gateway_resolved(v6=True) and b.gateway_resolved(v6=True)
    # Nothing listening: the probe must say no (RST), not hang or claim success.
    assert not tcp_ok_without_server(a, b)

    host.del_routes(b)
    assert not ping(a, b)
    assert not tcp_ok(a, b, 80)
    assert not udp_ok(a, b, 5000)
    assert not ping(a, b, v6=True)
    assert ping(host.external, a) and not ping(host.external, b)  # only b's route is gone


def tcp_ok_without_server(a: Workload, b: Workload) -> bool:
    proc = a.run(["nc", "-4", "-N", "-w1", b.ip, "81"], check=False)
    return proc.returncode == 0


def test_external_host_reaches_workloads(host: ComputeHost) -> None:
    a = host.add_workload("10.65.0.4", label="vma")
    host.sysctl("net.ipv4.ip_forward", "1")
    host.program_by_hand(a)
    ext = host.external
    assert ext is not None and ext.ip.startswith("198.18.")
    assert ping(ext, a) and ping(a, ext)
    assert tcp_ok(ext, a, 22) and tcp_ok(a, ext, 443)
    assert udp_ok(a, ext, 53)


def test_close_deletes_every_namespace() -> None:
    host = ComputeHost(external=True)
    vm = host.add_workload("10.65.0.5", "fd00:65::5")
    names = {host.name, vm.name, host.external.name if host.external else ""}
    assert names <= set(list_namespaces())
    host.close()
    assert not names & set(list_namespaces())
