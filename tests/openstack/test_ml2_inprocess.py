"""The calico mechanism driver inside real ML2 (Neutron's own test base, sqlite in memory),
writing to a real etcd (neutron-testing.md, Recipe C)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from neutron.tests.unit.plugins.ml2 import test_plugin
from neutron_lib import context as n_context
from oslo_config import cfg

from calico.common import etcd as calico_etcd
from calico.common import resources
from calico.common.datamodel_v1 import (
    DhcpSubnetKey,
    GlobalConfigKey,
    ProfileRulesKey,
    ProfileTagsKey,
    ReadyKey,
    WorkloadEndpointKey,
    parse_key,
)
from calico.common.etcd.base import EtcdSettings, KVStore
from calico.lab.etcd_server import EtcdServer
from calico.openstack import config
from calico.openstack.constants import AGENT_BINARY_FELIX, AGENT_TYPE_FELIX

HOST1 = "compute-1"
HOST2 = "compute-2"


def register_felix(plugin: Any, host: str) -> None:
    """The agent row the status worker keeps alive for a live Felix (bind_port needs it)."""
    state = {
        "agent_type": AGENT_TYPE_FELIX,
        "binary": AGENT_BINARY_FELIX,
        "host": host,
        "topic": "N/A",
        "start_flag": True,
        "configurations": {},
    }
    plugin.create_or_update_agent(n_context.get_admin_context(), state)


def endpoints(client: KVStore) -> dict[WorkloadEndpointKey, resources.WorkloadEndpoint]:
    """Every endpoint in etcd, parsed by Felix's validator (raises if one is invalid)."""
    out = {}
    for path, value in client.read_prefix("/calico/v1/host").items.items():
        key = parse_key(path)
        if isinstance(key, WorkloadEndpointKey):
            out[key] = resources.parse_workload_endpoint(value, key)
    return out


def profile(client: KVStore, sg_id: str) -> tuple[resources.ProfileRules, tuple[str, ...]]:
    rules_key = ProfileRulesKey(f"openstack-sg-{sg_id}")
    tags_key = ProfileTagsKey(f"openstack-sg-{sg_id}")
    rules_raw = client.get(rules_key.path)
    tags_raw = client.get(tags_key.path)
    assert rules_raw is not None and tags_raw is not None, f"profile of {sg_id} missing"
    return (
        resources.parse_profile_rules(rules_raw, rules_key),
        resources.parse_profile_tags(tags_raw, tags_key),
    )


class CalicoML2TestBase(test_plugin.Ml2PluginV2TestCase):
    _mechanism_drivers = ["calico"]  # loaded by its entry point name
    etcd_api = "v2"

    @pytest.fixture(autouse=True)
    def _real_etcd(self, etcd: EtcdServer) -> None:
        self.etcd_server = etcd

    def preSetUp(self) -> None:
        config.register()
        cfg.CONF.set_override("etcd_host", "127.0.0.1", "calico")
        cfg.CONF.set_override("etcd_port", self.etcd_server.port, "calico")
        cfg.CONF.set_override("etcd_api_version", self.etcd_api, "calico")

    def setUp(self) -> None:
        super().setUp()
        self.client = calico_etcd.connect(
            self.etcd_api, EtcdSettings((self.etcd_server.client_url,))
        )
        self.addCleanup(self.client.close)
        self.ctx = n_context.get_admin_context()

    # -- REST helpers (through Neutron's real API router) ------------------------------------

    def call(self, method: str, resource: str, data: Any = None, **kw: Any) -> Any:
        req = self._admin_req(method, resource, data, **kw)
        res = req.get_response(self.api)
        assert res.status_int < 300, res.body
        return self.deserialize(self.fmt, res) if res.body else None

    def make_network(self) -> tuple[str, str]:
        net = self.call("POST", "networks", {"network": {"name": "n", "shared": True}})
        subnet = self.call(
            "POST",
            "subnets",
            {
                "subnet": {
                    "network_id": net["network"]["id"],
                    "ip_version": 4,
                    "cidr": "10.65.0.0/24",
                    "enable_dhcp": True,
                    "dns_nameservers": ["8.8.8.8"],
                }
            },
        )
        return net["network"]["id"], subnet["subnet"]["id"]

    def make_port(self, net_id: str, host: str, **extra: Any) -> dict[str, Any]:
        body = {
            "network_id": net_id,
            "device_owner": "compute:nova",
            "device_id": "instance-1",
            "binding:host_id": host,
            **extra,
        }
        return self.call("POST", "ports", {"port": body})["port"]  # type: ignore[no-any-return]

    def make_sg(self, name: str) -> str:
        sg = self.call("POST", "security-groups", {"security_group": {"name": name}})
        return sg["security_group"]["id"]  # type: ignore[no-any-return]

    def add_rule(self, sg_id: str, **rule: Any) -> str:
        body = {"security_group_id": sg_id, "direction": "ingress", "ethertype": "IPv4", **rule}
        res = self.call("POST", "security-group-rules", {"security_group_rule": body})
        return res["security_group_rule"]["id"]  # type: ignore[no-any-return]


class TestCalicoML2(CalicoML2TestBase):
    def test_bound_port_written_and_config_keys(self) -> None:
        register_felix(self.driver, HOST1)
        net_id, subnet_id = self.make_network()
        port = self.make_port(net_id, HOST1)
        assert port["binding:vif_type"] == "tap"
        assert port["binding:vif_details"]["mac_address"] == "00:61:fe:ed:ca:fe"
        assert port["binding:vif_details"]["port_filter"] is True

        eps = endpoints(self.client)
        key = WorkloadEndpointKey(HOST1, "openstack", "instance-1", port["id"])
        assert list(eps) == [key]
        ep = eps[key]
        assert ep.name == "tap" + port["id"][:11]
        assert ep.active
        assert ep.mac == port["mac_address"]
        ip = port["fixed_ips"][0]["ip_address"]
        assert ep.ipv4_nets == (f"{ip}/32",)
        assert ep.ipv4_gateway == "10.65.0.1"
        assert len(ep.profile_ids) == 1  # the project's default SG
        default_sg = ep.profile_ids[0].removeprefix("openstack-sg-")
        assert port["security_groups"] == [default_sg]
        _, tags = profile(self.client, default_sg)  # parses as valid
        assert tags == (default_sg,)

        subnet = json.loads(self.client.get(DhcpSubnetKey(subnet_id).path) or "null")
        assert subnet == {
            "network_id": net_id,
            "cidr": "10.65.0.0/24",
            "gateway_ip": "10.65.0.1",
            "host_routes": [],
            "dns_servers": ["8.8.8.8"],
        }
        assert self.client.get(ReadyKey().path) == "true"
        assert "tap" in (self.client.get(GlobalConfigKey("InterfacePrefix").path) or "")
        assert self.client.get(GlobalConfigKey("EndpointReportingEnabled").path) == "true"
        assert len(self.client.get(GlobalConfigKey("ClusterGUID").path) or "") == 32

    def test_no_felix_no_binding(self) -> None:
        net_id, _ = self.make_network()
        port = self.make_port(net_id, HOST2)
        assert port["binding:vif_type"] == "binding_failed"
        assert endpoints(self.client) == {}

    def test_flat_network_binds_and_vlan_is_refused(self) -> None:
        register_felix(self.driver, HOST1)
        net = self.call(
            "POST",
            "networks",
            {
                "network": {
                    "name": "flat",
                    "provider:network_type": "flat",
                    "provider:physical_network": "physnet1",
                }
            },
        )["network"]
        self.call(
            "POST",
            "subnets",
            {"subnet": {"network_id": net["id"], "ip_version": 4, "cidr": "10.66.0.0/24"}},
        )
        port = self.make_port(net["id"], HOST1)
        assert port["binding:vif_type"] == "tap"
        assert len(endpoints(self.client)) == 1

    def test_updates_move_and_delete(self) -> None:
        register_felix(self.driver, HOST1)
        register_felix(self.driver, HOST2)
        net_id, _ = self.make_network()
        port = self.make_port(net_id, HOST1)
        sg_id = self.make_sg("web")
        self.add_rule(sg_id, protocol="tcp", port_range_min=80, port_range_max=80)

        # SG membership and admin state change: same key, new value.
        self.call(
            "PUT",
            "ports",
            {"port": {"security_groups": [sg_id], "admin_state_up": False}},
            id=port["id"],
        )
        key1 = WorkloadEndpointKey(HOST1, "openstack", "instance-1", port["id"])
        ep = endpoints(self.client)[key1]
        assert ep.profile_ids == (f"openstack-sg-{sg_id}",)
        assert not ep.active
        rules, _ = profile(self.client, sg_id)
        assert [(r.protocol, r.dst_ports) for r in rules.inbound_rules] == [("tcp", (80,))]

        # New fixed IP.
        self.call(
            "PUT",
            "ports",
            {"port": {"fixed_ips": [{"ip_address": "10.65.0.77"}]}},
            id=port["id"],
        )
        assert endpoints(self.client)[key1].ipv4_nets == ("10.65.0.77/32",)

        # Host change: the endpoint moves.
        self.call("PUT", "ports", {"port": {"binding:host_id": HOST2}}, id=port["id"])
        key2 = WorkloadEndpointKey(HOST2, "openstack", "instance-1", port["id"])
        assert list(endpoints(self.client)) == [key2]
        # ... and the old host's now-empty directories went too (v2).
        assert self.client.read_prefix(f"/calico/v1/host/{HOST1}").items == {}

        # A status write (the status worker's) coming back through update_port_postcommit is
        # ignored: the endpoint is not rewritten (a rewrite would give the key a new version).
        assert self.driver.get_port(self.ctx, port["id"])["status"] != "ACTIVE"
        before = self.client.get_versioned(key2.path)
        assert before is not None
        self.driver.update_port_status(self.ctx, port["id"], "ACTIVE", host=HOST2)
        assert self.driver.get_port(self.ctx, port["id"])["status"] == "ACTIVE"
        assert self.client.get_versioned(key2.path) == before

        self.call("DELETE", "ports", id=port["id"])
        assert endpoints(self.client) == {}

    def test_sg_rule_changes_rewrite_profile(self) -> None:
        register_felix(self.driver, HOST1)
        net_id, _ = self.make_network()
        web = self.make_sg("web")
        db = self.make_sg("db")
        self.make_port(net_id, HOST1, security_groups=[db])
        rule_id = self.add_rule(
            db, protocol="tcp", port_range_min=5432, port_range_max=5432, remote_group_id=web
        )
        rules, _ = profile(self.client, db)
        assert [(r.src_tag, r.dst_ports) for r in rules.inbound_rules] == [(web, (5432,))]
        self.call("DELETE", "security-group-rules", id=rule_id)
        rules, _ = profile(self.client, db)
        assert rules.inbound_rules == ()
        # Deleting an unused SG removes its profile.
        self.add_rule(web, protocol="icmp")
        profile(self.client, web)
        self.call("DELETE", "security-groups", id=web)
        assert self.client.get(ProfileRulesKey(f"openstack-sg-{web}").path) is None

    def test_subnet_dhcp_toggle_and_delete(self) -> None:
        _, subnet_id = self.make_network()
        key = DhcpSubnetKey(subnet_id).path
        assert self.client.get(key) is not None
        self.call("PUT", "subnets", {"subnet": {"enable_dhcp": False}}, id=subnet_id)
        assert self.client.get(key) is None
        self.call("PUT", "subnets", {"subnet": {"enable_dhcp": True}}, id=subnet_id)
        assert self.client.get(key) is not None
        self.call("DELETE", "subnets", id=subnet_id)
        assert self.client.get(key) is None

    def test_floating_ip_nat(self) -> None:
        register_felix(self.driver, HOST1)
        net_id, subnet_id = self.make_network()
        port = self.make_port(net_id, HOST1)
        ext = self.call("POST", "networks", {"network": {"name": "ext", "router:external": True}})[
            "network"
        ]
        self.call(
            "POST",
            "subnets",
            {
                "subnet": {
                    "network_id": ext["id"],
                    "ip_version": 4,
                    "cidr": "172.24.4.0/24",
                    "enable_dhcp": False,
                }
            },
        )
        router = self.call(
            "POST",
            "routers",
            {"router": {"name": "r", "external_gateway_info": {"network_id": ext["id"]}}},
        )["router"]
        self.call(
            "PUT",
            "routers",
            {"subnet_id": subnet_id},
            id=router["id"],
            action="add_router_interface",
        )
        fip = self.call(
            "POST",
            "floatingips",
            {"floatingip": {"floating_network_id": ext["id"], "port_id": port["id"]}},
        )["floatingip"]
        key = WorkloadEndpointKey(HOST1, "openstack", "instance-1", port["id"])
        nat = endpoints(self.client)[key].ipv4_nat
        assert [(n.int_ip, n.ext_ip) for n in nat] == [
            (port["fixed_ips"][0]["ip_address"], fip["floating_ip_address"])
        ]
        self.call("PUT", "floatingips", {"floatingip": {"port_id": None}}, id=fip["id"])
        assert endpoints(self.client)[key].ipv4_nat == ()
        self.call("PUT", "floatingips", {"floatingip": {"port_id": port["id"]}}, id=fip["id"])
        assert len(endpoints(self.client)[key].ipv4_nat) == 1
        self.call("DELETE", "floatingips", id=fip["id"])
        assert endpoints(self.client)[key].ipv4_nat == ()


class TestCalicoML2EtcdV3(CalicoML2TestBase):
    """The same driver storing through the etcd v3 API."""

    etcd_api = "v3"

    def test_bound_port_written(self) -> None:
        register_felix(self.driver, HOST1)
        net_id, _ = self.make_network()
        port = self.make_port(net_id, HOST1)
        key = WorkloadEndpointKey(HOST1, "openstack", "instance-1", port["id"])
        assert list(endpoints(self.client)) == [key]
        self.call("PUT", "ports", {"port": {"binding:host_id": HOST2}}, id=port["id"])
        assert endpoints(self.client) == {}  # no Felix on HOST2: unbound, endpoint gone
        assert self.client.get(ReadyKey().path) == "true"


class TestResync(CalicoML2TestBase):
    def test_resync_repairs_both_ways_and_keeps_foreign_data(self) -> None:
        from calico.openstack.config import connect_store
        from calico.openstack.neutron_reader import NeutronReader
        from calico.openstack.resync import resync

        register_felix(self.driver, HOST1)
        net_id, subnet_id = self.make_network()
        port = self.make_port(net_id, HOST1)
        key = WorkloadEndpointKey(HOST1, "openstack", "instance-1", port["id"])
        good = self.client.get(key.path)
        # Damage: endpoint missing, a stale endpoint, a differing subnet, an extra
        # openstack profile; plus another orchestrator's data that must survive.
        self.client.delete(key.path)
        stale = WorkloadEndpointKey(HOST2, "openstack", "gone-vm", "gone-port")
        self.client.put(stale.path, good or "")
        self.client.put(DhcpSubnetKey(subnet_id).path, '{"cidr": "1.2.3.0/24"}')
        self.client.put(DhcpSubnetKey("gone-subnet").path, "{}")
        self.client.put(ProfileRulesKey("openstack-sg-gone").path, "{}")
        self.client.put(ProfileTagsKey("openstack-sg-gone").path, '["gone"]')
        foreign_ep = WorkloadEndpointKey(HOST1, "k8s", "ns.pod", "eth0")
        self.client.put(foreign_ep.path, '{"state": "active"}')
        self.client.put(ProfileRulesKey("k8s-ns.default").path, "{}")

        report = resync(connect_store(), NeutronReader())
        assert report["endpoints"]["created"] == 1
        assert report["endpoints"]["deleted"] == 1
        assert report["profiles"]["deleted"] == 2
        assert self.client.get(key.path) == good
        assert self.client.get(stale.path) is None
        assert self.client.read_prefix(f"/calico/v1/host/{HOST2}").items == {}
        assert json.loads(self.client.get(DhcpSubnetKey(subnet_id).path) or "{}")["cidr"] == (
            "10.65.0.0/24"
        )
        assert self.client.get(DhcpSubnetKey("gone-subnet").path) is None
        assert self.client.get(ProfileRulesKey("openstack-sg-gone").path) is None
        assert self.client.get(foreign_ep.path) == '{"state": "active"}'
        assert self.client.get(ProfileRulesKey("k8s-ns.default").path) == "{}"
        # A second pass finds nothing to do.
        again = resync(connect_store(), NeutronReader())
        assert all(v == 0 for counts in again.values() for v in counts.values()), again

    def test_status_reporter(self) -> None:
        from neutron_lib.plugins import directory

        from calico.common.datamodel_v1 import FelixStatusKey, WorkloadEndpointStatusKey
        from calico.openstack.port_status import StatusReporter

        reporter = StatusReporter(self.client, directory.get_plugin, self.ctx)
        self.client.put(FelixStatusKey(HOST1).path, "{}", ttl=60)
        reporter.poll()  # creates the Felix agent row
        net_id, _ = self.make_network()
        port = self.make_port(net_id, HOST1)
        assert port["binding:vif_type"] == "tap"
        key = WorkloadEndpointKey(HOST1, "openstack", "instance-1", port["id"])
        status = WorkloadEndpointStatusKey.for_endpoint(key)

        def port_status() -> str:
            return self.driver.get_port(self.ctx, port["id"])["status"]  # type: ignore[no-any-return]

        self.client.put(status.path, '{"status": "up"}')
        reporter.poll()
        assert port_status() == "ACTIVE"
        self.client.put(status.path, '{"status": "down"}')
        reporter.poll()
        assert port_status() == "DOWN"
        # A report from a host the port no longer lives on is ignored.
        old = WorkloadEndpointStatusKey(HOST2, "openstack", "instance-1", port["id"])
        self.client.put(old.path, '{"status": "up"}')
        reporter.poll()
        assert port_status() == "DOWN"
        self.client.put(status.path, "not json")
        reporter.poll()
        assert port_status() == "ERROR"
        self.client.put(status.path, '{"status": "up"}')
        reporter.poll()
        self.client.put(status.path, "[" * 100_000)  # nested deeper than json can recurse
        reporter.poll()
        assert port_status() == "ERROR"
        self.client.put(status.path, '{"status": "up"}')
        reporter.poll()
        assert port_status() == "ACTIVE"
        # Felix gone from the host: its endpoints' status is unknown -> ERROR.
        self.client.delete(FelixStatusKey(HOST1).path)
        self.client.delete(status.path)
        reporter.poll()
        assert port_status() == "ERROR"
