"""The lab fabric's self-test, with packets: a VM on each of two hosts, the host side programmed
by hand as Felix would (proxy ARP/NDP, ``proto 80`` host routes), BIRD and calico-bgp on each
host. The VMs reach each other (ICMP v4 and v6, TCP) only once BGP has carried the routes, and
no longer once a route is withdrawn. (Felix itself across hosts is tested on top of this.)"""

from __future__ import annotations

import pytest
from bgp_support import Store, mesh_names, wait_for

from calico.lab.fabric import Fabric
from calico.lab.probes import ping, tcp_ok

pytestmark = pytest.mark.root


def test_vms_on_two_hosts_talk_through_bgp_routes(fabric: Fabric, store: Store) -> None:
    h1, h2 = [fabric.add_host() for _ in range(2)]
    vm1 = h1.add_workload("10.65.1.10", "fd00:65::1:10", label="vm1")
    vm2 = h2.add_workload("10.65.2.10", "fd00:65::2:10", label="vm2")
    for host, vm in ((h1, vm1), (h2, vm2)):
        host.program_by_hand(vm, routes=False)
        host.add_felix_route(vm.ip, vm.tap)
        host.add_felix_route(str(vm.ip6), vm.tap)
    assert not ping(vm1, vm2)  # no BGP yet: h1 has no route to vm2
    for host in (h1, h2):
        host.start_calico_bgp(env=store.env())
        host.start_bird()
    for host in (h1, h2):
        assert host.bird is not None
        host.bird.wait_established(mesh_names([h1, h2], host))
    wait_for(lambda: ping(vm1, vm2), 15, "IPv4 ping across hosts", interval=0.2)
    wait_for(lambda: ping(vm1, vm2, v6=True), 15, "IPv6 ping across hosts", interval=0.2)
    assert tcp_ok(vm2, vm1, 8080) and tcp_ok(vm1, vm2, 8080, v6=True)
    h2.del_felix_route(vm2.ip)
    wait_for(lambda: "10.65.2.10" not in h1.bird_routes(), 3, "the withdrawal on h1")
    assert not ping(vm1, vm2)
