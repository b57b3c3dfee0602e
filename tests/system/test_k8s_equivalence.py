"""The calc graph cannot tell the datastores apart. One sequence of Kubernetes states (namespaces,
pods on this node and another, NetworkPolicies, relabels, deletions, a compaction with a 410
relist, a namespace deleted) is followed by the Kubernetes syncer from the lab API server; after
each step the same keys are written to a real etcd and followed by the etcd syncer. Each syncer
feeds its own CalcGraph and contract-checking dataplane, and at every flush after in-sync each
dataplane state must equal the brute-force oracle of the calc-graph state-sequence tests
(tests/unit/calc_oracle.py) computed from what that syncer reported; after each step both
dataplanes must be equal."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from calico.common.etcd import connect
from calico.common.etcd.base import EtcdSettings
from calico.common.etcd.syncer import Syncer
from calico.common.sync import SyncStatus, Update
from calico.felix.calc.checker import ContractChecker
from calico.felix.calc.graph import CalcGraph
from calico.k8s.client import KubeClient
from calico.k8s.model import Model
from calico.k8s.settings import KubeSettings
from calico.k8s.syncer import KubeSyncer, resource_types, static_keys
from calico.lab.etcd_server import EtcdServer
from calico.lab.kube_apiserver import KubeApiServer
from calico.lab.kube_objects import Cluster, network_policy
from calico.lab.kube_resources import NAMESPACES, NETWORK_POLICIES, PODS, RESOURCES

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
from calc_oracle import expected_state

NODE = "node-1"
PREFIXES = ("cali",)
WAIT = 20.0


class GraphListener:
    """A SyncListener feeding a CalcGraph and the contract checker, checked against the oracle
    at every flush after in-sync (problems recorded: this runs on the syncer's thread)."""

    def __init__(self) -> None:
        self.graph = CalcGraph(NODE, PREFIXES)
        self.dataplane = ContractChecker()
        self.mirror: dict[str, str] = {}
        self.in_sync = False
        self.checked = 0
        self.problems: list[str] = []
        self.cond = threading.Condition()

    def on_status(self, status: SyncStatus) -> None:
        with self.cond:
            self.graph.on_status(status)
            self.in_sync = self.in_sync or status == SyncStatus.IN_SYNC
            self._flush()

    def on_updates(self, updates: list[Update]) -> None:
        with self.cond:
            for key, value in updates:
                if value is None:
                    self.mirror.pop(key)
                else:
                    self.mirror[key] = value
            self.graph.on_updates(updates)
            self._flush()

    def _flush(self) -> None:
        try:
            self.dataplane.apply_flush(self.graph.flush())
            if self.in_sync:
                expected = expected_state(self.mirror, NODE, PREFIXES)
                assert self.dataplane.state == expected
                self.checked += 1
        except AssertionError as e:
            self.problems.append(str(e)[:2000])
        self.cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], what: str) -> None:
        with self.cond:
            assert self.cond.wait_for(predicate, WAIT), f"timed out waiting for {what}"


def truth(server: KubeApiServer) -> dict[str, str]:
    """What the mapping makes of the API server's objects as they are now."""
    model = Model([t.kind for t in resource_types()])
    model.set_static(static_keys())
    plural_of = {r.plural: r for r in RESOURCES}
    for rtype in resource_types():
        items, _, _, _ = server.store.list(plural_of[rtype.name], None, lambda obj: True)
        model.replace_all(rtype.name, items)
    return dict(model.values)


@pytest.fixture
def server() -> Iterator[KubeApiServer]:
    api = KubeApiServer().start()
    try:
        yield api
    finally:
        api.close()


def steps(cluster: Cluster, server: KubeApiServer) -> list[tuple[str, Callable[[], None]]]:
    def start() -> None:
        cluster.namespace("shop", {"team": "shop"})
        cluster.namespace("ops", {"team": "ops"})
        for i, app in enumerate(["web", "web", "db"]):
            cluster.pod("shop", f"{app}-{i}", NODE, [f"10.65.0.{i + 2}"], {"app": app})
        cluster.pod("ops", "admin", NODE, ["10.65.0.9"], {"app": "admin"})
        cluster.pod("shop", "remote", "node-2", ["10.65.1.2"], {"app": "web"})
        cluster.policy(
            network_policy(
                "shop",
                "db-in",
                {"matchLabels": {"app": "db"}},
                ingress=[
                    {
                        "from": [
                            {"podSelector": {"matchLabels": {"app": "web"}}},
                            {"namespaceSelector": {"matchLabels": {"team": "ops"}}},
                        ],
                        "ports": [{"port": 5432}],
                    }
                ],
                egress=[
                    {"to": [{"ipBlock": {"cidr": "10.65.0.0/16", "except": ["10.65.0.9/32"]}}]}
                ],
            )
        )
        cluster.node(NODE, "192.0.2.1/24")

    def compact_with_deletion() -> None:
        with server.store.cond:
            cluster.delete(PODS, "shop", "web-0")
            server.store.compact()

    return [
        ("start", start),
        ("relabel namespace", lambda: cluster.relabel(NAMESPACES, "", "ops", {"team": "none"})),
        ("relabel pod", lambda: cluster.relabel(PODS, "shop", "web-1", {"app": "db"})),
        ("add pod", lambda: cluster.pod("ops", "new", NODE, ["10.65.0.10"], {"app": "web"})),
        ("compaction", compact_with_deletion),
        ("delete policy", lambda: cluster.delete(NETWORK_POLICIES, "shop", "db-in")),
        ("delete namespace", lambda: cluster.delete(NAMESPACES, "", "shop")),
    ]


def test_both_syncers_give_the_calc_graph_the_same_state(server: KubeApiServer, etcd: EtcdServer):
    cluster = Cluster(server.store)
    k8s_side, etcd_side = GraphListener(), GraphListener()
    kube = KubeSyncer(
        KubeClient(KubeSettings(server=server.url, source="test")),
        k8s_side,
        backoff_initial=0.1,
        backoff_max=0.5,
    )
    store = connect("v2", EtcdSettings(endpoints=(etcd.client_url,)))
    etcd_syncer = Syncer(store, etcd_side, watch_timeout=1.0, ready_poll_interval=0.1)
    threads = [threading.Thread(target=s.run, daemon=True) for s in (kube, etcd_syncer)]
    for thread in threads:
        thread.start()
    written: dict[str, str] = {}
    try:
        for name, step in steps(cluster, server):
            step()
            want = truth(server)
            k8s_side.wait_for(
                lambda want=want: k8s_side.in_sync and k8s_side.mirror == want, f"k8s: {name}"
            )
            for key in sorted(set(written) - set(want)):
                etcd.v2_delete(key)
            for key, value in sorted(want.items()):
                if written.get(key) != value:
                    etcd.v2_put(key, value)
            written = dict(want)
            etcd_side.wait_for(
                lambda want=want: etcd_side.in_sync and etcd_side.mirror == want, f"etcd: {name}"
            )
            time.sleep(0.1)  # any late flush on either side
            with k8s_side.cond, etcd_side.cond:
                assert k8s_side.dataplane.state == etcd_side.dataplane.state, name
        assert kube.relists["pods"] >= 1  # the compaction step went through a 410 relist
    finally:
        kube.stop()
        etcd_syncer.stop()
        for thread in threads:
            thread.join(10)
    assert not k8s_side.problems and not etcd_side.problems, (k8s_side.problems, etcd_side.problems)
    assert k8s_side.checked >= len(steps(cluster, server)) and etcd_side.checked >= 7
    # The last state still has endpoints, IP sets and profiles: the comparison was not vacuous.
    assert k8s_side.dataplane.state.workload_endpoints
