"""The Kubernetes syncer against the lab API server (HTTP on loopback): list with paging, watch,
410 Expired, bookmarks, restarts, 401/403, optional resources; every batch checked against a
mirror of what the listener was told (no deletion of an unknown key, nothing lost)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from calico.common.sync import SyncStatus, Update
from calico.k8s.client import KubeClient, ResourceExpired
from calico.k8s.names import interface_name
from calico.k8s.settings import KubeSettings
from calico.k8s.syncer import KubeSyncer
from calico.lab.kube_apiserver import Identity, KubeApiServer, reader
from calico.lab.kube_objects import Cluster, network_policy
from calico.lab.kube_resources import NAMESPACES, PODS

WAIT = 15.0
NODE = "node-1"


def wep(ns: str, pod: str, node: str = NODE) -> str:
    return f"/calico/v1/host/{node}/workload/k8s/{ns}.{pod}/endpoint/eth0"


@dataclass
class Recorder:
    state: dict[str, str] = field(default_factory=dict)
    statuses: list[SyncStatus] = field(default_factory=list)
    batches: list[list[Update]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def on_status(self, status: SyncStatus) -> None:
        with self.cond:
            self.statuses.append(status)
            self.cond.notify_all()

    def on_updates(self, updates: list[Update]) -> None:
        with self.cond:
            assert updates, "an empty batch"
            for key, value in updates:
                if value is None:
                    assert key in self.state, f"delete of unknown key {key}"
                    del self.state[key]
                else:
                    assert self.state.get(key) != value, f"unchanged key reported: {key}"
                    self.state[key] = value
            self.batches.append(list(updates))
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        with self.cond:
            assert self.cond.wait_for(predicate, timeout), f"timed out waiting for {what}"

    def in_sync(self) -> bool:
        return bool(self.statuses) and self.statuses[-1] == SyncStatus.IN_SYNC

    def updates(self) -> list[Update]:
        with self.cond:
            return [u for batch in self.batches for u in batch]


def poll(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Wait for a condition nobody signals (the server's request log, the log text)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Harness:
    def __init__(self, server: KubeApiServer, token: str | None = None, **syncer: Any) -> None:
        self.server = server
        self.cluster = Cluster(server.store)
        self.recorder = Recorder()
        settings = KubeSettings(server=server.url, source="test", token=token)
        self.client = KubeClient(settings, timeout=5.0)
        options = {"backoff_initial": 0.1, "backoff_max": 0.5, "watch_timeout": 30, **syncer}
        self.syncer = KubeSyncer(self.client, self.recorder, **options)
        self.thread = threading.Thread(target=self.syncer.run, daemon=True)

    def start(self) -> Harness:
        self.thread.start()
        return self

    def wait_in_sync(self) -> None:
        self.recorder.wait_for(self.recorder.in_sync, "in-sync")

    def stop(self) -> None:
        self.syncer.stop()
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.client.close()


@pytest.fixture
def server() -> Iterator[KubeApiServer]:
    api = KubeApiServer(bookmark_interval=3600).start()
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def harness(server: KubeApiServer) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(**options: Any) -> Harness:
        h = Harness(server, **options)
        made.append(h)
        return h

    yield make
    for h in made:
        h.stop()


def test_lists_every_type_then_reports_in_sync_and_follows_the_watch(server, harness):
    cluster = Cluster(server.store)
    cluster.namespace("default", {"team": "a"})
    cluster.pod("default", "web", NODE, ["10.65.0.2"], {"app": "web"})
    cluster.pod("default", "elsewhere", "node-2", ["10.65.0.3"])
    cluster.pod("default", "hostnet", NODE, ["192.0.2.1"], host_network=True)
    h = harness().start()
    h.wait_in_sync()
    rec = h.recorder
    assert rec.statuses == [SyncStatus.WAIT_FOR_READY, SyncStatus.RESYNC, SyncStatus.IN_SYNC]
    assert rec.state["/calico/v1/Ready"] == "true"
    assert wep("default", "web") in rec.state
    assert wep("default", "elsewhere", "node-2") in rec.state  # other nodes' pods fill IP sets
    assert not any("hostnet" in key for key in rec.state)
    assert f'"name":"{interface_name("default", "web")}"' in rec.state[wep("default", "web")]
    assert rec.state["/calico/v1/policy/profile/k8s_ns.default/labels"] == (
        '{"pcns.kubernetes.io/metadata.name":"default","pcns.team":"a"}'
    )

    cluster.relabel(PODS, "default", "web", {"app": "db"})
    rec.wait_for(lambda: '"app":"db"' in rec.state[wep("default", "web")], "the relabel")
    cluster.policy(network_policy("default", "deny-all"))
    key = "/calico/v1/policy/tier/k8s-ingress/policy/knp.default.default.deny-all"
    rec.wait_for(lambda: key in rec.state, "the policy")
    cluster.delete(PODS, "default", "web")
    rec.wait_for(lambda: wep("default", "web") not in rec.state, "the deletion")
    assert h.syncer.relists.total() == 0


def test_lists_in_pages_at_one_version(server, harness):
    cluster = Cluster(server.store)
    cluster.namespace("default")
    for i in range(7):
        cluster.pod("default", f"p{i}", NODE, [f"10.65.1.{i + 1}"])
    h = harness(page_size=2).start()
    h.wait_in_sync()
    assert all(wep("default", f"p{i}") in h.recorder.state for i in range(7))
    pages = [p for m, p in server.requests if m == "GET" and p.startswith("/api/v1/pods?limit=2")]
    assert len(pages) == 4 and sum("continue=" in p for p in pages) == 3


def test_a_watch_that_falls_behind_compaction_relists_and_reports_the_deletion(server, harness):
    cluster = Cluster(server.store)
    cluster.namespace("default")
    cluster.pod("default", "a", NODE, ["10.65.0.2"])
    cluster.pod("default", "b", NODE, ["10.65.0.3"])
    h = harness().start()
    h.wait_in_sync()
    before = len(h.recorder.batches)
    with server.store.cond:  # the watchers wake only after the history is gone: ERROR 410
        cluster.delete(PODS, "default", "a")
        cluster.pod("default", "c", NODE, ["10.65.0.4"])
        server.store.compact()
    rec = h.recorder
    rec.wait_for(lambda: wep("default", "c") in rec.state, "the relist")
    assert wep("default", "a") not in rec.state and wep("default", "b") in rec.state
    assert h.syncer.relists["pods"] == 1
    # Exactly the difference, in one batch: a deleted, c added; b not repeated.
    assert sorted(k for b in rec.batches[before:] for k, _ in b) == [
        wep("default", "a"),
        wep("default", "c"),
    ]
    assert rec.statuses[-1] == SyncStatus.IN_SYNC


def test_410_as_an_http_status_is_handled_like_the_error_event(server):
    server.gone_as_http = True
    Cluster(server.store).namespace("default")
    client = KubeClient(KubeSettings(server=server.url, source="test"))
    _, rv = client.list_all("/api/v1/namespaces", 10)
    Cluster(server.store).namespace("other")
    server.store.compact()
    with pytest.raises(ResourceExpired) as e:
        client.watch("/api/v1/namespaces", rv, 5)
    assert e.value.code == 410 and "Expired" in e.value.reason
    server.gone_as_http = False
    events = list(client.watch("/api/v1/namespaces", rv, 5))
    assert [ev.type for ev in events] == ["ERROR"] and events[0].object["code"] == 410


def test_a_watch_ended_by_the_server_resumes_from_the_last_version_without_relisting(
    server, harness
):
    cluster = Cluster(server.store)
    cluster.namespace("default")
    h = harness(watch_timeout=1).start()
    h.wait_in_sync()
    cluster.pod("default", "a", NODE, ["10.65.0.2"])
    rec = h.recorder
    rec.wait_for(lambda: wep("default", "a") in rec.state, "the pod")
    last_rv = server.store.get(PODS, "default", "a")["metadata"]["resourceVersion"]
    poll(
        lambda: any(f"resourceVersion={last_rv}&" in p for _, p in server.requests if "pods?" in p),
        "a re-watch from the pod's version",
    )
    assert h.syncer.relists.total() == 0


def test_bookmarks_advance_the_version_without_events(server, harness):
    server.bookmark_interval = 0.2
    cluster = Cluster(server.store)
    cluster.namespace("default")
    h = harness(watch_timeout=1).start()
    h.wait_in_sync()
    cluster.node("node-9")  # moves the version on; the pods watch sees only a bookmark
    rv = str(server.store.rv)
    poll(
        lambda: any(f"pods?watch=true&resourceVersion={rv}&" in p for _, p in server.requests),
        "a pods watch resumed from the bookmark's version",
    )
    assert h.syncer.relists.total() == 0


def test_the_api_server_restarting_costs_one_relist_reporting_only_the_difference(server, harness):
    cluster = Cluster(server.store)
    cluster.namespace("default")
    cluster.pod("default", "a", NODE, ["10.65.0.2"])
    cluster.pod("default", "b", NODE, ["10.65.0.3"])
    h = harness().start()
    h.wait_in_sync()
    rec = h.recorder
    server.stop()
    cluster.delete(PODS, "default", "a")
    server.store.compact()
    before = len(rec.batches)
    server.start()
    rec.wait_for(lambda: wep("default", "a") not in rec.state, "the deletion after restart")
    assert wep("default", "b") in rec.state
    assert [k for b in rec.batches[before:] for k, _ in b] == [wep("default", "a")]


def test_a_token_without_rights_is_retried_until_it_has_them(server, harness, caplog):
    server.tokens = {"ro": reader("felix", ("namespaces", "pods")), "admin": Identity("admin")}
    Cluster(server.store).namespace("default")
    h = harness(token="ro").start()
    h.recorder.wait_for(lambda: SyncStatus.RESYNC in h.recorder.statuses, "the first lists")
    poll(lambda: "networkpolicies is forbidden" in caplog.text, "the 403 in the log")
    assert not h.recorder.in_sync()
    server.tokens["ro"] = reader("felix")
    h.wait_in_sync()


def test_an_unauthorized_token_file_is_read_again(server, tmp_path: Path):
    token = tmp_path / "token"
    token.write_text("old\n")
    server.tokens = {"new": Identity("felix")}
    settings = KubeSettings(server=server.url, source="test", token_file=str(token))
    client = KubeClient(settings)
    token.write_text("new\n")  # rotated before the periodic re-read: the 401 makes it read again
    client._token_read_at = 1e18
    assert client.get("/api/v1/namespaces")["kind"] == "NamespaceList"


def test_absent_calico_resources_count_as_empty(server, harness):
    server.unserved = {"globalfelixconfigs", "ippools"}
    Cluster(server.store).namespace("default")
    h = harness().start()
    h.wait_in_sync()


def test_a_namespace_that_cannot_be_mapped_takes_its_pods_out(server, harness):
    cluster = Cluster(server.store)
    cluster.namespace("default", {"team": "a"})
    cluster.pod("default", "a", NODE, ["10.65.0.2"])
    h = harness().start()
    h.wait_in_sync()
    rec = h.recorder
    assert wep("default", "a") in rec.state
    bad = server.store.get(NAMESPACES, "", "default")
    bad["metadata"]["labels"]["team"] = "a' || all() || '"
    server.store.replace(NAMESPACES, "", "default", bad)  # the store does not validate labels
    rec.wait_for(lambda: wep("default", "a") not in rec.state, "the pod to go")
    assert not any("k8s_ns.default" in k for k in rec.state)
    cluster.relabel(NAMESPACES, "", "default", {"team": "b"})
    rec.wait_for(lambda: wep("default", "a") in rec.state, "the pod to come back")


def test_deleting_a_namespace_deletes_its_pods_policies_and_profile(server, harness):
    cluster = Cluster(server.store)
    cluster.namespace("team")
    cluster.pod("team", "a", NODE, ["10.65.0.2"])
    cluster.policy(network_policy("team", "p"))
    h = harness().start()
    h.wait_in_sync()
    rec = h.recorder
    assert sum("team" in k for k in rec.state) == 4  # endpoint, policy, profile rules and labels
    cluster.delete(NAMESPACES, "", "team")
    rec.wait_for(lambda: not any("team" in k for k in rec.state), "everything of the namespace")


class HostileHandler(BaseHTTPRequestHandler):
    """An API server that answers lists with hostile objects next to good ones, and every watch
    with one broken stream (in turn: a version with a newline, JSON nested too deeply, an
    unknown event type, a line that is not JSON)."""

    protocol_version = "HTTP/1.1"
    watches = 0
    BROKEN = [
        b'{"type": "ADDED", "object": {"metadata": {"resourceVersion": "2\\n"}}}\n',
        b"[" * 100000 + b"]" * 100000 + b"\n",
        b'{"type": "SHRUG", "object": {}}\n',
        b"not json\n",
    ]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if "watch=true" in self.path:
            line = self.BROKEN[HostileHandler.watches % len(self.BROKEN)]
            HostileHandler.watches += 1
            self.send_response(200)
            self.send_header("Content-Length", str(len(line)))
            self.end_headers()
            self.wfile.write(line)
            return
        items: list[Any] = []
        if path == "/api/v1/namespaces":
            items = [{"metadata": {"name": "default"}}, {"metadata": {"name": "a'b"}}]
        elif path == "/api/v1/pods":
            items = [
                {
                    "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
                    "spec": {"nodeName": NODE},
                    "status": {"podIP": "10.65.0.2"},
                },
                {
                    "metadata": {"name": "x", "namespace": "default", "labels": {"a": "b' || '"}},
                    "spec": {"nodeName": NODE},
                    "status": {"podIP": "10.65.0.3"},
                },
                {
                    "metadata": {"name": "y", "namespace": "default"},
                    "spec": {"nodeName": "a/b"},
                    "status": {"podIP": "10.65.0.4"},
                },
                "not an object",
                {"metadata": {"name": ["z"]}},
            ]
        body = json.dumps({"kind": "List", "metadata": {"resourceVersion": "1"}, "items": items})
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_a_hostile_api_server_never_crashes_the_syncer(caplog) -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), HostileHandler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        recorder = Recorder()
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        client = KubeClient(KubeSettings(server=url, source="test"), timeout=5.0)
        syncer = KubeSyncer(client, recorder, backoff_initial=0.05, backoff_max=0.1)
        thread = threading.Thread(target=syncer.run, daemon=True)
        thread.start()
        recorder.wait_for(recorder.in_sync, "in-sync")
        poll(lambda: HostileHandler.watches >= 12, "every broken stream, more than once")
        assert thread.is_alive() and syncer._failure is None
        assert set(recorder.state) >= {wep("default", "web")}
        assert not any("default.x" in k or "default.y" in k or "a'b" in k for k in recorder.state)
        for expected in ("usable resource version", "nested too deeply", "unknown event type",
                         "undecodable JSON", "invalid value", "left out"):  # fmt: skip
            assert expected in caplog.text, expected
        syncer.stop()
        thread.join(10)
    finally:
        httpd.shutdown()
        httpd.server_close()
