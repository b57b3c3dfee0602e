"""Where Felix finds the Kubernetes API: in-cluster (the kubelet's variables and the service
account directory), a kubeconfig file, the K8S_* variables, their precedence and their errors."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from calico.k8s.settings import SettingsError, load


@pytest.fixture
def account(tmp_path: Path) -> Path:
    directory = tmp_path / "serviceaccount"
    directory.mkdir()
    (directory / "token").write_text("sa-token\n")
    (directory / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    return directory


def in_cluster(account: Path, **more: str) -> dict[str, str]:
    return {
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
        "K8S_SERVICE_ACCOUNT_DIR": str(account),
        **more,
    }


def test_in_cluster(account: Path) -> None:
    settings = load(in_cluster(account))
    assert settings.server == "https://10.96.0.1:443"
    assert settings.token_file == str(account / "token") and settings.token is None
    assert settings.ca_file == str(account / "ca.crt")
    assert settings.node_poll and not settings.insecure
    v6 = load(in_cluster(account, KUBERNETES_SERVICE_HOST="fd00::1"))
    assert v6.server == "https://[fd00::1]:443"


def test_in_cluster_with_an_empty_ca_uses_the_system_store(account: Path) -> None:
    (account / "ca.crt").write_text("")
    assert load(in_cluster(account)).ca_file is None


def test_nothing_configured_names_every_way(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as e:
        load({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "K8S_SERVICE_ACCOUNT_DIR": str(tmp_path)})
    for word in ("KUBECONFIG", "K8S_API_ENDPOINT", "KUBERNETES_SERVICE_PORT", "token file absent"):
        assert word in str(e.value)


def test_variables_override_and_the_calico_prefix_wins(account: Path, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    env = {
        "K8S_API_ENDPOINT": "https://api.example:6443",
        "K8S_API_TOKEN": "plain",
        "CALICO_K8S_API_TOKEN": "prefixed",
        "K8S_CA_FILE": str(ca),
        "K8S_DISABLE_NODE_POLL": "true",
        **in_cluster(account),
    }
    settings = load(env)
    assert settings.server == "https://api.example:6443" and settings.source == "K8S_API_ENDPOINT"
    assert settings.token == "prefixed" and settings.token_file is None
    assert settings.ca_file == str(ca) and not settings.node_poll


def kubeconfig(tmp_path: Path, user: dict[str, object], cluster: dict[str, object]) -> Path:
    path = tmp_path / "config"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "lab",
                "contexts": [
                    {"name": "other", "context": {"cluster": "nowhere", "user": "nobody"}},
                    {"name": "lab", "context": {"cluster": "c", "user": "u"}},
                ],
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": user}],
            }
        )
    )
    return path


def test_a_kubeconfig_with_files_relative_to_it(tmp_path: Path) -> None:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    path = kubeconfig(
        tmp_path,
        {"client-certificate": "cert.pem", "client-key": "key.pem"},
        {"server": "https://127.0.0.1:6443", "certificate-authority": "ca.pem"},
    )
    settings = load({"KUBECONFIG": str(path)})
    assert settings.server == "https://127.0.0.1:6443"
    assert settings.ca_file == str(tmp_path / "ca.pem")
    assert (settings.cert_file, settings.key_file) == (
        str(tmp_path / "cert.pem"),
        str(tmp_path / "key.pem"),
    )


def test_a_kubeconfig_with_inline_data_and_a_token(tmp_path: Path) -> None:
    data = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n").decode()
    path = kubeconfig(
        tmp_path,
        {"token": "kc-token"},
        {"server": "https://127.0.0.1:6443", "certificate-authority-data": data},
    )
    settings = load({"KUBECONFIG": str(path), "K8S_API_ENDPOINT": "https://127.0.0.2:6443"})
    assert settings.server == "https://127.0.0.2:6443"  # the variable overrides the file
    assert settings.token == "kc-token"
    assert settings.ca_file is not None
    assert Path(settings.ca_file).read_bytes() == b"-----BEGIN CERTIFICATE-----\n"


@pytest.mark.parametrize(
    ("user", "cluster", "message"),
    [
        ({"exec": {"command": "x"}}, {"server": "https://a:1"}, "exec is not supported"),
        ({}, {"server": "ftp://a:1"}, "need http(s)://host[:port]"),
        ({}, {"server": "https://a:1/prefix"}, "without a path"),
        ({"token": "bad token"}, {"server": "https://a:1"}, "not a valid token"),
        ({"client-certificate": "/etc/hostname"}, {"server": "https://a:1"}, "both or neither"),
        ({}, {"server": "https://a:1", "certificate-authority": "/nonexistent"}, "not readable"),
        ({}, {"server": "https://a:1", "certificate-authority-data": "!!"}, "not base64"),
    ],
)
def test_bad_kubeconfigs_are_refused_clearly(
    tmp_path: Path, user: dict[str, object], cluster: dict[str, object], message: str
) -> None:
    path = kubeconfig(tmp_path, user, cluster)
    with pytest.raises(SettingsError) as e:
        load({"KUBECONFIG": str(path)})
    assert message in str(e.value)


def test_an_unreadable_or_broken_kubeconfig(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read kubeconfig"):
        load({"KUBECONFIG": str(tmp_path / "absent")})
    (tmp_path / "broken").write_text("a: [")
    with pytest.raises(SettingsError, match="cannot read kubeconfig"):
        load({"KUBECONFIG": str(tmp_path / "broken")})
    (tmp_path / "nocontext").write_text("current-context: x\n")
    with pytest.raises(SettingsError, match="no context named 'x'"):
        load({"KUBECONFIG": str(tmp_path / "nocontext")})
