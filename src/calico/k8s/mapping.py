"""Kubernetes objects -> `/calico/v1` keys and values (Calico 2.6's mapping; the reference is
kubernetes-datastore.md §2). Pure.

Each `*_keys(obj)` returns every key the object contributes with its value as the JSON text the
etcd datastore would hold; an object that contributes nothing returns {}. A value is produced only
after it passes the same parser Felix uses for etcd values (`calico.common.resources`), so what
the calc graph receives from here is indistinguishable from what it receives from etcd. An object
that cannot be mapped raises `Unmappable` (the model leaves it out and logs it once).

* Pod -> workload endpoint `/calico/v1/host/<nodeName>/workload/k8s/<ns>.<pod>/endpoint/eth0`:
  state active, interface `cali` + sha1 (names.interface_name), the pod's IPs as /32 and /128,
  profile `k8s_ns.<ns>`, the pod's labels plus `calico/k8s_ns=<ns>`. Pods of every node are
  mapped (other nodes' pod IPs fill the IP sets of selectors); the calc graph programs only
  this host's. Left out: host-network pods, pods without a node or an IP, finished pods
  (phase Succeeded/Failed: their IPs are reused; Calico 3.x did the same).
* Namespace -> profile `k8s_ns.<ns>`: rules allow everything both ways, labels `pcns.<k>=<v>`.
* Node -> `/calico/v1/host/<node>/bird_ip` from the annotation `projectcalico.org/IPv4Address`.
* GlobalFelixConfig (crd.projectcalico.org/v1) -> `/calico/v1/config/<spec.name>` = spec.value.
* IPPool (crd.projectcalico.org/v1) -> `/calico/v1/ipam/v4|v6/pool/<cidr>`, masquerade from
  `nat-outgoing`.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from calico.common import resources as res
from calico.common.datamodel_v1 import (
    GlobalConfigKey,
    HostIPKey,
    IPPoolKey,
    ProfileLabelsKey,
    ProfileRulesKey,
    WorkloadEndpointKey,
    valid_id,
)
from calico.common.quoting import quoted
from calico.k8s.names import (
    ENDPOINT_ID,
    NAMESPACE_LABEL,
    ORCHESTRATOR,
    Unmappable,
    check_labels,
    check_name,
    check_namespace,
    get_list,
    get_map,
    get_str,
    interface_name,
    metadata,
    namespace_label,
    profile_id,
    workload_id,
)

NODE_IPV4_ANNOTATION = "projectcalico.org/IPv4Address"
FINISHED_PHASES = frozenset({"Succeeded", "Failed"})
MAX_POD_IPS = 16
MAX_CONFIG_VALUE = 4096

Keys = dict[str, str]


def encode(value: object) -> str:
    """The one JSON encoding of every value produced here (sorted keys: equal objects give
    equal text, so an unchanged object is never reported as changed)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _valid(parse: Any, raw: str, key: Any) -> str:
    try:
        parse(raw, key)
    except res.InvalidValue as e:
        raise Unmappable(str(e)) from None
    return raw


# --- Pods -----------------------------------------------------------------------------------------


def _pod_ips(status: dict[str, Any]) -> tuple[list[str], list[str]]:
    texts: list[object] = [
        entry.get("ip") if isinstance(entry, dict) else entry
        for entry in get_list(status, "podIPs", "pod.status")
    ]
    if status.get("podIP") is not None:
        texts.insert(0, status["podIP"])
    if len(texts) > MAX_POD_IPS:
        raise Unmappable(f"pod.status: more than {MAX_POD_IPS} IPs")
    nets: dict[int, list[str]] = {4: [], 6: []}
    for text in texts:
        if not isinstance(text, str) or "%" in text:
            raise Unmappable(f"pod.status: invalid pod IP {quoted(text)}")
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise Unmappable(f"pod.status: invalid pod IP {quoted(text)}") from None
        net = f"{address}/{address.max_prefixlen}"
        if net not in nets[address.version]:
            nets[address.version].append(net)
    return nets[4], nets[6]


def pod_keys(pod: dict[str, Any]) -> Keys:
    """The workload endpoint of a pod, or {} for a pod that is not one."""
    namespace, name = metadata(pod, "pod", namespaced=True)
    assert namespace is not None
    spec = get_map(pod, "spec", "pod")
    status = get_map(pod, "status", "pod")
    host_network = spec.get("hostNetwork", False)
    if not isinstance(host_network, bool):
        raise Unmappable(f"pod.spec.hostNetwork: expected a boolean, got {quoted(host_network)}")
    node = get_str(spec, "nodeName", "pod.spec")
    phase = get_str(status, "phase", "pod.status")
    if host_network or not node or phase in FINISHED_PHASES:
        return {}
    node = check_name(node, "node")
    ipv4_nets, ipv6_nets = _pod_ips(status)
    if not ipv4_nets and not ipv6_nets:
        return {}
    labels = check_labels(get_map(pod, "metadata", "pod").get("labels"), "pod labels")
    labels[NAMESPACE_LABEL] = namespace
    key = WorkloadEndpointKey(node, ORCHESTRATOR, workload_id(namespace, name), ENDPOINT_ID)
    value = encode(
        {
            "state": "active",
            "name": interface_name(namespace, name),
            "profile_ids": [profile_id(namespace)],
            "ipv4_nets": ipv4_nets,
            "ipv6_nets": ipv6_nets,
            "labels": labels,
        }
    )
    return {key.path: _valid(res.parse_workload_endpoint, value, key)}


# --- Namespaces -----------------------------------------------------------------------------------

ALLOW_ALL = encode(
    {"inbound_rules": [{"action": "allow"}], "outbound_rules": [{"action": "allow"}]}
)


def namespace_keys(namespace: dict[str, Any]) -> Keys:
    """The namespace's profile: allow-all rules (NetworkPolicy isolates, not the profile) and
    the namespace's labels, prefixed, for its pods to inherit."""
    meta = get_map(namespace, "metadata", "namespace")
    name = check_namespace(meta.get("name"))
    labels = check_labels(meta.get("labels"), "namespace labels")
    profile = profile_id(name)
    rules_key, labels_key = ProfileRulesKey(profile), ProfileLabelsKey(profile)
    prefixed = encode({namespace_label(k): v for k, v in labels.items()})
    return {
        rules_key.path: _valid(res.parse_profile_rules, ALLOW_ALL, rules_key),
        labels_key.path: _valid(res.parse_profile_labels, prefixed, labels_key),
    }


# --- Nodes ----------------------------------------------------------------------------------------


def node_keys(node: dict[str, Any]) -> Keys:
    """The node's IPv4 address (bird_ip) from Calico's annotation, if it has one."""
    _, name = metadata(node, "node", namespaced=False)
    if not valid_id(name):
        raise Unmappable(f"node name {quoted(name)} is not a valid key segment")
    annotations = get_map(get_map(node, "metadata", "node"), "annotations", "node.metadata")
    text = annotations.get(NODE_IPV4_ANNOTATION)
    if text is None:
        return {}
    if not isinstance(text, str) or "%" in text:
        raise Unmappable(f"node annotation {NODE_IPV4_ANNOTATION}: invalid {quoted(text)}")
    try:
        address = ipaddress.ip_interface(text).ip
    except ValueError:
        raise Unmappable(
            f"node annotation {NODE_IPV4_ANNOTATION}: invalid {quoted(text)}"
        ) from None
    if address.version != 4:
        raise Unmappable(f"node annotation {NODE_IPV4_ANNOTATION}: not IPv4: {quoted(text)}")
    return {HostIPKey(name).path: str(address)}


# --- Calico's own resources -----------------------------------------------------------------------


def felix_config_keys(config: dict[str, Any]) -> Keys:
    """A GlobalFelixConfig: one global Felix parameter (validated by Felix's config loader)."""
    metadata(config, "GlobalFelixConfig", namespaced=False)
    spec = get_map(config, "spec", "GlobalFelixConfig")
    name = spec.get("name")
    if not valid_id(name):
        raise Unmappable(f"GlobalFelixConfig spec.name {quoted(name)} is not a valid key segment")
    value = get_str(spec, "value", "GlobalFelixConfig.spec")
    if value is None:
        return {}
    if len(value) > MAX_CONFIG_VALUE:
        raise Unmappable(f"GlobalFelixConfig {name}: value longer than {MAX_CONFIG_VALUE}")
    return {GlobalConfigKey(str(name)).path: value}


def ip_pool_keys(pool: dict[str, Any]) -> Keys:
    """An IPPool: its CIDR and whether traffic from it to elsewhere is masqueraded."""
    metadata(pool, "IPPool", namespaced=False)
    spec = get_map(pool, "spec", "IPPool")
    cidr_text = get_str(spec, "cidr", "IPPool.spec")
    if cidr_text is None or "%" in cidr_text:
        raise Unmappable(f"IPPool spec.cidr: invalid {quoted(cidr_text)}")
    try:
        cidr = str(ipaddress.ip_network(cidr_text, strict=False))
    except ValueError:
        raise Unmappable(f"IPPool spec.cidr: invalid {quoted(cidr_text)}") from None
    masquerade = spec.get("nat-outgoing", False)
    disabled = spec.get("disabled", False)
    for field, flag in (("nat-outgoing", masquerade), ("disabled", disabled)):
        if not isinstance(flag, bool):
            raise Unmappable(f"IPPool spec.{field}: expected a boolean, got {quoted(flag)}")
    key = IPPoolKey.for_cidr(cidr)
    value = encode({"cidr": cidr, "masquerade": masquerade, "disabled": disabled})
    return {key.path: _valid(res.parse_ip_pool, value, key)}
