"""Where the Kubernetes API server is and how Felix authenticates to it (docs/kubernetes.md,
"Configuration"). Reads the environment and files only; no network.

The variables are Calico's (libcalico-go's `KubeConfig`), each also accepted with a `CALICO_`
prefix, which wins: `KUBECONFIG` (a kubeconfig file), `K8S_API_ENDPOINT`, `K8S_API_TOKEN`,
`K8S_CA_FILE`, `K8S_CERT_FILE` / `K8S_KEY_FILE`, `K8S_INSECURE_SKIP_TLS_VERIFY`,
`K8S_DISABLE_NODE_POLL`; the kubelet's `KUBERNETES_SERVICE_HOST` / `KUBERNETES_SERVICE_PORT`; and
this project's `K8S_SERVICE_ACCOUNT_DIR` (default `/var/run/secrets/kubernetes.io/serviceaccount`,
for tests and unusual mounts). Each is described in docs/kubernetes.md.

Precedence (client-go's, as Calico used it): a kubeconfig, with any `K8S_*` on top; else the
`K8S_*` variables alone when `K8S_API_ENDPOINT` is set; else in-cluster mode when both
`KUBERNETES_SERVICE_*` variables are set and the token file exists (`https://<host>:<port>`, the
token file, re-read every minute and after a 401, and `ca.crt`); else an error naming each.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml  # type: ignore[import-untyped]

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
_TOKEN_RE = re.compile(r"[\x21-\x7e]{1,16384}")  # printable, no spaces: safe in a header
_TRUE = ("1", "t", "true", "yes", "on")


class SettingsError(Exception):
    """The Kubernetes API cannot be reached with this configuration; the message says why."""


@dataclass(frozen=True)
class KubeSettings:
    server: str  # scheme://host:port, no path
    source: str  # where the settings came from, for the log
    token: str | None = None
    token_file: str | None = None  # re-read periodically (projected tokens rotate)
    ca_file: str | None = None  # None: the system trust store
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    node_poll: bool = True

    def describe(self) -> str:
        auth = (
            "a token file"
            if self.token_file
            else "a token"
            if self.token
            else "a client certificate"
            if self.cert_file
            else "no credentials"
        )
        verify = "not verified" if self.insecure else f"CA {self.ca_file or 'system store'}"
        return f"{self.server} ({self.source}; {auth}; server certificate {verify})"


def _get(env: Mapping[str, str], name: str) -> str | None:
    for spelling in (f"CALICO_{name}", name):
        value = env.get(spelling)
        if value is not None and value.strip():
            return value.strip()
    return None


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = _get(env, name)
    return value is not None and value.lower() in _TRUE


def load(env: Mapping[str, str]) -> KubeSettings:
    """The settings the environment describes; SettingsError when it describes none or a bad one."""
    kubeconfig = _get(env, "KUBECONFIG")
    endpoint = _get(env, "K8S_API_ENDPOINT")
    fields: dict[str, Any]
    if kubeconfig:
        fields = _from_kubeconfig(Path(kubeconfig))
    elif endpoint:
        fields = {"server": endpoint, "source": "K8S_API_ENDPOINT"}
    else:
        fields = _in_cluster(env)
    overrides = {
        "server": endpoint,
        "token": _get(env, "K8S_API_TOKEN"),
        "ca_file": _get(env, "K8S_CA_FILE"),
        "cert_file": _get(env, "K8S_CERT_FILE"),
        "key_file": _get(env, "K8S_KEY_FILE"),
    }
    fields.update({k: v for k, v in overrides.items() if v is not None})
    if overrides["token"] is not None:
        fields.pop("token_file", None)
    if _flag(env, "K8S_INSECURE_SKIP_TLS_VERIFY"):
        fields["insecure"] = True
    fields["node_poll"] = not _flag(env, "K8S_DISABLE_NODE_POLL")
    return _checked(KubeSettings(**fields))


def _in_cluster(env: Mapping[str, str]) -> dict[str, Any]:
    host = env.get("KUBERNETES_SERVICE_HOST", "").strip()
    port = env.get("KUBERNETES_SERVICE_PORT", "").strip()
    directory = Path(_get(env, "K8S_SERVICE_ACCOUNT_DIR") or SERVICE_ACCOUNT_DIR)
    token_file = directory / "token"
    if not host or not port or not token_file.is_file():
        raise SettingsError(
            "DataplaneDriver=kubernetes needs the Kubernetes API: set KUBECONFIG (a kubeconfig "
            "file) or K8S_API_ENDPOINT (with K8S_API_TOKEN or K8S_CERT_FILE/K8S_KEY_FILE), or run "
            "in a pod (KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT set, "
            f"{token_file} present; found host={host!r}, port={port!r}, "
            f"token file {'present' if token_file.is_file() else 'absent'})"
        )
    try:
        host = f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        pass  # a name
    ca_file = directory / "ca.crt"
    return {
        "server": f"https://{host}:{port}",
        "source": f"in-cluster, service account in {directory}",
        "token_file": str(token_file),
        "ca_file": str(ca_file) if ca_file.is_file() and ca_file.stat().st_size else None,
    }


def _from_kubeconfig(path: Path) -> dict[str, Any]:
    """The current context of a kubeconfig file, as settings fields."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise SettingsError(f"cannot read kubeconfig {path}: {e}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"kubeconfig {path} is not a map")
    current = data.get("current-context")
    context = _named(data, "contexts", current, "context", path)
    cluster = _named(data, "clusters", context.get("cluster"), "cluster", path)
    user = _named(data, "users", context.get("user"), "user", path) if context.get("user") else {}
    base = path.parent
    unsupported = sorted(set(user) & {"exec", "auth-provider", "username", "password"})
    if unsupported:
        raise SettingsError(f"kubeconfig {path}: user {', '.join(unsupported)} is not supported")
    server = cluster.get("server")
    if not isinstance(server, str):
        raise SettingsError(f"kubeconfig {path}: cluster has no server")
    fields: dict[str, Any] = {"server": server, "source": f"kubeconfig {path}"}
    fields["ca_file"] = _file_or_data(cluster, "certificate-authority", base, path)
    fields["insecure"] = cluster.get("insecure-skip-tls-verify") is True
    fields["cert_file"] = _file_or_data(user, "client-certificate", base, path)
    fields["key_file"] = _file_or_data(user, "client-key", base, path)
    if isinstance(user.get("token"), str):
        fields["token"] = user["token"].strip()
    elif isinstance(user.get("tokenFile"), str):
        fields["token_file"] = str(base / user["tokenFile"])
    return fields


def _named(
    data: dict[str, Any], section: str, name: object, field: str, path: Path
) -> dict[str, Any]:
    for entry in data.get(section) or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            value = entry.get(field)
            if isinstance(value, dict):
                return value
    raise SettingsError(f"kubeconfig {path}: no {field} named {name!r} in {section}")


def _file_or_data(section: dict[str, Any], field: str, base: Path, path: Path) -> str | None:
    """A file the kubeconfig names (relative to the kubeconfig), or its inline `-data` written
    to a private file (requests needs a path)."""
    data = section.get(f"{field}-data")
    if isinstance(data, str):
        try:
            content = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise SettingsError(f"kubeconfig {path}: {field}-data is not base64") from None
        fd, name = tempfile.mkstemp(prefix=f"calico-k8s-{field}-", suffix=".pem")
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        return name
    value = section.get(field)
    return str(base / value) if isinstance(value, str) else None


def _checked(settings: KubeSettings) -> KubeSettings:
    url = urlsplit(settings.server)
    if url.scheme not in ("http", "https") or not url.hostname or url.path not in ("", "/"):
        raise SettingsError(
            f"Kubernetes API server {settings.server!r} ({settings.source}): need "
            "http(s)://host[:port] without a path"
        )
    if settings.token is not None and not _TOKEN_RE.fullmatch(settings.token):
        raise SettingsError(f"the Kubernetes API token ({settings.source}) is not a valid token")
    if (settings.cert_file is None) != (settings.key_file is None):
        raise SettingsError("K8S_CERT_FILE and K8S_KEY_FILE: set both or neither")
    for name in ("token_file", "ca_file", "cert_file", "key_file"):
        value = getattr(settings, name)
        if value is not None and not os.access(value, os.R_OK):
            raise SettingsError(
                f"{name.replace('_', ' ')} {value} ({settings.source}) is not readable"
            )
    return settings


def read_token_file(path: str) -> str:
    """A token file's token; SettingsError when it is unreadable or not a token."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsError(f"cannot read the token file {path}: {e}") from None
    if not _TOKEN_RE.fullmatch(token):
        raise SettingsError(f"the token file {path} does not hold a valid token")
    return token
