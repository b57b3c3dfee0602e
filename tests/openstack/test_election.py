"""The neutron-server election over a real etcd, both APIs."""

from __future__ import annotations

import time

import pytest

from calico.common import etcd as calico_etcd
from calico.common.datamodel_v1 import NeutronElectionKey
from calico.common.etcd.base import EtcdSettings, KVStore
from calico.lab.etcd_server import EtcdServer
from calico.openstack.election import Elector


@pytest.fixture(params=["v2", "v3"])
def client(request: pytest.FixtureRequest, etcd: EtcdServer) -> KVStore:
    store = calico_etcd.connect(request.param, EtcdSettings((etcd.client_url,)))
    request.addfinalizer(store.close)
    return store


def test_one_master_and_takeover_after_expiry(client: KVStore) -> None:
    a = Elector(client, "server-a", ttl=2)
    b = Elector(client, "server-b", ttl=2)
    assert a.step()
    assert not b.step()
    assert a.step()  # refresh by compare-and-swap
    holder = client.get(NeutronElectionKey().path)
    assert holder == a.id
    # a dies (stops refreshing): its key expires and b takes over.
    deadline = time.monotonic() + 15
    while not b.step():
        assert time.monotonic() < deadline, "no takeover after the TTL"
        time.sleep(0.5)
    assert client.get(NeutronElectionKey().path) == b.id
    assert not a.step()  # a's refresh fails: it steps down
    assert not a.master


def test_stand_down_and_stale_local_holder(client: KVStore) -> None:
    a = Elector(client, "server-a")
    assert a.step()
    a.stand_down()
    assert client.get(NeutronElectionKey().path) is None
    # A holder named like us whose PID is gone is removed at once, not after the TTL.
    client.put(NeutronElectionKey().path, "server-a:999999")
    c = Elector(client, "server-a", pid_alive=lambda pid: pid != 999999)
    assert c.step()
    # ... but a live holder on another host is left alone.
    c.stand_down()
    client.put(NeutronElectionKey().path, "server-z:1")
    d = Elector(client, "server-a")
    assert not d.step()


def test_cas_primitives(client: KVStore) -> None:
    assert client.create("/calico/t/k", "1")
    assert not client.create("/calico/t/k", "2")
    value, version = client.get_versioned("/calico/t/k") or ("", 0)
    assert value == "1"
    new = client.put_if("/calico/t/k", "3", version)
    assert new is not None and new > version
    assert client.put_if("/calico/t/k", "4", version) is None
    assert client.read_prefix_versioned("/calico/t") == {"/calico/t/k": ("3", new)}
    assert not client.delete_if("/calico/t/k", version)
    assert client.delete_if("/calico/t/k", new)
    assert client.get("/calico/t/k") is None
