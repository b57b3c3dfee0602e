"""End to end with `DataplaneDriver = kubernetes`: the real calico-felix reads pods, namespaces and
NetworkPolicies from the lab Kubernetes API server (TLS, a read-only service-account token,
in-cluster settings) and programs a node so that pods talk exactly as the policies say. Real
kernel, real packets, as the etcd end-to-end tests (lab_support.py).

One node namespace runs Felix; each pod is a VM namespace on a veth named as Calico's CNI plugin
names it (`cali` + SHA-1 of "<namespace>.<pod>"):

=========  ======  ===========  =========  ===================================================
VM         pod     namespace    address    labels
=========  ======  ===========  =========  ===================================================
web1/web2  web-1/2 shop         .2, .3     app=web
db         db      shop         .4         app=db
admin      admin   ops          .5         app=admin (namespace team=ops)
visitor    visitor guest        .6         app=visitor (namespace unlabelled)
=========  ======  ===========  =========  ===================================================

Policies in `shop`: `db-in` (app=db: ingress tcp/5432 from app=web pods of shop), `web-in`
(app=web: ingress anything from namespaces team=ops, tcp/80 from anyone), `db-out` (app=db,
egress only: to 10.65.0.0/24 except admin's /32). Nothing selects ops or guest pods: they are
open. A denied row counts only with the destination routed and the source's gateway answered
(lab_support.Lab.expect).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from lab_support import ALLOW, DENY, FELIX_START_TIMEOUT, Expectation, Flow, Lab

from calico.felix.dataplane import names
from calico.k8s.names import interface_name
from calico.lab.kube_apiserver import KubeApiServer
from calico.lab.kube_node import KubeNode
from calico.lab.kube_objects import network_policy
from calico.lab.kube_resources import NAMESPACES, NETWORK_POLICIES, PODS
from calico.lab.probes import ping, wait_until
from calico.lab.tls import make_tls

pytestmark = pytest.mark.root

NODE = "k8s-node-1"
PODS_ON_NODE = {
    # vm: (namespace, pod, last octet, labels)
    "web1": ("shop", "web-1", 2, {"app": "web"}),
    "web2": ("shop", "web-2", 3, {"app": "web"}),
    "db": ("shop", "db", 4, {"app": "db"}),
    "admin": ("ops", "admin", 5, {"app": "admin"}),
    "visitor": ("guest", "visitor", 6, {"app": "visitor"}),
}
POLICIES = [
    network_policy(
        "shop",
        "db-in",
        {"matchLabels": {"app": "db"}},
        ingress=[
            {
                "from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                "ports": [{"protocol": "TCP", "port": 5432}],
            }
        ],
    ),
    network_policy(
        "shop",
        "web-in",
        {"matchLabels": {"app": "web"}},
        ingress=[
            {"from": [{"namespaceSelector": {"matchLabels": {"team": "ops"}}}]},
            {"ports": [{"port": 80}]},
        ],
    ),
    network_policy(
        "shop",
        "db-out",
        {"matchLabels": {"app": "db"}},
        egress=[{"to": [{"ipBlock": {"cidr": "10.65.0.0/24", "except": ["10.65.0.5/32"]}}]}],
        policy_types=["Egress"],
    ),
]


def icmp(src: str, dst: str) -> Flow:
    return Flow(src, dst, "icmp")


def tcp(src: str, dst: str, port: int) -> Flow:
    return Flow(src, dst, "tcp", port)


MATRIX: list[Expectation] = [
    (tcp("web1", "db", 5432), ALLOW),  # db-in: app=web of shop
    (tcp("web1", "db", 80), DENY),  # db-in: only 5432
    (icmp("web1", "db"), DENY),
    (tcp("admin", "db", 5432), DENY),  # app=admin, and not in shop
    (icmp("admin", "web1"), ALLOW),  # web-in: anything from team=ops
    (tcp("visitor", "web1", 80), ALLOW),  # web-in: tcp/80 from anyone
    (icmp("visitor", "web1"), DENY),  # guest is not team=ops
    (icmp("web1", "web2"), DENY),
    (tcp("web1", "web2", 80), ALLOW),
    (icmp("web1", "admin"), ALLOW),  # web-in governs ingress only: web's egress is open
    (icmp("visitor", "admin"), ALLOW),  # nothing selects ops pods
    (tcp("db", "web1", 80), ALLOW),  # db-out: inside 10.65.0.0/24
    (icmp("db", "admin"), DENY),  # db-out: admin's /32 is excepted
    (icmp("db", "visitor"), ALLOW),
]


class KubeLab(Lab):
    """lab_support's Lab (its expect/fail/path checks) over a Kubernetes node: the compute host
    relays its loopback to the API server (as it would to etcd)."""

    def __init__(self, server: KubeApiServer, work_dir: Path) -> None:
        super().__init__(server, work_dir, NODE, "k8s")  # type: ignore[arg-type]
        self.node = KubeNode(server, work_dir, NODE, host=self.host)

    def start_felix(self, **env: str):  # type: ignore[no-untyped-def]
        self.felix = self.node.start_felix(**env)
        try:
            self.felix.wait_for("Dataplane programmed", timeout=FELIX_START_TIMEOUT)
        except AssertionError as e:
            pytest.fail(f"Felix did not program the node: {e}")
        return self.felix

    def wait_pings_v4(self, src: str, dst: str) -> None:
        if not wait_until(lambda: ping(self.vms[src], self.vms[dst]), 15, 0.3):
            self.fail(f"positive control: {src} never pinged {dst}")


def build(node: KubeNode, lab: KubeLab) -> None:
    cluster = node.cluster
    cluster.namespace("shop", {"team": "shop"})
    cluster.namespace("ops", {"team": "ops"})
    cluster.namespace("guest")
    for vm, (ns, pod, octet, labels) in PODS_ON_NODE.items():
        lab.vms[vm] = node.add_pod(ns, pod, f"10.65.0.{octet}", labels)
    cluster.pod("shop", "far-away", "k8s-node-2", ["10.65.9.9"], {"app": "web"})  # another node
    for policy in POLICIES:
        cluster.policy(policy)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeApiServer]:
    tls = make_tls(tmp_path_factory.mktemp("k8s-tls"))
    api = KubeApiServer(tls=tls, min_request_timeout=60).start()
    try:
        yield api
    finally:
        api.close()


@pytest.fixture(scope="module")
def lab(server: KubeApiServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeLab]:
    kube_lab = KubeLab(server, Path(tmp_path_factory.mktemp("k8s-node")))
    try:
        build(kube_lab.node, kube_lab)
        kube_lab.start_felix()
        kube_lab.wait_pings_v4("admin", "visitor")
        yield kube_lab
    finally:
        kube_lab.close()


def test_felix_said_which_datastore_and_that_etcd_is_unused(lab: KubeLab) -> None:
    assert lab.felix is not None
    text = lab.felix.text()
    assert "Kubernetes datastore: API server https://127.0.0.1:" in text
    assert "the etcd parameters (EtcdEndpoints" in text and "are not used" in text
    assert "no liveness or endpoint status is reported" in text


def test_pods_on_this_node_get_routes_and_chains(lab: KubeLab) -> None:
    routes = lab.host.routes()
    saved = lab.host.iptables("-S")
    for vm, (ns, pod, octet, _) in PODS_ON_NODE.items():
        tap = interface_name(ns, pod)
        assert lab.vms[vm].tap == tap
        assert routes.get(f"10.65.0.{octet}") == tap
        for direction in ("to", "from"):
            assert names.endpoint_chain(direction, tap, ("cali",)) in saved
    assert "10.65.9.9" not in routes  # another node's pod: in IP sets, never routed here


def test_network_policy_allows_and_denies_as_written(lab: KubeLab) -> None:
    lab.expect(MATRIX, what="NetworkPolicy matrix")


def test_a_namespace_label_change_moves_a_pod_in_and_out_of_a_policy(lab: KubeLab) -> None:
    cluster = lab.node.cluster
    cluster.relabel(NAMESPACES, "", "guest", {"team": "ops"})
    try:
        lab.expect([(icmp("visitor", "web1"), ALLOW)], what="guest labelled team=ops")
    finally:
        cluster.relabel(NAMESPACES, "", "guest", {})
    lab.expect([(icmp("visitor", "web1"), DENY)], what="guest unlabelled again")


def test_a_pod_label_change_moves_it_out_of_a_policy(lab: KubeLab) -> None:
    cluster = lab.node.cluster
    cluster.relabel(PODS, "shop", "db", {"app": "db-retired"})
    try:  # no policy selects it now: open both ways
        lab.expect(
            [(icmp("web1", "db"), ALLOW), (icmp("db", "admin"), ALLOW)], what="db relabelled"
        )
    finally:
        cluster.relabel(PODS, "shop", "db", {"app": "db"})
    lab.expect([(icmp("web1", "db"), DENY), (icmp("db", "admin"), DENY)], what="db back")


def test_deleting_a_policy_opens_what_it_isolated(lab: KubeLab) -> None:
    cluster = lab.node.cluster
    cluster.delete(NETWORK_POLICIES, "shop", "db-in")
    try:
        lab.expect(
            [(tcp("admin", "db", 5432), ALLOW), (icmp("web1", "db"), ALLOW)], what="no db-in"
        )
    finally:
        cluster.policy(POLICIES[0])
    lab.expect([(tcp("admin", "db", 5432), DENY), (tcp("web1", "db", 5432), ALLOW)], what="db-in")


def restore_pod(lab: KubeLab, vm: str) -> None:
    ns, pod, octet, labels = PODS_ON_NODE[vm]
    lab.node.cluster.pod(ns, pod, NODE, [f"10.65.0.{octet}"], labels)


def cut_off(lab: KubeLab, vm: str, peer: str) -> None:
    """The pod's traffic goes nowhere, both ways: no route to it, nothing from it."""
    target = lab.vms[vm]
    gone = wait_until(lambda: lab.host.route_to(target.ip) is None, 10, 0.2)
    assert gone, f"{vm}'s route is still there:\n{lab.log_excerpt()}"
    lab.expect(
        [(icmp(peer, vm), DENY), (icmp(vm, peer), DENY)], require_path=False, what=f"{vm} gone"
    )


def test_a_deleted_pod_is_cut_off(lab: KubeLab) -> None:
    lab.expect([(icmp("admin", "web2"), ALLOW)], what="before")
    lab.node.cluster.delete(PODS, "shop", "web-2")
    try:
        cut_off(lab, "web2", "admin")
    finally:
        restore_pod(lab, "web2")
    lab.expect([(icmp("admin", "web2"), ALLOW)], what="web-2 back")


def test_a_compaction_during_the_watch_resyncs_without_losing_the_deletion(lab: KubeLab) -> None:
    assert lab.felix is not None
    server, cluster = lab.node.server, lab.node.cluster
    relists = lab.felix.text().count("(relist)")
    with server.store.cond:  # Felix's watch wakes only after the history is gone: ERROR 410
        cluster.delete(PODS, "ops", "admin")
        server.store.compact()
    try:
        cut_off(lab, "admin", "visitor")
        lab.felix.wait_for("Kubernetes pods: 410 Expired: too old resource version", timeout=5)
        assert lab.felix.text().count("(relist)") > relists
    finally:
        restore_pod(lab, "admin")
    lab.expect([(icmp("visitor", "admin"), ALLOW)], what="admin back")


def test_the_api_server_restarting_keeps_the_dataplane_intact(lab: KubeLab) -> None:
    assert lab.felix is not None
    server, cluster = lab.node.server, lab.node.cluster
    server.stop()
    try:
        lab.felix.wait_for("listing again in", timeout=10)  # Felix saw it go
        lab.expect(MATRIX, what="API server down")  # everything programmed stays
        cluster.delete(NETWORK_POLICIES, "shop", "web-in")  # a change while it is down
    finally:
        server.start()
    try:
        lab.expect(
            [(icmp("visitor", "web1"), ALLOW), (icmp("web1", "web2"), ALLOW)], what="relisted"
        )
        assert lab.felix.proc.poll() is None
    finally:
        cluster.policy(POLICIES[1])
    lab.expect(MATRIX, what="after the restart")
