"""Every key path of the Calico v1 data model in etcd; no other module builds key strings.

Orchestrator -> Felix data lives under /calico/v1, Felix -> orchestrator status under
/calico/felix/v1. This module grows with the data model (endpoints, profiles, policies...);
for now it holds the paths Felix needs to start: the Ready flag and the config directories.
"""

from __future__ import annotations

ROOT = "/calico"
VERSION_DIR = "/calico/v1"
READY_KEY = "/calico/v1/Ready"
CONFIG_DIR = "/calico/v1/config"
HOST_DIR = "/calico/v1/host"
FELIX_STATUS_DIR = "/calico/felix/v1"

READY_VALUE = "true"


def global_config_dir() -> str:
    return CONFIG_DIR


def host_config_dir(hostname: str) -> str:
    return f"{HOST_DIR}/{hostname}/config"


def config_key(name: str, hostname: str | None = None) -> str:
    """The key of a config parameter, global or (with hostname) host-specific."""
    base = host_config_dir(hostname) if hostname else CONFIG_DIR
    return f"{base}/{name}"


def parse_config_key(key: str) -> tuple[str | None, str] | None:
    """(hostname or None for global, parameter name) for a config key, else None."""
    prefix = CONFIG_DIR + "/"
    if key.startswith(prefix):
        name = key[len(prefix) :]
        return (None, name) if name and "/" not in name else None
    parts = key.split("/")
    # "", "calico", "v1", "host", <hostname>, "config", <name>
    if len(parts) == 7 and key.startswith(HOST_DIR + "/") and parts[5] == "config" and parts[6]:
        return parts[4], parts[6]
    return None
