"""Restarts: BIRD killed on one host (a crash) or restarted with `birdc graceful restart` leaves
its routes on the others (graceful restart) until it is back; a clean BIRD stop withdraws them;
calico-bgp keeps BIRD's file current while BIRD is down; a restarted calico-bgp rewrites nothing
and disturbs no session."""

from __future__ import annotations

import time

import pytest
from bgp_support import Store, mesh_names, start_hosts, wait_for

from calico.lab.fabric import Fabric, FabricHost

pytestmark = pytest.mark.root


def _since(host: FabricHost, name: str) -> str:
    out = host.bird.birdc("show", "protocols", name).stdout  # type: ignore[union-attr]
    return " ".join(out.splitlines()[-1].split()[4:6])


def _session(host: FabricHost, name: str) -> str:
    return host.bird.birdc("show", "protocols", "all", name).stdout  # type: ignore[union-attr]


def test_graceful_restart_keeps_the_routes_of_a_crashed_bird(fabric: Fabric, store: Store) -> None:
    h1, h2 = start_hosts(fabric, 2, store, "--ip6", "none")
    for host in (h1, h2):
        assert host.bird is not None
        host.bird.wait_established(mesh_names([h1, h2], host, v6=False))
        host.add_felix_route(f"10.65.{host.index}.10", host.add_tap("tapvm"))
    wait_for(lambda: "10.65.1.10" in h2.bird_routes(), 10, "h1's route on h2")
    wait_for(lambda: "10.65.2.10" in h1.bird_routes(), 10, "h2's route on h1")
    assert h1.bird is not None and h2.bird is not None

    h1.bird.kill()  # SIGKILL: no BGP goodbye; h2 keeps h1's routes as stale
    wait_for(lambda: "Mesh_198_18_0_1" not in h2.bird.established(), 10, "h2 seeing h1 go")
    # While h1's BIRD is dead: h2 keeps h1's route, h1's kernel keeps h2's (persist), and a
    # change in etcd still reaches h1's file.
    store.put("/calico/v1/ipam/v4/pool/10.66.0.0-16", '{"cidr": "10.66.0.0/16"}')
    h1.bgp[-1].wait_for(r"BIRD is not reachable")
    wait_for(lambda: "10.66.0.0/16+" in h1.bird.config.read_text(), 10, "h1's file")
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        assert "10.65.1.10" in h2.bird_routes(), "graceful restart dropped the route"
        assert "10.65.2.10" in h1.bird_routes()
        time.sleep(0.1)
    assert "Neighbor graceful restart active" in _session(h2, "Mesh_198_18_0_1")

    h1.bird.start(graceful=True)  # -R: graceful restart recovery
    h1.bird.wait_established(["Mesh_198_18_0_2"], timeout=20)
    h2.bird.wait_established(["Mesh_198_18_0_1"], timeout=20)
    for _ in range(20):
        assert "10.65.1.10" in h2.bird_routes()
        time.sleep(0.05)
    wait_for(
        lambda: "graceful restart active" not in _session(h2, "Mesh_198_18_0_1"),
        10,
        "the end of the graceful restart on h2",
    )

    # A planned restart the graceful way (what docs/multihost.md has bird.service run on stop).
    h1.bird.birdc("graceful", "restart")
    assert h1.bird.proc is not None and h1.bird.proc.wait(10) == 0
    for _ in range(10):
        assert "10.65.1.10" in h2.bird_routes(), "a planned graceful restart dropped the route"
        time.sleep(0.1)
    h1.bird.start(graceful=True)
    h2.bird.wait_established(["Mesh_198_18_0_1"], timeout=20)
    assert "10.65.1.10" in h2.bird_routes()

    # A clean stop says goodbye: then the peers drop the routes at once.
    h1.bird.stop()
    wait_for(lambda: "10.65.1.10" not in h2.bird_routes(), 5, "withdrawal on a clean stop")


def test_a_restarted_calico_bgp_rewrites_nothing_and_keeps_sessions(
    fabric: Fabric, store: Store
) -> None:
    h1, h2 = start_hosts(fabric, 2, store, "--ip6", "none")
    assert h1.bird is not None and h2.bird is not None
    h1.bird.wait_established(["Mesh_198_18_0_2"])
    h1.bgp[-1].wait_for(r"BIRD reloaded")
    before = h1.bird.config.stat().st_mtime_ns
    since = _since(h1, "Mesh_198_18_0_2")
    assert h1.bgp[-1].proc.pid and h1.bgp[-1].stop() == 0  # SIGTERM: exit status 0
    restarted = h1.start_calico_bgp("--ip6", "none", env=store.env())
    restarted.wait_for(r"BIRD reloaded .*: Reconfigured")  # the one reload at start
    time.sleep(1.5)
    assert "Wrote" not in restarted.text()
    assert h1.bird.config.stat().st_mtime_ns == before
    assert _since(h1, "Mesh_198_18_0_2") == since  # the session was never restarted
    assert "Mesh_198_18_0_2" in h1.bird.established()
