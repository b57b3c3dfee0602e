"""Kubernetes objects for the lab and the tests, and `Cluster`: the writes a cluster's controllers
make (a pod is created Pending, then the kubelet reports its IP and Running), applied to a lab
API server's store directly (calico.lab.kube_store), each one event as over HTTP."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from calico.lab.kube_resources import (
    FELIX_CONFIGS,
    IP_POOLS,
    NAMESPACES,
    NETWORK_POLICIES,
    NODES,
    PODS,
    ApiError,
    Resource,
)
from calico.lab.kube_store import KubeStore

Obj = dict[str, Any]


def namespace(name: str, labels: Mapping[str, str] | None = None) -> Obj:
    return {"metadata": {"name": name, "labels": dict(labels or {})}}


def pod(
    ns: str,
    name: str,
    node: str | None,
    labels: Mapping[str, str] | None = None,
    host_network: bool = False,
) -> Obj:
    spec: Obj = {"containers": [{"name": "main", "image": "busybox"}]}
    if node is not None:
        spec["nodeName"] = node
    if host_network:
        spec["hostNetwork"] = True
    return {"metadata": {"name": name, "namespace": ns, "labels": dict(labels or {})}, "spec": spec}


def running(ips: Sequence[str], phase: str = "Running") -> Obj:
    """A pod status as the kubelet reports it."""
    status: Obj = {"phase": phase}
    if ips:
        status["podIP"] = ips[0]
        status["podIPs"] = [{"ip": ip} for ip in ips]
    return status


def network_policy(
    ns: str,
    name: str,
    pod_selector: Obj | None = None,
    ingress: list[Obj] | None = None,
    egress: list[Obj] | None = None,
    policy_types: list[str] | None = None,
) -> Obj:
    spec: Obj = {"podSelector": pod_selector or {}}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    if policy_types is not None:
        spec["policyTypes"] = policy_types
    return {"metadata": {"name": name, "namespace": ns}, "spec": spec}


def node(name: str, ipv4: str | None = None) -> Obj:
    annotations = {"projectcalico.org/IPv4Address": ipv4} if ipv4 else {}
    return {"metadata": {"name": name, "annotations": annotations}, "spec": {}}


def felix_config(name: str, value: str) -> Obj:
    return {"metadata": {"name": name.lower()}, "spec": {"name": name, "value": value}}


def ip_pool(cidr: str, nat_outgoing: bool = False) -> Obj:
    name = cidr.replace(".", "-").replace(":", "-").replace("/", "-")
    return {"metadata": {"name": name}, "spec": {"cidr": cidr, "nat-outgoing": nat_outgoing}}


class Cluster:
    """Writes to a lab API server's store: create-or-replace, status, delete."""

    def __init__(self, store: KubeStore) -> None:
        self.store = store

    def put(self, resource: Resource, obj: Obj, validate: bool = True) -> Obj:
        meta = obj["metadata"]
        ns = meta.get("namespace", "") if resource.namespaced else ""
        try:
            current = self.store.get(resource, ns, meta["name"])
        except ApiError:
            return self.store.create(resource, ns, obj, validate=validate)
        new = {**current, **{k: v for k, v in obj.items() if k != "status"}}
        new["metadata"] = {**current["metadata"], **meta}
        new["metadata"].pop("resourceVersion", None)
        return self.store.replace(resource, ns, meta["name"], new)

    def delete(self, resource: Resource, ns: str, name: str, grace: float | None = None) -> None:
        self.store.delete(resource, ns, name, grace)

    def namespace(self, name: str, labels: Mapping[str, str] | None = None) -> Obj:
        return self.put(NAMESPACES, namespace(name, labels))

    def pod(
        self,
        ns: str,
        name: str,
        node_name: str | None,
        ips: Sequence[str],
        labels: Mapping[str, str] | None = None,
        host_network: bool = False,
        phase: str = "Running",
    ) -> Obj:
        """A scheduled pod, then its status (IPs, phase) as the kubelet writes it."""
        self.put(PODS, pod(ns, name, node_name, labels, host_network))
        return self.store.replace(PODS, ns, name, {"status": running(ips, phase)}, "status")

    def relabel(self, resource: Resource, ns: str, name: str, labels: Mapping[str, str]) -> Obj:
        current = self.store.get(resource, ns, name)
        current["metadata"]["labels"] = dict(labels)
        current["metadata"].pop("resourceVersion", None)
        return self.store.replace(resource, ns, name, current)

    def policy(self, obj: Obj) -> Obj:
        return self.put(NETWORK_POLICIES, obj)

    def node(self, name: str, ipv4: str | None = None) -> Obj:
        return self.put(NODES, node(name, ipv4))

    def felix_config(self, name: str, value: str) -> Obj:
        return self.put(FELIX_CONFIGS, felix_config(name, value))

    def ip_pool(self, cidr: str, nat_outgoing: bool = False) -> Obj:
        return self.put(IP_POOLS, ip_pool(cidr, nat_outgoing))
