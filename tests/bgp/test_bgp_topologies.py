"""Topologies driven by etcd: a route reflector with two clients (no mesh) distributes the
clients' routes with their own next hops; a host's AS changed in etcd re-establishes its
sessions with the new AS (now eBGP), and routes still flow."""

from __future__ import annotations

import pytest
from bgp_support import G, H, Store, start_hosts, wait_for

from calico.lab.fabric import Fabric

pytestmark = pytest.mark.root


def test_a_route_reflector_distributes_its_clients_routes(fabric: Fabric, store: Store) -> None:
    store.put(f"{G}/node_mesh", '{"enabled": false}')
    store.put(f"{H}/host3/rr_cluster_id", "1.0.0.1")  # host3 will be the reflector
    c1, c2, rr = start_hosts(fabric, 3, store)
    for client in (c1, c2):
        assert client.bird is not None
        client.bird.wait_established(["Reflector_198_18_0_3", "Reflector_fd00_18__3"])
        assert not [name for name in client.bird.protocols() if name.startswith("Mesh_")]
    assert rr.bird is not None
    rr.bird.wait_established(
        ["Client_198_18_0_1", "Client_198_18_0_2", "Client_fd00_18__1", "Client_fd00_18__2"]
    )
    c1.add_felix_route("10.65.1.10", c1.add_tap("tapvm"))
    c1.add_felix_route("fd00:65::1:10", "tapvm")
    rr.add_felix_route("10.65.3.10", rr.add_tap("tapvm"))

    wait_for(lambda: "10.65.1.10" in c2.bird_routes(), 10, "c1's route on c2 through the RR")
    wait_for(lambda: "fd00:65::1:10" in c2.bird_routes(v6=True), 10, "c1's IPv6 route on c2")
    wait_for(lambda: "10.65.3.10" in c2.bird_routes(), 10, "the reflector's own route on c2")
    wait_for(lambda: "10.65.1.10" in rr.bird_routes(), 10, "c1's route on the reflector")
    # Reflected, not relayed: the next hop is still c1 (traffic goes straight to it).
    assert c2.bird_routes()["10.65.1.10"]["gateway"] == c1.ip
    assert c2.bird_routes(v6=True)["fd00:65::1:10"]["gateway"] == c1.ip6
    assert c1.bird is not None
    wait_for(lambda: "10.65.3.10" in c1.bird_routes(), 10, "the reflector's route on c1")
    assert "10.65.1.10" not in c1.bird_routes()  # its own route is never reflected back


def test_an_as_changed_in_etcd_re_establishes_sessions(fabric: Fabric, store: Store) -> None:
    store.put(f"{G}/as_num", "64512")
    h1, h2 = start_hosts(fabric, 2, store, "--ip6", "none")
    assert h1.bird is not None and h2.bird is not None
    h1.bird.wait_established(["Mesh_198_18_0_2"])
    assert h1.bird.neighbor_as("Mesh_198_18_0_2") == 64512
    h2.add_felix_route("10.65.2.10", h2.add_tap("tapvm"))
    wait_for(lambda: "10.65.2.10" in h1.bird_routes(), 10, "h2's route on h1")

    store.put(f"{H}/host2/as_num", "65002")
    wait_for(lambda: h1.bird.neighbor_as("Mesh_198_18_0_2") == 65002, 10, "h1's new neighbour AS")
    wait_for(lambda: "local 198.18.0.2 as 65002;" in h2.bird.config.read_text(), 10, "h2's file")
    h1.bird.wait_established(["Mesh_198_18_0_2"], timeout=20)
    h2.bird.wait_established(["Mesh_198_18_0_1"], timeout=20)
    session = h1.bird.birdc("show", "protocols", "all", "Mesh_198_18_0_2").stdout
    assert "Session:          external" in session  # eBGP now
    h2.add_felix_route("10.65.2.11", "tapvm")
    wait_for(lambda: "10.65.2.11" in h1.bird_routes(), 10, "a new route over the eBGP session")
    assert "10.65.2.10" in h1.bird_routes()
