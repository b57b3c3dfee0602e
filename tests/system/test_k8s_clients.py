"""The lab Kubernetes API server speaks the API: clients nobody here wrote, Debian's real `kubectl`
(package kubernetes-client, 1.20) and the official Python client (`kubernetes`), drive it over
TLS with bearer tokens: discovery, get, list (selectors, paging), watch (`get -w`, Watch.stream,
bookmarks, 410), apply (create, then a strategic merge patch), delete (and a namespace's
cascade), 401, 403 and a wrong CA. The server runs on the root namespace's loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from kubernetes.client.rest import ApiException
from kubernetes.config import load_kube_config
from kubernetes.config.incluster_config import InClusterConfigLoader

from calico.lab.kube_apiserver import Identity, KubeApiServer, reader
from calico.lab.kube_objects import Cluster
from calico.lab.kube_resources import NAMESPACES, NETWORK_POLICIES, PODS
from calico.lab.tls import make_tls

ADMIN, VIEWER = "admin-token", "viewer-token"
MANIFESTS = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: shop}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {nodeName: node-1, containers: [{name: main, image: busybox}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-in, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 5432}]
"""


def debian_kubectl() -> str:
    """Debian's kubectl: /usr/bin/kubectl when the kubernetes-client package owns it, else the
    copy `make setup` unpacks into .venv/debian (where another package, such as Google Cloud
    CLI's `kubectl`, owns /usr/bin/kubectl and dpkg cannot install Debian's over it)."""
    owner = subprocess.run(
        ["dpkg", "-S", "/usr/bin/kubectl"], capture_output=True, text=True, check=False
    )
    if owner.stdout.startswith("kubernetes-client:"):
        return "/usr/bin/kubectl"
    unpacked = Path(sys.prefix) / "debian/usr/bin/kubectl"
    if unpacked.exists():
        return str(unpacked)
    pytest.fail("Debian's kubectl is missing: run `make setup` (Makefile target kubectl)")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeApiServer]:
    tls = make_tls(tmp_path_factory.mktemp("tls"))
    tokens = {ADMIN: Identity("admin"), VIEWER: reader("viewer")}
    api = KubeApiServer(tls=tls, tokens=tokens, bookmark_interval=0.3).start()
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def fresh(server: KubeApiServer) -> KubeApiServer:
    """The module's server with no namespace but `default` (and what is in it)."""
    for item in server.store.list(NAMESPACES, None, lambda obj: True)[0]:
        server.store.delete(NAMESPACES, "", item["metadata"]["name"])
    Cluster(server.store).namespace("default")
    return server


class Kubectl:
    def __init__(self, server: KubeApiServer) -> None:
        assert server.tls is not None
        self.base = [
            debian_kubectl(),
            f"--server={server.url}",
            f"--certificate-authority={server.tls.ca_file}",
            "--request-timeout=10s",
        ]

    def argv(self, *args: str, token: str = ADMIN) -> list[str]:
        return [*self.base, f"--token={token}", *args]

    def __call__(
        self, *args: str, token: str = ADMIN, stdin: str | None = None, ok: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.argv(*args, token=token),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if ok:
            assert proc.returncode == 0, proc.stderr
        return proc


@pytest.fixture
def kubectl(fresh: KubeApiServer) -> Kubectl:
    return Kubectl(fresh)


def test_it_is_debians_kubectl(kubectl: Kubectl) -> None:
    version = json.loads(kubectl("version", "-o", "json").stdout)
    assert version["clientVersion"]["gitVersion"] == "v1.20.2"
    assert version["serverVersion"]["gitVersion"].startswith("v1.20")


def test_discovery(kubectl: Kubectl) -> None:
    out = kubectl("api-resources", "-o", "name").stdout.split()
    expected = ["pods", "namespaces", "nodes", "networkpolicies.networking.k8s.io"]
    expected += ["globalfelixconfigs.crd.projectcalico.org", "ippools.crd.projectcalico.org"]
    for name in expected:
        assert name in out


def test_apply_get_patch_and_delete(kubectl: Kubectl, fresh: KubeApiServer) -> None:
    # No OpenAPI document here: --validate=false skips kubectl's client-side schema check.
    out = kubectl("apply", "--validate=false", "-f", "-", stdin=MANIFESTS).stdout
    assert "namespace/shop created" in out and "pod/web created" in out
    assert "networkpolicy.networking.k8s.io/db-in created" in out
    policy = fresh.store.get(NETWORK_POLICIES, "shop", "db-in")
    assert policy["spec"]["policyTypes"] == ["Ingress"]  # the API server's defaulting
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": 5432, "protocol": "TCP"}]

    changed = MANIFESTS.replace("labels: {app: web}", "labels: {app: web, tier: front}")
    out = kubectl("apply", "--validate=false", "-f", "-", stdin=changed).stdout
    assert "pod/web configured" in out and "namespace/shop unchanged" in out
    assert any(m == "PATCH" and "/namespaces/shop/pods/web" in p for m, p in fresh.requests)
    got = json.loads(kubectl("get", "pod", "web", "-n", "shop", "-o", "json").stdout)
    assert got["metadata"]["labels"] == {"app": "web", "tier": "front"}
    assert got["spec"]["nodeName"] == "node-1"

    names = kubectl("get", "pods", "-A", "-l", "tier=front", "-o", "name").stdout.split()
    assert names == ["pod/web"]
    assert kubectl("get", "pods", "-A", "-l", "tier!=front", "-o", "name").stdout.strip() == ""
    by_field = kubectl(
        "get", "pods", "-A", "--field-selector", "spec.nodeName=node-1", "-o", "name"
    )
    assert by_field.stdout.split() == ["pod/web"]

    assert 'pod "web" deleted' in kubectl("delete", "pod", "web", "-n", "shop").stdout
    missing = kubectl("get", "pod", "web", "-n", "shop", ok=False)
    assert missing.returncode == 1 and 'pods "web" not found' in missing.stderr
    kubectl("delete", "namespace", "shop")
    assert kubectl("get", "networkpolicies", "-A", "-o", "name").stdout.strip() == ""


def test_get_lists_in_chunks(kubectl: Kubectl, fresh: KubeApiServer) -> None:
    cluster = Cluster(fresh.store)
    for i in range(5):
        cluster.pod("default", f"p{i}", "node-1", [f"10.65.0.{i + 2}"])
    out = kubectl("get", "pods", "--chunk-size=2", "-o", "name").stdout.split()
    assert out == [f"pod/p{i}" for i in range(5)]
    chunks = [p for _, p in fresh.requests if "/namespaces/default/pods?" in p and "limit=2" in p]
    assert len(chunks) == 3 and sum("continue=" in p for p in chunks) == 2


def test_get_watch_streams_every_change(kubectl: Kubectl, fresh: KubeApiServer) -> None:
    cluster = Cluster(fresh.store)
    cluster.pod("default", "a", "node-1", ["10.65.0.2"])
    argv = kubectl.argv("get", "pods", "-w", "--output-watch-events", "-o", "json")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)  # kubectl lists, then watches from the list's version
        cluster.relabel(PODS, "default", "a", {"x": "1"})
        cluster.pod("default", "b", "node-1", ["10.65.0.3"])
        cluster.delete(PODS, "default", "a")
        time.sleep(1.5)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    events = [json.loads(chunk) for chunk in _json_objects(out)]
    seen = [(e["type"], e["object"]["metadata"]["name"]) for e in events]
    assert seen[0] == ("ADDED", "a")
    assert ("MODIFIED", "a") in seen and ("DELETED", "a") in seen and ("ADDED", "b") in seen, err
    assert any("pods?resourceVersion=" in p and "watch=true" in p for _, p in fresh.requests)


def _json_objects(text: str) -> Iterator[str]:
    decoder = json.JSONDecoder()
    pos = 0
    while pos < len(text):
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        obj, end = decoder.raw_decode(text, pos)
        yield json.dumps(obj)
        pos = end


def test_authentication_authorization_and_tls_are_enforced(
    kubectl: Kubectl, tmp_path: Path
) -> None:
    bad = kubectl("get", "pods", token="no-such-token", ok=False)
    assert bad.returncode == 1 and "Unauthorized" in bad.stderr
    assert kubectl("get", "pods", token=VIEWER).returncode == 0
    forbidden = kubectl("delete", "pod", "x", token=VIEWER, ok=False)
    assert forbidden.returncode == 1
    assert 'Error from server (Forbidden): pods "x" is forbidden: User "viewer" cannot delete' in (
        forbidden.stderr
    )
    other_ca = make_tls(tmp_path / "other").ca_file
    ca_flag = f"--certificate-authority={other_ca}"
    argv = [ca_flag if a.startswith("--certificate-authority=") else a for a in kubectl.argv("get")]
    wrong = subprocess.run([*argv, "pods"], capture_output=True, text=True, timeout=30, check=False)
    assert wrong.returncode == 1 and "x509" in wrong.stderr


# --- The official Python client ------------------------------------------------------------------


@pytest.fixture
def api_client(fresh: KubeApiServer, tmp_path: Path) -> Iterator[k8s.ApiClient]:
    """Configured by the client's own in-cluster loader from a service account directory laid
    out as in a pod (the layout calico-felix reads too)."""
    assert fresh.tls is not None
    (tmp_path / "token").write_text(ADMIN)
    (tmp_path / "ca.crt").write_bytes(fresh.tls.ca_file.read_bytes())
    environ = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(fresh.port)}
    configuration = k8s.Configuration()
    InClusterConfigLoader(
        token_filename=str(tmp_path / "token"),
        cert_filename=str(tmp_path / "ca.crt"),
        environ=environ,
    ).load_and_set(configuration)
    with k8s.ApiClient(configuration) as api:
        yield api


def test_python_client_lists_in_pages_at_one_version(api_client: k8s.ApiClient, fresh) -> None:
    core = k8s.CoreV1Api(api_client)
    cluster = Cluster(fresh.store)
    for i in range(5):
        cluster.pod("default", f"p{i}", "node-1", [f"10.65.0.{i + 2}"])
    first = core.list_pod_for_all_namespaces(limit=2)
    assert [p.metadata.name for p in first.items] == ["p0", "p1"]
    assert first.metadata.remaining_item_count == 3
    cluster.pod("default", "p9", "node-1", ["10.65.0.99"])  # after the first page: not seen
    rest = core.list_pod_for_all_namespaces(limit=10, _continue=first.metadata._continue)
    assert [p.metadata.name for p in rest.items] == ["p2", "p3", "p4"]
    assert rest.metadata._continue is None
    assert rest.metadata.resource_version == first.metadata.resource_version
    fresh.store.compact()
    with pytest.raises(ApiException) as e:
        core.list_pod_for_all_namespaces(limit=2, _continue=first.metadata._continue)
    assert e.value.status == 410 and json.loads(e.value.body)["reason"] == "Expired"


def test_python_client_watches_with_bookmarks(api_client: k8s.ApiClient, fresh) -> None:
    core = k8s.CoreV1Api(api_client)
    cluster = Cluster(fresh.store)
    listed = core.list_namespaced_pod("default")

    def changes() -> None:
        time.sleep(0.5)
        cluster.pod("default", "a", "node-1", ["10.65.0.2"])
        cluster.delete(PODS, "default", "a")

    threading.Thread(target=changes, daemon=True).start()
    events: list[tuple[str, Any]] = []
    stream = k8s_watch.Watch().stream(
        core.list_namespaced_pod,
        "default",
        resource_version=listed.metadata.resource_version,
        allow_watch_bookmarks=True,
        timeout_seconds=4,
    )
    for event in stream:
        obj = event["object"]
        name = (
            obj["metadata"]["resourceVersion"] if event["type"] == "BOOKMARK" else obj.metadata.name
        )
        events.append((event["type"], name))
    kinds = [t for t, _ in events]
    changes = [t for t in kinds if t != "BOOKMARK"]
    assert changes == ["ADDED", "MODIFIED", "DELETED"]  # created, then its status, then gone
    assert "BOOKMARK" in kinds


def test_python_client_meets_410_and_403(api_client: k8s.ApiClient, fresh, tmp_path) -> None:
    core = k8s.CoreV1Api(api_client)
    old = core.list_namespace().metadata.resource_version
    Cluster(fresh.store).namespace("later")
    fresh.store.compact()
    with pytest.raises(ApiException) as e:  # an ERROR event; the client retries once, then raises
        for _ in k8s_watch.Watch().stream(core.list_namespace, resource_version=old):
            pass
    assert e.value.status == 410
    config = tmp_path / "kubeconfig"
    assert fresh.tls is not None
    config.write_text(
        json.dumps(
            {
                "current-context": "v",
                "contexts": [{"name": "v", "context": {"cluster": "c", "user": "u"}}],
                "clusters": [{"name": "c", "cluster": {"server": fresh.url,
                              "certificate-authority": str(fresh.tls.ca_file)}}],
                "users": [{"name": "u", "user": {"token": VIEWER}}],
            }
        )
    )  # fmt: skip
    viewer = k8s.Configuration()
    load_kube_config(config_file=str(config), client_configuration=viewer)
    with k8s.ApiClient(viewer) as api:
        assert k8s.NetworkingV1Api(api).list_network_policy_for_all_namespaces().items == []
        custom = k8s.CustomObjectsApi(api)
        listed = custom.list_cluster_custom_object(
            "crd.projectcalico.org", "v1", "globalfelixconfigs"
        )
        assert listed["items"] == []
        with pytest.raises(ApiException) as forbidden:
            k8s.CoreV1Api(api).create_namespace({"metadata": {"name": "nope"}})
    assert forbidden.value.status == 403
    status = json.loads(forbidden.value.body)
    assert status["kind"] == "Status" and status["reason"] == "Forbidden"


def test_python_client_creates_with_defaults(api_client: k8s.ApiClient) -> None:
    net = k8s.NetworkingV1Api(api_client)
    body = k8s.V1NetworkPolicy(
        metadata=k8s.V1ObjectMeta(name="p"),
        spec=k8s.V1NetworkPolicySpec(
            pod_selector=k8s.V1LabelSelector(),
            egress=[k8s.V1NetworkPolicyEgressRule(ports=[k8s.V1NetworkPolicyPort(port=53)])],
        ),
    )
    created = net.create_namespaced_network_policy("default", body)
    assert created.spec.policy_types == ["Ingress", "Egress"]
    assert created.spec.egress[0].ports[0].protocol == "TCP"
    with pytest.raises(ApiException) as e:
        net.create_namespaced_network_policy("default", body)
    assert e.value.status == 409 and json.loads(e.value.body)["reason"] == "AlreadyExists"
