"""Routes across hosts, with packets: three compute hosts on a fabric, each running BIRD,
calico-bgp and calico-felix (``calico.lab.cloud``), a VM on each, every VM in an open profile.

* A VM deleted (its endpoint removed from etcd): Felix removes its route, BIRD withdraws it from
  the other hosts within a bounded time, and traffic to it stops.
* BIRD crashing on one host, and BIRD restarted the planned way (``birdc graceful restart``):
  graceful restart keeps the other hosts' routes to its VMs and its own routes to theirs, and a
  stream of pings through that host loses nothing; a VM added meanwhile is learnt once BIRD is
  back.
* A host's own addresses never travel by BGP: a far host's VM cannot reach a host-only subnet or
  what lies behind a host's default route, although it can as soon as a route is added by hand.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from multihost_support import cloud_on, logs, put_profile, wait_pings, wait_routed

from calico.lab.cloud import Cloud, Vm, host_route, wait
from calico.lab.etcd_server import EtcdServer
from calico.lab.fabric import FabricHost
from calico.lab.netns import NetNS
from calico.lab.probes import ping
from calico.lab.watch import PingStream

pytestmark = pytest.mark.root

WITHDRAW_BOUND = 5.0  # seconds from the etcd delete to the route gone from every other host
OPEN = {"inbound_rules": [{"action": "allow"}], "outbound_rules": [{"action": "allow"}]}


@pytest.fixture(scope="module")
def cloud(etcd_server: EtcdServer) -> Iterator[Cloud]:
    with cloud_on(etcd_server, 3) as c:
        put_profile(c, "open", OPEN)
        for i, host in enumerate(c.hosts, start=1):
            c.add_vm(f"vm{i}", host, ["open"])
        wait_routed(c)
        yield c


def test_a_deleted_vm_is_withdrawn_from_every_host_and_unreachable(cloud: Cloud) -> None:
    h2 = cloud.hosts[1]
    gone = cloud.add_vm("doomed", h2, ["open"])
    wait_routed(cloud)
    for src in ("vm1", "vm3"):
        wait_pings(cloud, cloud.vms[src], gone)
    with (
        PingStream(cloud.vms["vm1"].workload.ns, gone.ip, interval=0.02) as v4,
        PingStream(cloud.vms["vm3"].workload.ns, str(gone.ip6), interval=0.02) as v6,
    ):
        wait(lambda: v4.replies() and v6.replies(), 5, "the streams answered")
        started = time.monotonic()
        cloud.delete_endpoint("doomed")
        took = wait(lambda: cloud.withdrawn_everywhere(gone), WITHDRAW_BOUND, "the withdrawal")
        withdrawn_at = time.time()
        print(f"endpoint deleted -> withdrawn from every host: {took * 1000:.0f} ms")
        time.sleep(1.5)
        for stream in (v4, v6):
            late = [t for t in stream.replies() if t > withdrawn_at + 0.1]
            assert not late, f"{len(late)} replies after the withdrawal"
    assert time.monotonic() - started < WITHDRAW_BOUND + 3
    for v6 in (False, True):
        assert not ping(cloud.vms["vm1"].workload, gone.workload, v6=v6)
    cloud.delete_vm("doomed", endpoint=False)


def _routes_kept(cloud: Cloud, vms: list[Vm]) -> None:
    """Every host still has BIRD's routes to the other hosts' ``vms`` (stale ones included)."""
    for vm in vms:
        for ip in (vm.ip, str(vm.ip6)):
            for host in cloud.hosts:
                if host is not vm.host:
                    assert cloud.learned(host, ip), f"{host.hostname} lost its route to {ip}"


def _streams(cloud: Cloud, owner: Vm, count: int) -> list[PingStream]:
    """Pings to ``owner``'s VM from every other VM, and from ``owner`` to them (v4 and v6)."""
    streams = []
    for vm in cloud.vms.values():
        if vm.host is not owner.host:
            streams.append(PingStream(vm.workload.ns, owner.ip, 0.05, count))
            streams.append(PingStream(owner.workload.ns, str(vm.ip6), 0.05, count))
    return streams


def _no_loss(cloud: Cloud, streams: list[PingStream]) -> None:
    results = [stream.finish() for stream in streams]
    for stream in streams:
        stream.close()
    lost = [(sent, answered) for sent, answered in results if answered < sent]
    assert not lost, f"pings lost through the restart: {results}\n{logs(cloud)}"


def test_bird_restarts_keep_the_other_hosts_routes_and_traffic(cloud: Cloud) -> None:
    h2 = cloud.hosts[1]
    owner = cloud.vms["vm2"]
    assert h2.bird is not None
    before = list(cloud.vms.values())
    streams = _streams(cloud, owner, count=200)  # 10 s of pings across the restart
    wait(lambda: all(s.replies() for s in streams), 5, "every stream answered")

    h2.bird.kill()  # a crash: no goodbye to the peers
    for host in (cloud.hosts[0], cloud.hosts[2]):
        wait(lambda host=host: cloud.established(host) < 4, 10, "the peers seeing h2 go")
    _routes_kept(cloud, before)
    # A VM added on compute-1 while compute-2's BIRD is down reaches compute-3 at once, and
    # compute-2 once its BIRD is back.
    late = cloud.add_vm("late", cloud.hosts[0], ["open"])
    wait(lambda: cloud.learned(cloud.hosts[2], late.ip), 10, "the new VM on compute-3")
    time.sleep(1.0)
    _routes_kept(cloud, before)
    assert not cloud.learned(h2, late.ip)

    h2.start_bird()  # with -R: graceful restart recovery
    cloud.wait_sessions(h2, timeout=30)
    wait(lambda: cloud.routed_everywhere(late), 10, "the new VM on compute-2 after the restart")
    wait_pings(cloud, owner, late)
    _no_loss(cloud, streams)

    # The planned way (what bird.service's stop runs, docs/multihost.md): the same, on purpose.
    streams = _streams(cloud, owner, count=100)
    wait(lambda: all(s.replies() for s in streams), 5, "every stream answered")
    h2.bird.birdc("graceful", "restart")
    assert h2.bird.proc is not None and h2.bird.proc.wait(10) == 0
    time.sleep(1.0)
    _routes_kept(cloud, before)
    h2.start_bird()
    cloud.wait_sessions(h2, timeout=30)
    _no_loss(cloud, streams)
    cloud.delete_vm("late")


PRIVATE_NET = "198.19.77."  # a subnet only compute-1 has (its storage network, say)
BEHIND_DEFAULT = "198.19.200.1"  # an address compute-1 reaches only by its default route


def _private_machine(host: FabricHost) -> NetNS:
    """A machine on a link only ``host`` has, that ``host`` also uses as its default router;
    it has the address BEHIND_DEFAULT on its loopback."""
    ns = NetNS().create()
    try:
        host.ns.add_veth_to(ns, "priv0", "eth0")
        host.ns.set_up("priv0")
        ns.set_up("eth0")
        host.ns.add_addr("priv0", f"{PRIVATE_NET}1/24")
        ns.add_addr("eth0", f"{PRIVATE_NET}2/24")
        ns.add_addr("lo", f"{BEHIND_DEFAULT}/32")
        ns.run(["ip", "route", "add", "default", "via", f"{PRIVATE_NET}1"])
        host.ns.run(["ip", "route", "replace", "default", "via", f"{PRIVATE_NET}2"])
    except BaseException:
        ns.delete()
        raise
    return ns


def test_a_hosts_own_addresses_are_not_reachable_through_bgp(cloud: Cloud) -> None:
    h1, h3 = cloud.hosts[0], cloud.hosts[2]
    far_vm = cloud.vms["vm3"].workload
    targets = [f"{PRIVATE_NET}2", BEHIND_DEFAULT]
    gateway = cloud.fabric.gateway
    private = _private_machine(h1)
    # compute-3's own default route is made weaker than any route BIRD installs (metric 32):
    # a default route exported by compute-1 would win over it.
    h3.ns.run(["ip", "route", "del", "default"])
    h3.ns.run(["ip", "route", "add", "default", "via", gateway, "metric", "1000"])
    try:
        for target in targets:  # compute-1 and its own VM reach both
            assert ping(h1.ns, target) and ping(cloud.vms["vm1"].workload, target)
        assert h1.bird is not None
        wait(
            lambda: f"{PRIVATE_NET}0/24" in h1.bird.birdc("show", "route").stdout,  # type: ignore[union-attr]
            10,
            "compute-1's BIRD seeing the private subnet",
        )
        time.sleep(1.0)  # what BGP would carry, it carries in milliseconds
        learnt = h3.bird_routes()
        assert "default" not in learnt and f"{PRIVATE_NET}0/24" not in learnt, learnt
        for target in targets:
            assert not ping(far_vm, target), f"compute-3's VM reached {target}"
            assert not ping(h3.ns, target), f"compute-3 reached {target}"
        # The path works as soon as compute-3 has a route: only BGP's silence stopped it.
        h3.ns.run(["ip", "route", "add", "198.19.0.0/16", "via", h1.ip])
        for target in targets:
            assert ping(far_vm, target), f"compute-3's VM did not reach {target} by hand"
        h3.ns.run(["ip", "route", "del", "198.19.0.0/16", "via", h1.ip])
        h3.ns.run(["ip", "route", "add", "default", "via", h1.ip, "metric", "500"])
        assert ping(far_vm, BEHIND_DEFAULT), "compute-3's VM did not get behind compute-1"
    finally:
        h3.ns.run(["ip", "route", "del", "default", "via", h1.ip, "metric", "500"], check=False)
        h3.ns.run(["ip", "route", "replace", "default", "via", gateway], check=False)
        h3.ns.run(["ip", "route", "del", "default", "metric", "1000"], check=False)
        h1.ns.run(["ip", "route", "replace", "default", "via", gateway], check=False)
        private.delete()
    assert host_route(h1, cloud.vms["vm3"].ip, "bird")
