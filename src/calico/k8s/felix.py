"""What calico-felix needs from the Kubernetes datastore at start: a client, its configuration
from the API (GlobalFelixConfigs), and the syncer for the daemon.

Felix's own configuration under `DataplaneDriver = kubernetes`: the environment and the config
file as always; then the GlobalFelixConfig objects take the place of etcd's global config
(`/calico/v1/config/<Name>`). Kubernetes has no per-host Felix config (Calico 2.x read only
`IpInIpTunnelAddr` from Nodes, and this Felix has no IP-in-IP), so "etcd-host" is always empty.
Local-only parameters set in a GlobalFelixConfig are ignored with a warning, as they are in etcd.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from calico.common.quoting import quoted
from calico.common.sync import SyncListener
from calico.k8s import mapping
from calico.k8s.client import KubeApiError, KubeClient, KubeError
from calico.k8s.names import Unmappable
from calico.k8s.settings import load
from calico.k8s.syncer import FELIX_CONFIG_TYPE, Backoff, KubeSyncer

log = logging.getLogger(__name__)

# The parameters that only matter for etcd (said unused at start).
ETCD_PARAMS = (
    "EtcdEndpoints",
    "EtcdAddr",
    "EtcdScheme",
    "EtcdKeyFile",
    "EtcdCertFile",
    "EtcdCaFile",
)


def connect(env: Mapping[str, str]) -> KubeClient:
    """A client for the API server the environment names; SettingsError if it names none."""
    return KubeClient(load(env))


def read_config(client: KubeClient, hostname: str) -> tuple[dict[str, str], dict[str, str]]:
    """(host config, global config) raw values: {} and the GlobalFelixConfigs' parameters."""
    global_raw: dict[str, str] = {}
    try:
        items, _ = client.list_all(FELIX_CONFIG_TYPE.path, 500)
    except KubeApiError as e:
        if e.code != 404:
            raise
        log.info("No GlobalFelixConfig resource in this cluster (404): no global configuration")
        items = []
    named = sorted(
        (item for item in items if isinstance(item, dict)),
        key=lambda item: str((item.get("metadata") or {}).get("name")),
    )
    for item in named:
        try:
            keys = mapping.felix_config_keys(item)
        except Unmappable as e:
            log.warning("Ignoring GlobalFelixConfig %s: %s", quoted(item.get("metadata")), e)
            continue
        for key, value in keys.items():
            name = key.rsplit("/", 1)[1]
            global_raw.setdefault(name, value)  # the first by object name wins, as in the syncer
    if client.settings.node_poll:
        _check_node(client, hostname)
    return {}, global_raw


def _check_node(client: KubeClient, hostname: str) -> None:
    """Advisory: warn when no Node has Felix's hostname (the pods' spec.nodeName would never
    match); a refusal to answer is only logged, it must not stop Felix."""
    try:
        client.get(f"/api/v1/nodes/{hostname}")
    except KubeApiError as e:
        if e.code == 404:
            log.warning(
                "No Kubernetes Node is named %r: FelixHostname must be this node's name, or no "
                "pod will be found on this host",
                hostname,
            )
        else:
            log.warning("Cannot check that Node %r exists: %s", hostname, e)


def read_config_until(
    client: KubeClient, hostname: str, stop: threading.Event, deadline: float | None
) -> tuple[dict[str, str], dict[str, str]] | None:
    """read_config, retried with backoff until it answers; None when stopped; the last error
    once `deadline` (monotonic) has passed."""
    backoff = Backoff(initial=0.5, maximum=5.0)
    last_log = 0.0
    while not stop.is_set():
        try:
            return read_config(client, hostname)
        except KubeError as e:
            if deadline is not None and time.monotonic() >= deadline:
                raise
            if time.monotonic() - last_log >= 5.0:
                log.warning("Waiting for the Kubernetes API at %s: %s", client.settings.server, e)
                last_log = time.monotonic()
            delay = backoff.next_delay()
            if deadline is not None:
                delay = max(0.0, min(delay, deadline - time.monotonic()))
            stop.wait(delay)
    return None


def syncer_factory(client: KubeClient) -> Callable[[SyncListener], KubeSyncer]:
    return lambda listener: KubeSyncer(client, listener)
