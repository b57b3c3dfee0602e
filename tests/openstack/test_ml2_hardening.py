"""Hostile and unlucky input on the Neutron side (issue 12), with the calico driver inside real
ML2 (Neutron's own test base, sqlite in memory) and a real etcd: ports that cannot be endpoints
are refused with 400, address groups are followed, protocol `ip` works, and one bad object
never stops the hooks or the resync for the others."""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import pytest
from test_ml2_inprocess import HOST1, CalicoML2TestBase, endpoints, profile, register_felix

from calico.common.datamodel_v1 import (
    DhcpSubnetKey,
    ProfileRulesKey,
    ProfileTagsKey,
    ReadyKey,
    WorkloadEndpointKey,
)


class TestHardening(CalicoML2TestBase):
    def status_of(self, method: str, resource: str, data: Any = None, **kw: Any) -> int:
        req = self._admin_req(method, resource, data, **kw)
        return req.get_response(self.api).status_int  # type: ignore[no-any-return]

    def port_body(self, net_id: str, **extra: Any) -> dict[str, Any]:
        return {
            "port": {
                "network_id": net_id,
                "device_owner": "compute:nova",
                "device_id": "instance-1",
                "binding:host_id": HOST1,
                **extra,
            }
        }

    def test_port_that_cannot_be_an_endpoint_is_refused(self) -> None:
        register_felix(self.driver, HOST1)
        net_id, _ = self.make_network()
        for bad in (
            {"device_id": "vm\n-A felix-FORWARD -j ACCEPT"},
            {"device_id": "vm'1"},
            {"device_id": ".."},
            {"binding:host_id": "compute\n1"},
        ):
            req = self._admin_req("POST", "ports", self.port_body(net_id, **bad))
            res = req.get_response(self.api)
            assert res.status_int == 400, res.body
            assert b"not a valid Calico ID" in res.body
        assert self.call("GET", "ports")["ports"] == []
        assert endpoints(self.client) == {}

        # Updates too: the port keeps its old device_id and its endpoint.
        port = self.make_port(net_id, HOST1)
        key = WorkloadEndpointKey(HOST1, "openstack", "instance-1", port["id"])
        before = self.client.get(key.path)
        assert before is not None
        update = {"port": {"device_id": 'vm"1'}}
        assert self.status_of("PUT", "ports", update, id=port["id"]) == 400
        assert self.call("GET", "ports", id=port["id"])["port"]["device_id"] == "instance-1"
        assert self.client.get(key.path) == before
        # Not an endpoint port: nothing is written for it, nothing refused.
        dhcp = self.port_body(net_id, device_owner="network:dhcp", device_id="dhcp\nx")
        assert self.status_of("POST", "ports", dhcp) == 201

    def test_bad_port_from_an_older_version_does_not_break_anything(self) -> None:
        register_felix(self.driver, HOST1)
        net_id, _ = self.make_network()
        good = self.make_port(net_id, HOST1, device_id="vm-good")
        bad = self.make_port(net_id, HOST1, device_id="vm-bad")
        good_key = WorkloadEndpointKey(HOST1, "openstack", "vm-good", good["id"])
        bad_key = WorkloadEndpointKey(HOST1, "openstack", "vm-bad", bad["id"])
        # As stored by an older version that did not refuse it.
        with mock.patch("calico.openstack.mech_driver.refuse_untranslatable_port"):
            self.call("PUT", "ports", {"port": {"device_id": "vm\nbad"}}, id=bad["id"])
        # Its old endpoint went with the old device_id; no new one could be written.
        assert set(endpoints(self.client)) == {good_key}
        # Other changes to it go through (200) and write nothing; the other port is unharmed.
        self.call("PUT", "ports", {"port": {"name": "renamed"}}, id=bad["id"])
        self.call("PUT", "ports", {"port": {"admin_state_up": False}}, id=good["id"])
        assert not endpoints(self.client)[good_key].active
        # Fixing its device_id brings the endpoint back.
        self.call("PUT", "ports", {"port": {"device_id": "vm-bad"}}, id=bad["id"])
        assert set(endpoints(self.client)) == {good_key, bad_key}

    def test_protocol_ip_rule(self) -> None:
        """Protocol ip / hopopt / 0 (any protocol): the port is created and the profile has a
        rule with no protocol (before: ValueError in the translation, HTTP 500)."""
        register_felix(self.driver, HOST1)
        net_id, _ = self.make_network()
        sg = self.make_sg("any-proto")
        self.add_rule(sg, protocol="ip", remote_ip_prefix="10.9.0.0/16")
        self.add_rule(sg, protocol="0", ethertype="IPv6", remote_ip_prefix="fd00::/8")
        port = self.make_port(net_id, HOST1, security_groups=[sg])
        assert port["binding:vif_type"] == "tap"
        rules, _ = profile(self.client, sg)
        assert sorted((r.ip_version, r.protocol, r.src_net) for r in rules.inbound_rules) == [
            (4, None, "10.9.0.0/16"),
            (6, None, "fd00::/8"),
        ]
        key = WorkloadEndpointKey(HOST1, "openstack", "instance-1", port["id"])
        assert endpoints(self.client)[key].profile_ids == (f"openstack-sg-{sg}",)

    def address_group(self, *addresses: str) -> str:
        body = {"address_group": {"name": "ag", "addresses": list(addresses)}}
        return self.call("POST", "address-groups", body)["address_group"]["id"]  # type: ignore[no-any-return]

    def test_address_group_rules_follow_the_group(self) -> None:
        register_felix(self.driver, HOST1)
        net_id, _ = self.make_network()
        sg = self.make_sg("from-ag")
        other = self.make_sg("also-from-ag")
        ag = self.address_group("10.1.0.0/16", "fd00:1::/64")
        self.add_rule(
            sg, protocol="tcp", port_range_min=22, port_range_max=22, remote_address_group_id=ag
        )
        self.add_rule(other, direction="egress", remote_address_group_id=ag)
        self.make_port(net_id, HOST1, security_groups=[sg, other])

        def nets() -> tuple[list[tuple[str | None, Any]], list[str | None]]:
            rules, _ = profile(self.client, sg)
            other_rules, _ = profile(self.client, other)
            inbound = [(r.src_net, r.dst_ports) for r in rules.inbound_rules]
            egress = [r.dst_net for r in other_rules.outbound_rules if r.dst_net != "::/0"]
            return inbound, sorted(n for n in egress if n != "0.0.0.0/0")

        assert nets() == ([("10.1.0.0/16", (22,))], ["10.1.0.0/16"])
        add = {"addresses": ["192.0.2.7/32"]}
        self.call("PUT", "address-groups", add, id=ag, action="add_addresses")
        assert nets() == (
            [("10.1.0.0/16", (22,)), ("192.0.2.7/32", (22,))],
            ["10.1.0.0/16", "192.0.2.7/32"],
        )
        remove = {"addresses": ["10.1.0.0/16", "192.0.2.7/32"]}
        self.call("PUT", "address-groups", remove, id=ag, action="remove_addresses")
        # Only the IPv6 address is left: the IPv4 rules admit nothing (no rule at all).
        assert nets() == ([], [])
        rules, _ = profile(self.client, sg)
        assert all(r.src_net not in ("0.0.0.0/0", "::/0") for r in rules.inbound_rules)

        # The resync writes exactly what the callbacks wrote.
        from calico.openstack.config import connect_store
        from calico.openstack.neutron_reader import NeutronReader
        from calico.openstack.resync import resync

        self.call(
            "PUT", "address-groups", {"addresses": ["10.2.0.0/16"]}, id=ag, action="add_addresses"
        )
        written = self.client.get(ProfileRulesKey(f"openstack-sg-{sg}").path)
        assert written is not None and "10.2.0.0/16" in written
        self.client.delete(ProfileRulesKey(f"openstack-sg-{sg}").path)
        resync(connect_store(), NeutronReader())
        assert self.client.get(ProfileRulesKey(f"openstack-sg-{sg}").path) == written

    def test_resync_isolates_failures_per_object(self) -> None:
        from calico.openstack.config import connect_store
        from calico.openstack.neutron_reader import NeutronReader
        from calico.openstack.resync import resync

        register_felix(self.driver, HOST1)
        net_id, subnet_id = self.make_network()
        good = self.make_port(net_id, HOST1, device_id="vm-good")
        odd = self.make_port(net_id, HOST1, device_id="vm-odd")
        with mock.patch("calico.openstack.mech_driver.refuse_untranslatable_port"):
            self.call("PUT", "ports", {"port": {"device_id": "vm\nbad"}}, id=odd["id"])
        sg = self.make_sg("icmp-255")
        # Neutron accepts ICMP type 255, the kernel cannot match it: that rule is left out, the
        # group's other rules are kept.
        self.add_rule(sg, protocol="icmp", port_range_min=255)
        self.add_rule(sg, protocol="tcp", port_range_min=80, port_range_max=80)
        self.call("PUT", "ports", {"port": {"security_groups": [sg]}}, id=good["id"])
        good_key = WorkloadEndpointKey(HOST1, "openstack", "vm-good", good["id"])
        good_value = self.client.get(good_key.path)
        rules, _ = profile(self.client, sg)
        assert [(r.protocol, r.dst_ports) for r in rules.inbound_rules] == [("tcp", (80,))]

        # Damage to repair, and keys an older version wrote with a hostile device_id (ours:
        # deleted) next to another orchestrator's (kept, even though Felix ignores it).
        self.client.delete(good_key.path)
        self.client.delete(ReadyKey().path)
        hostile = f"/calico/v1/host/{HOST1}/workload/openstack/vm\nbad/endpoint/{odd['id']}"
        slashed = f"/calico/v1/host/{HOST1}/workload/openstack/vm/x/endpoint/{odd['id']}"
        foreign = f"/calico/v1/host/{HOST1}/workload/k8s/pod\nx/endpoint/eth0"
        for path in (hostile, slashed, foreign):
            self.client.put(path, good_value or "{}")
        bad_profile = "/calico/v1/policy/profile/openstack-sg-x\ny/rules"
        self.client.put(bad_profile, "{}")

        # One port whose translation fails unexpectedly: logged, skipped, the rest goes on.
        real_endpoint = NeutronReader.endpoint

        def flaky(reader: NeutronReader, port: dict[str, Any], *args: Any) -> dict[str, Any]:
            if port["id"] == odd["id"]:
                raise RuntimeError("boom")
            return real_endpoint(reader, port, *args)

        with mock.patch.object(NeutronReader, "endpoint", flaky):
            report = resync(connect_store(), NeutronReader())
        assert report["endpoints"]["created"] == 1
        assert report["endpoints"]["skipped"] == 1
        assert report["endpoints"]["deleted"] == 3 - 1  # hostile and slashed; not foreign
        assert self.client.get(good_key.path) == good_value
        for path in (hostile, slashed, bad_profile):
            assert self.client.get(path) is None, path
        assert self.client.get(foreign) is not None
        assert self.client.get(ReadyKey().path) == "true"
        assert json.loads(self.client.get(DhcpSubnetKey(subnet_id).path) or "{}")["cidr"]

        # A section that fails as a whole (Neutron's SGs unreadable) deletes nothing and
        # does not stop the endpoints or the Felix config.
        self.client.delete(good_key.path)
        self.client.delete(ReadyKey().path)
        with mock.patch.object(NeutronReader, "profiles", side_effect=RuntimeError("db down")):
            report = resync(connect_store(), NeutronReader())
        assert report["profiles"] == {"failed": 1}
        assert self.client.get(ProfileTagsKey(f"openstack-sg-{sg}").path) is not None
        assert self.client.get(good_key.path) == good_value
        assert self.client.get(ReadyKey().path) == "true"

        # Nothing left to do on a clean pass.
        again = resync(connect_store(), NeutronReader())
        assert again["endpoints"] == {
            "created": 0,
            "updated": 0,
            "deleted": 0,
            "conflicts": 0,
            "skipped": 1,  # the hostile port, logged once
        }

    def test_one_failing_security_group_does_not_stop_the_others(self) -> None:
        register_felix(self.driver, HOST1)
        net_id, _ = self.make_network()
        sg_a, sg_b = self.make_sg("a"), self.make_sg("b")
        from calico.openstack import store

        real_put = store.CalicoStore.put_profile

        def flaky(self_: Any, sg_id: str, *args: Any) -> None:
            if sg_id == sg_a:
                raise RuntimeError("boom")
            real_put(self_, sg_id, *args)

        with mock.patch.object(store.CalicoStore, "put_profile", flaky):
            port = self.make_port(net_id, HOST1, security_groups=[sg_a, sg_b])
            assert port["binding:vif_type"] == "tap"  # the create did not fail
        profile(self.client, sg_b)
        assert self.client.get(ProfileRulesKey(f"openstack-sg-{sg_a}").path) is None
        key = WorkloadEndpointKey(HOST1, "openstack", "instance-1", port["id"])
        assert key in endpoints(self.client)

    def test_etcd_failure_in_a_hook_does_not_fail_the_request(self) -> None:
        """The port is created (its endpoint is left to the resync) rather than the create
        failing with 500 and ML2 deleting the port again."""
        from calico.common.etcd.base import EtcdUnavailable
        from calico.openstack import store

        register_felix(self.driver, HOST1)
        net_id, _ = self.make_network()
        down = EtcdUnavailable("etcd down")
        with mock.patch.object(store.CalicoStore, "put_endpoint", side_effect=down):
            port = self.make_port(net_id, HOST1)
        assert port["binding:vif_type"] == "tap"
        assert endpoints(self.client) == {}
        from calico.openstack.config import connect_store
        from calico.openstack.neutron_reader import NeutronReader
        from calico.openstack.resync import resync

        assert resync(connect_store(), NeutronReader())["endpoints"]["created"] == 1


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    """Each test sees its own "logged once" messages."""
    from calico.openstack import translation

    translation.forget_warnings()
