"""Pods, namespaces, nodes, GlobalFelixConfigs and IPPools -> /calico/v1 keys, and the model that
diffs objects into updates: Calico's names (the CNI plugin's interface name), what is left out,
hostile strings in every field refused (never a key segment or label Felix would take wrongly),
and every value accepted by Felix's own parsers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from calico.common import resources as res
from calico.common.datamodel_v1 import BadKey, WorkloadEndpointKey, parse_key
from calico.k8s import mapping
from calico.k8s.model import Kind, LogOnce, Model, simple
from calico.k8s.names import Unmappable, interface_name

NODE = "node-1"
WEP = f"/calico/v1/host/{NODE}/workload/k8s/default.web/endpoint/eth0"


def pod(**changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {"nodeName": NODE},
        "status": {"phase": "Running", "podIP": "10.65.0.2"},
    }
    for path, value in changes.items():
        node = obj
        *parents, leaf = path.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return obj


def test_interface_names_are_the_cni_plugins() -> None:
    assert interface_name("default", "podA") == "cali7f94ce7c295"  # Calico's own test vector
    assert len(interface_name("a" * 63, "b" * 253)) == 15


def test_a_pod_becomes_a_workload_endpoint() -> None:
    keys = mapping.pod_keys(pod())
    assert list(keys) == [WEP]
    key = parse_key(WEP)
    assert isinstance(key, WorkloadEndpointKey)
    endpoint = res.parse_workload_endpoint(keys[WEP], key)
    assert endpoint == res.WorkloadEndpoint(
        state="active",
        name=interface_name("default", "web"),
        profile_ids=("k8s_ns.default",),
        ipv4_nets=("10.65.0.2/32",),
        labels=res.Labels({"app": "web", "calico/k8s_ns": "default"}),
    )


def test_dual_stack_and_the_namespace_label_wins() -> None:
    obj = pod(
        status__podIPs=[{"ip": "10.65.0.2"}, {"ip": "fd00:65::2"}],
        metadata__labels={"calico/k8s_ns": "spoofed"},
    )
    value = json.loads(mapping.pod_keys(obj)[WEP])
    assert value["ipv4_nets"] == ["10.65.0.2/32"] and value["ipv6_nets"] == ["fd00:65::2/128"]
    assert value["labels"] == {"calico/k8s_ns": "default"}


@pytest.mark.parametrize(
    "changes",
    [
        {"spec__hostNetwork": True},
        {"spec__nodeName": None},
        {"spec__nodeName": ""},
        {"status__podIP": None},
        {"status__phase": "Succeeded"},
        {"status__phase": "Failed"},
    ],
    ids=["host-network", "unscheduled", "empty-node", "no-ip", "succeeded", "failed"],
)
def test_pods_that_are_not_endpoints(changes: dict[str, Any]) -> None:
    assert mapping.pod_keys(pod(**changes)) == {}


def test_a_terminating_pod_is_still_an_endpoint() -> None:
    assert mapping.pod_keys(pod(metadata__deletionTimestamp="2026-01-01T00:00:00Z"))


# Invalid as a Kubernetes name, label key and label value alike.
HOSTILE = ["..", ".", "a b", "x\ny", "é", "a" * 254, "a'b", '"', "{a}", "a,b", 7, ["x"]]


@pytest.mark.parametrize("bad", HOSTILE, ids=repr)
def test_hostile_strings_in_any_field_are_refused(bad: object) -> None:
    for field in ("metadata__name", "metadata__namespace", "spec__nodeName", "status__podIP"):
        with pytest.raises(Unmappable):
            mapping.pod_keys(pod(**{field: bad}))
    keyed = [{bad: "v"}] if isinstance(bad, str) else []  # JSON keys are strings
    for labels in ({"k": bad}, *keyed):
        with pytest.raises(Unmappable):
            mapping.pod_keys(pod(metadata__labels=labels))
        with pytest.raises(Unmappable):
            mapping.namespace_keys({"metadata": {"name": "ns", "labels": labels}})
    with pytest.raises(Unmappable):
        mapping.node_keys({"metadata": {"name": bad}})
    with pytest.raises(Unmappable):
        mapping.namespace_keys({"metadata": {"name": bad}})


def test_names_are_dns_names_and_labels_are_kubernetes_labels() -> None:
    for bad_name in ("A", "a/b", "a_b", "-a", ""):
        with pytest.raises(Unmappable):
            mapping.pod_keys(pod(metadata__name=bad_name))
    # Label keys may have a DNS prefix and upper case; values may be empty.
    keys = mapping.pod_keys(pod(metadata__labels={"example.com/Role": "", "A": "B.c-d_e"}))
    labels = json.loads(keys[WEP])["labels"]
    assert labels == {"example.com/Role": "", "A": "B.c-d_e", "calico/k8s_ns": "default"}


@pytest.mark.parametrize(
    "ip", ["10.65.0.2/32", "fe80::1%eth0", "fe80::1%eth0\n", "10.0.0", "010.0.0.1", " 10.0.0.1"]
)
def test_hostile_pod_ips_are_refused(ip: str) -> None:
    with pytest.raises(Unmappable):
        mapping.pod_keys(pod(status__podIP=ip))


def test_a_namespace_becomes_a_profile() -> None:
    keys = mapping.namespace_keys({"metadata": {"name": "shop", "labels": {"team": "a"}}})
    assert keys == {
        "/calico/v1/policy/profile/k8s_ns.shop/rules": mapping.ALLOW_ALL,
        "/calico/v1/policy/profile/k8s_ns.shop/labels": '{"pcns.team":"a"}',
    }
    assert json.loads(mapping.ALLOW_ALL) == {
        "inbound_rules": [{"action": "allow"}],
        "outbound_rules": [{"action": "allow"}],
    }


def test_nodes_felix_configs_and_pools() -> None:
    annotated = {
        "metadata": {"name": NODE, "annotations": {mapping.NODE_IPV4_ANNOTATION: "192.0.2.7/24"}}
    }
    assert mapping.node_keys(annotated) == {f"/calico/v1/host/{NODE}/bird_ip": "192.0.2.7"}
    assert mapping.node_keys({"metadata": {"name": NODE}}) == {}
    for bad in ("fd00::1/64", "192.0.2.7%x", "x"):
        annotated["metadata"]["annotations"][mapping.NODE_IPV4_ANNOTATION] = bad
        with pytest.raises(Unmappable):
            mapping.node_keys(annotated)
    config = {
        "metadata": {"name": "loglevel"},
        "spec": {"name": "LogSeverityScreen", "value": "info"},
    }
    assert mapping.felix_config_keys(config) == {"/calico/v1/config/LogSeverityScreen": "info"}
    for bad_name in ("a/b", "..", "x y", None):
        with pytest.raises(Unmappable):
            mapping.felix_config_keys(
                {"metadata": {"name": "c"}, "spec": {"name": bad_name, "value": "1"}}
            )
    pool = {"metadata": {"name": "p"}, "spec": {"cidr": "10.65.0.0/16", "nat-outgoing": True}}
    keys = mapping.ip_pool_keys(pool)
    assert list(keys) == ["/calico/v1/ipam/v4/pool/10.65.0.0-16"]
    assert json.loads(keys["/calico/v1/ipam/v4/pool/10.65.0.0-16"])["masquerade"] is True
    with pytest.raises(Unmappable):
        mapping.ip_pool_keys(
            {"metadata": {"name": "p"}, "spec": {"cidr": "10.65.0.0/16", "nat-outgoing": "yes"}}
        )


def test_no_produced_key_is_a_bad_key() -> None:
    for keys in (
        mapping.pod_keys(pod()),
        mapping.namespace_keys({"metadata": {"name": "default"}}),
    ):
        for key in keys:
            assert not isinstance(parse_key(key), BadKey)


# --- The model ------------------------------------------------------------------------------------

KINDS = [
    Kind("namespaces", False, simple(mapping.namespace_keys)),
    Kind("pods", True, simple(mapping.pod_keys)),
    Kind("globalfelixconfigs", False, simple(mapping.felix_config_keys)),
]


def test_pods_wait_for_their_namespace_and_leave_with_it() -> None:
    model = Model(KINDS)
    assert model.upsert("pods", pod()) == []
    updates = model.upsert("namespaces", {"metadata": {"name": "default"}})
    assert [k for k, _ in updates][-1] == WEP
    updates = model.replace_all("namespaces", [])
    assert sorted(k for k, v in updates if v is None) == sorted(
        [
            WEP,
            "/calico/v1/policy/profile/k8s_ns.default/labels",
            "/calico/v1/policy/profile/k8s_ns.default/rules",
        ]
    )


def test_a_relist_reports_exactly_the_difference() -> None:
    model = Model(KINDS)
    model.upsert("namespaces", {"metadata": {"name": "default"}})
    a, b = pod(), pod(metadata__name="db")
    model.replace_all("pods", [a, b])
    c = pod(metadata__name="cache")
    changed_b = pod(metadata__name="db", metadata__labels={"app": "db"})
    updates = model.replace_all("pods", [a, changed_b, c])
    assert [k.split("/")[7] for k, _ in updates] == ["default.db", "default.cache"]
    updates = model.replace_all("pods", [a])
    assert len(updates) == 2 and all(v is None for _, v in updates)
    # A key added and removed within one relist is never reported.
    assert model.replace_all("pods", [a]) == []


def test_two_configs_for_one_parameter_take_the_first_by_name(caplog) -> None:
    model = Model(KINDS, LogOnce())

    def config(name: str, value: str) -> dict[str, Any]:
        return {"metadata": {"name": name}, "spec": {"name": "LogSeverityScreen", "value": value}}

    model.upsert("globalfelixconfigs", config("zz", "debug"))
    updates = model.upsert("globalfelixconfigs", config("aa", "info"))
    assert updates == [("/calico/v1/config/LogSeverityScreen", "info")]
    assert model.upsert("globalfelixconfigs", config("zz", "error")) == []
    assert caplog.text.count("also mapped from") == 1
    updates = model.remove("globalfelixconfigs", config("aa", "info"))
    assert updates == [("/calico/v1/config/LogSeverityScreen", "error")]


def test_objects_without_a_usable_name_are_ignored() -> None:
    model = Model(KINDS)
    assert model.upsert("pods", {"metadata": "x"}) == []
    assert model.upsert("pods", {"metadata": {"name": 7, "namespace": "default"}}) == []
    assert model.replace_all("pods", ["x", None, {"metadata": {}}]) == []
