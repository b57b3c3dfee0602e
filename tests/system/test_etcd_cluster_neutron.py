"""The Neutron driver (inside Neutron's real ML2, sqlite in memory) against a real three-member
etcd cluster named by `[calico] etcd_endpoints`, with a member down (issue 14).

The endpoint order is kept (no shuffle) so that the member that is down is always the one the
driver tries first: a port create must still reach etcd, through the next member. Then the
member the driver is using is killed too: the next port still gets there, and so does the
resync (which the elected server runs on the same kind of connection)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from neutron.tests.unit.plugins.ml2 import test_plugin
from neutron_lib import context as n_context
from oslo_config import cfg

from calico.common.datamodel_v1 import WorkloadEndpointKey
from calico.common.etcd import transport
from calico.lab.etcd_cluster import EtcdCluster
from calico.openstack import config
from calico.openstack.constants import AGENT_BINARY_FELIX, AGENT_TYPE_FELIX

pytestmark = pytest.mark.root
HOST = "compute-1"


@pytest.fixture(scope="module")
def cluster() -> Iterator[EtcdCluster]:
    with EtcdCluster() as c:
        yield c


class ClusterML2Base(test_plugin.Ml2PluginV2TestCase):
    _mechanism_drivers = ["calico"]
    etcd_api = "v2"

    @pytest.fixture(autouse=True)
    def _cluster_one_down(self, cluster: EtcdCluster, monkeypatch: pytest.MonkeyPatch) -> None:
        for member in cluster.members:  # a previous test may have left members down
            if not member.running:
                cluster.start_members([member])
        self.cluster = cluster
        self.down = cluster.members[0]
        cluster.stop_members([self.down])
        # Keep etcd_endpoints' order: the member that is down is tried first, every time.
        monkeypatch.setattr(transport.random, "shuffle", lambda urls: None)

    def preSetUp(self) -> None:
        config.register()
        cfg.CONF.set_override("etcd_endpoints", self.cluster.client_urls, "calico")
        cfg.CONF.set_override("etcd_api_version", self.etcd_api, "calico")
        self.addCleanup(cfg.CONF.clear_override, "etcd_endpoints", "calico")

    def setUp(self) -> None:
        super().setUp()
        self.ctx = n_context.get_admin_context()

    def get(self, key: str) -> str | None:
        if self.etcd_api == "v2":
            return self.cluster.v2_get(key)
        return self.cluster.v3_get(key)

    def call(self, method: str, resource: str, data: Any = None, **kw: Any) -> Any:
        res = self._admin_req(method, resource, data, **kw).get_response(self.api)
        assert res.status_int < 300, res.body
        return self.deserialize(self.fmt, res) if res.body else None

    def make_port(self, net_id: str, device_id: str) -> dict[str, Any]:
        body = {"network_id": net_id, "device_owner": "compute:nova", "device_id": device_id,
                "binding:host_id": HOST}  # fmt: skip
        return self.call("POST", "ports", {"port": body})["port"]  # type: ignore[no-any-return]

    def endpoint(self, port: dict[str, Any]) -> dict[str, Any] | None:
        key = WorkloadEndpointKey(HOST, "openstack", port["device_id"], port["id"])
        raw = self.get(key.path)
        return None if raw is None else dict(json.loads(raw))

    def test_port_create_reaches_etcd_with_a_member_down(self) -> None:
        state = {"agent_type": AGENT_TYPE_FELIX, "binary": AGENT_BINARY_FELIX, "host": HOST,
                 "topic": "N/A", "start_flag": True, "configurations": {}}  # fmt: skip
        self.driver.create_or_update_agent(self.ctx, state)
        net = self.call("POST", "networks", {"network": {"name": "n", "shared": True}})
        net_id = net["network"]["id"]
        self.call(
            "POST",
            "subnets",
            {"subnet": {"network_id": net_id, "ip_version": 4, "cidr": "10.65.0.0/24"}},
        )
        port = self.make_port(net_id, "instance-1")
        assert port["binding:vif_type"] == "tap"
        written = self.endpoint(port)
        assert written is not None and written["name"] == "tap" + port["id"][:11]
        assert self.get("/calico/v1/Ready") == "true"

        # The member the driver moved to dies as well: the next port goes to the third.
        store = self.driver.mechanism_manager.mech_drivers["calico"].obj.store()
        using = self.cluster.member(int(store.client.endpoint.rpartition(":")[2]))
        assert using is not self.down and using.running
        self.cluster.start_members([self.down])  # keep a quorum: two members up
        self.cluster.kill(using)
        self.cluster.leader()
        second = self.make_port(net_id, "instance-2")
        assert self.endpoint(second) is not None
        assert store.client.endpoint != using.client_url

        # The resync goes through the same kind of connection: it repairs a lost endpoint.
        from calico.openstack.neutron_reader import NeutronReader
        from calico.openstack.resync import resync

        key = WorkloadEndpointKey(HOST, "openstack", "instance-1", port["id"])
        if self.etcd_api == "v2":
            self.cluster.v2_delete(key.path)
        else:
            self.cluster.v3_delete(key.path)
        report = resync(config.connect_store(), NeutronReader())
        assert report["endpoints"]["created"] == 1
        assert self.endpoint(port) is not None


class TestClusterV2(ClusterML2Base):
    etcd_api = "v2"


class TestClusterV3(ClusterML2Base):
    etcd_api = "v3"


del ClusterML2Base  # not collected itself
