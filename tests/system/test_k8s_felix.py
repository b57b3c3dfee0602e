"""calico-felix with `DataplaneDriver = kubernetes` against the lab API server: where it finds the
API (in-cluster variables, a kubeconfig), its configuration from GlobalFelixConfigs (local-only
parameters refused there as in etcd, a change restarts Felix), and how it waits for an API server
that is not there yet or a token without rights. Felix runs in a lab namespace."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from calico.lab.felix import run_felix
from calico.lab.kube_apiserver import Identity, KubeApiServer, reader
from calico.lab.kube_node import KubeNode
from calico.lab.tls import make_tls

pytestmark = pytest.mark.root

START = 30.0


@pytest.fixture
def node(tmp_path: Path) -> Iterator[KubeNode]:
    server = KubeApiServer(tls=make_tls(tmp_path / "tls")).start()
    kube_node = KubeNode(server, tmp_path / "node", "k8s-sys-1", prefix="k8ssys")
    kube_node.cluster.namespace("default")
    try:
        yield kube_node
    finally:
        kube_node.close()
        server.close()


def show_config(node: KubeNode, **env: str) -> tuple[int, dict, str]:
    proc = run_felix(node.host.ns, ["--show-config"], node.felix_env(**env))
    assert "Traceback" not in proc.stderr
    data = json.loads(proc.stdout) if proc.returncode == 0 else {}
    return proc.returncode, data, proc.stderr


def test_show_config_reads_global_felix_configs(node: KubeNode) -> None:
    node.cluster.felix_config("LogSeverityFile", "debug")
    node.cluster.felix_config("FelixHostname", "elsewhere")  # local-only: never from the API
    node.cluster.felix_config("MetadataPort", "8080")
    code, data, stderr = show_config(node, FELIX_METADATAPORT="9000")
    assert code == 0, stderr
    assert data["LogSeverityFile"] == {"value": "DEBUG", "source": "etcd-global"}
    assert data["MetadataPort"] == {"value": 9000, "source": "env"}
    assert data["FelixHostname"]["value"] == "k8s-sys-1"
    assert "Ignoring FelixHostname in GlobalFelixConfig" in stderr


def test_a_bad_value_in_a_global_felix_config_is_a_configuration_error(node: KubeNode) -> None:
    node.cluster.felix_config("MetadataPort", "eighty")
    code, _, stderr = show_config(node)
    assert code == 2
    assert "MetadataPort='eighty' (from etcd-global): not an integer" in stderr


def test_a_kubeconfig_instead_of_the_pod_environment(node: KubeNode, tmp_path: Path) -> None:
    assert node.server.tls is not None
    token = "kubeconfig-token"
    node.grant(token, reader("felix-outside-a-pod"))
    config = tmp_path / "kubeconfig"
    config.write_text(
        yaml.safe_dump(
            {
                "current-context": "lab",
                "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "felix"}}],
                "clusters": [
                    {
                        "name": "lab",
                        "cluster": {
                            "server": node.server.url,
                            "certificate-authority": str(node.server.tls.ca_file),
                        },
                    }
                ],
                "users": [{"name": "felix", "user": {"token": token}}],
            }
        )
    )
    felix = node.start_felix(
        KUBECONFIG=str(config), KUBERNETES_SERVICE_HOST="", K8S_SERVICE_ACCOUNT_DIR="/nonexistent"
    )
    felix.wait_for("Dataplane programmed", timeout=START)
    assert f"kubeconfig {config}" in felix.text()


def test_felix_restarts_when_its_global_config_changes(node: KubeNode) -> None:
    felix = node.start_felix()
    felix.wait_for("Dataplane programmed", timeout=START)
    node.cluster.felix_config("LogSeverityFile", "debug")
    assert felix.wait_exit(timeout=20) == 1
    assert "Felix configuration changed" in felix.text()
    assert "LogSeverityFile: 'INFO' -> 'DEBUG'" in felix.text()


def test_felix_waits_for_an_api_server_that_is_not_there_yet(node: KubeNode) -> None:
    node.server.stop()
    felix = node.start_felix()
    felix.wait_for("Waiting for the Kubernetes API at https://127.0.0.1", timeout=START)
    node.server.start()
    felix.wait_for("Dataplane programmed", timeout=START)


def test_a_token_without_rights_is_logged_and_retried(node: KubeNode) -> None:
    node.grant(node.token, Identity("restricted", frozenset({("list", "globalfelixconfigs")})))
    felix = node.start_felix()
    felix.wait_for(
        'pods is forbidden: User "restricted" cannot list resource "pods"', timeout=START
    )
    time.sleep(1)
    assert felix.proc.poll() is None
    assert "Dataplane programmed" not in felix.text()
    node.grant(node.token, reader("calico-node"))
    felix.wait_for("Dataplane programmed", timeout=START)
