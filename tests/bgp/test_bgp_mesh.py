"""Hosts in a node-to-node mesh with real BIRD, real calico-bgp and real etcd: sessions come up,
Felix-style workload routes (``proto 80``) reach the other hosts and are withdrawn when removed,
and nothing else a host has (its default route, its uplink subnet, other routes) is ever
exported -- neither to the mesh nor to the top-of-rack router, a global eBGP peer."""

from __future__ import annotations

import pytest
from bgp_support import Store, mesh_names, start_hosts, wait_for

from calico.lab.fabric import Fabric

pytestmark = pytest.mark.root

WITHDRAW_BOUND = 3.0  # seconds; BIRD learns a deleted kernel route through netlink at once

TOR_CONFIG = """\
log stderr all;
router id 198.18.0.254;
timeformat protocol "%F %T";
protocol device {}
protocol direct { ipv4; ipv6; interface "br0"; }
template bgp calico_host {
  local as 65000; multihop; connect delay time 1; connect retry time 2;
  ipv4 { import all; export none; };
}
protocol bgp host1 from calico_host { neighbor 198.18.0.1 as 64511; }
protocol bgp host2 from calico_host { neighbor 198.18.0.2 as 64511; }
"""


def test_two_hosts_exchange_workload_routes_and_nothing_else(fabric: Fabric, store: Store) -> None:
    store.peer("198.18.0.254", 65000)  # the top-of-rack router: every host peers with it
    tor = fabric.start_bird(TOR_CONFIG)
    h1, h2 = start_hosts(fabric, 2, store)
    for host in (h1, h2):
        host.bird.wait_established([*mesh_names([h1, h2], host), "Global_198_18_0_254"])
    tor.wait_established(["host1", "host2"])
    log = h1.bgp[-1].text()  # the addresses were detected, and the log says how
    assert (
        "Using IPv4 address 198.18.0.1: the first global address of eth0, the interface "
        "of the default route" in log
    )
    assert "Using IPv6 address fd00:18::1: the first global address of eth0" in log
    # What h1 has besides its workloads: a default route and an uplink subnet (from the
    # fabric), a static route, and a host route to a TAP that is not Felix's (proto boot).
    h1.run(["ip", "route", "add", "203.0.113.0/24", "via", fabric.gateway, "proto", "static"])
    h1.add_tap("tapother")
    h1.run(["ip", "route", "add", "10.65.9.9/32", "dev", "tapother", "proto", "boot"])
    h1.add_tap("tapvm1")
    h1.add_felix_route("10.65.0.5", "tapvm1")
    h1.add_felix_route("fd00:65::5", "tapvm1")
    h1.add_felix_route("203.0.113.77", "tapvm1")  # a floating IP Felix routes to the TAP

    took = wait_for(lambda: "10.65.0.5" in h2.bird_routes(), 10, "the route on h2")
    wait_for(lambda: "fd00:65::5" in h2.bird_routes(v6=True), 10, "the IPv6 route on h2")
    wait_for(lambda: "203.0.113.77" in h2.bird_routes(), 10, "the floating IP on h2")
    learned = h2.bird_routes()
    assert learned["10.65.0.5"]["gateway"] == h1.ip and learned["10.65.0.5"]["dev"] == "eth0"
    assert h2.bird_routes(v6=True)["fd00:65::5"]["gateway"] == h1.ip6
    assert set(learned) == {"10.65.0.5", "203.0.113.77"}  # no default, subnet or other route
    assert set(h2.bird_routes(v6=True)) == {"fd00:65::5"}
    exported = h1.bird.birdc("show", "route", "export", "Mesh_198_18_0_2").stdout
    assert "10.65.0.5/32" in exported and "203.0.113.77/32" in exported
    for never in ("0.0.0.0/0", "198.18.0.0/24", "203.0.113.0/24", "10.65.9.9"):
        assert never not in exported
    # The top-of-rack router hears the same workload routes from h1, and nothing else.
    wait_for(lambda: "10.65.0.5/32" in tor.birdc("show", "route").stdout, 10, "route on ToR")
    tor_routes = tor.birdc("show", "route", "protocol", "host1").stdout
    assert "10.65.0.5/32" in tor_routes and "203.0.113.77/32" in tor_routes
    for never in ("0.0.0.0/0", "198.18.0.0/24", "203.0.113.0/24", "10.65.9.9"):
        assert never not in tor_routes

    # Withdrawn elsewhere within a bounded time.
    h1.del_felix_route("10.65.0.5")
    gone = wait_for(lambda: "10.65.0.5" not in h2.bird_routes(), WITHDRAW_BOUND, "withdrawal")
    print(f"route learned on h2 in {took:.3f} s, withdrawn in {gone:.3f} s")
    assert "fd00:65::5" in h2.bird_routes(v6=True)  # the others stay


def test_three_hosts_mesh_over_etcd_v3(fabric: Fabric, store: Store) -> None:
    store.api = "v3"
    store.put("/calico/v1/Ready", "true")
    hosts = start_hosts(fabric, 3, store, "--ip6", "none")
    for host in hosts:
        host.bird.wait_established(mesh_names(hosts, host, v6=False))
        assert not any(name.startswith("Mesh_fd00") for name in host.bird.protocols())
        tap = host.add_tap("tapvm")
        host.add_felix_route(f"10.65.{host.index}.10", tap)
    for host in hosts:
        for other in hosts:
            if other is not host:
                wait_for(
                    lambda h=host, o=other: f"10.65.{o.index}.10" in h.bird_routes(),
                    10,
                    f"{other}'s route on {host}",
                )
                route = host.bird_routes()[f"10.65.{other.index}.10"]
                assert route["gateway"] == other.ip
        assert f"10.65.{host.index}.10" not in host.bird_routes()  # its own stays Felix's
    assert store.get("/calico/bgp/v1/host/host2/ip_addr_v4") == "198.18.0.2"
    assert store.get("/calico/v1/host/host2/bird_ip") == "198.18.0.2"
    assert store.get("/calico/bgp/v1/host/host2/ip_addr_v6") is None
