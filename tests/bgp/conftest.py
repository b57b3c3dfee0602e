"""Fixtures of the BGP system tests: the shared etcd (``tests/conftest.py``) with Ready set, and a
fabric of lab hosts (``calico.lab.fabric``). Everything a test starts (namespaces, BIRD,
calico-bgp) is stopped by PID and deleted when the fabric closes, also when the test fails.
Helpers: ``bgp_support.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from bgp_support import READY, Store

from calico.lab.etcd_server import EtcdServer
from calico.lab.fabric import Fabric


@pytest.fixture
def store(etcd: EtcdServer) -> Store:
    s = Store(etcd)
    s.put(READY, "true")
    return s


@pytest.fixture
def fabric(etcd: EtcdServer) -> Iterator[Fabric]:
    with Fabric(etcd) as fab:
        yield fab
