"""What the BGP system tests share: writing the BGP data model to the lab etcd through the API
the daemons under test use, waiting for routes and sessions, and starting a set of fabric hosts
(``calico.lab.fabric``) with calico-bgp and BIRD."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from calico.bgp.model import encode_peer
from calico.lab.etcd_server import EtcdServer
from calico.lab.fabric import Fabric, FabricHost

READY = "/calico/v1/Ready"
G = "/calico/bgp/v1/global"
H = "/calico/bgp/v1/host"


class Store:
    """Writes to the lab etcd through the API the daemons under test use (v2 or v3)."""

    def __init__(self, etcd: EtcdServer, api: str = "v2"):
        self.etcd = etcd
        self.api = api

    def put(self, key: str, value: str) -> None:
        if self.api == "v2":
            self.etcd.v2_put(key, value)
        else:
            self.etcd.v3_put(key, value)

    def delete(self, key: str) -> None:
        if self.api == "v2":
            self.etcd.v2_delete(key)
        else:
            self.etcd.v3_delete(key)

    def get(self, key: str) -> str | None:
        return self.etcd.v2_get(key) if self.api == "v2" else self.etcd.v3_get(key)

    def peer(self, ip: str, as_num: int, host: str | None = None) -> None:
        version = 6 if ":" in ip else 4
        where = f"{H}/{host}" if host else G
        self.put(f"{where}/peer_v{version}/{ip}", encode_peer(ip, as_num))

    def env(self) -> dict[str, str]:
        """calico-bgp's environment for this API (FELIX_DATAPLANEDRIVER, as Felix reads it)."""
        return {"FELIX_DATAPLANEDRIVER": "etcd" + self.api}


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02
) -> float:
    """Poll until ``predicate()`` is true; the seconds it took. AssertionError after timeout."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(interval)
    return time.monotonic() - started


def start_hosts(
    fabric: Fabric, count: int, store: Store, *args: str, bird_first: bool = False
) -> list[FabricHost]:
    """``count`` hosts, each with calico-bgp (then BIRD, or BIRD first), all registered."""
    hosts = [fabric.add_host() for _ in range(count)]
    for host in hosts:
        if bird_first:
            host.start_bird()
        host.start_calico_bgp(*args, env=store.env())
    for host in hosts:
        host.bgp[-1].wait_for(r"Wrote .*bird\.conf", timeout=30)
        if not bird_first:
            host.start_bird()
    return hosts


def mesh_names(hosts: list[FabricHost], me: FabricHost, v6: bool = True) -> list[str]:
    names = [f"Mesh_{h.ip.replace('.', '_')}" for h in hosts if h is not me]
    if v6:
        names += [f"Mesh_{str(h.ip6).replace(':', '_')}" for h in hosts if h is not me]
    return names
