"""calico-bgp's Prometheus metrics, in prometheus-client's default registry (with its process
collector), served on the daemon's own port (`--metrics-port`) as Felix serves its own.
docs/multihost.md lists them."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, start_http_server

from calico.bgp.status import Protocol, bgp_sessions

log = logging.getLogger(__name__)

PEERS_CONFIGURED = Gauge("calico_bgp_peers", "BGP sessions in BIRD's running configuration")
PEERS_ESTABLISHED = Gauge("calico_bgp_peers_established", "BGP sessions in state Established")
ROUTES_IMPORTED = Gauge(
    "calico_bgp_routes_imported", "Routes BIRD accepted from its BGP peers (all sessions)"
)
ROUTES_EXPORTED = Gauge(
    "calico_bgp_routes_exported", "Routes BIRD advertises to its BGP peers (all sessions)"
)
BIRD_UP = Gauge("calico_bgp_bird_up", "1 when BIRD's control socket answered the last poll")
RELOADS = Counter("calico_bgp_reloads", "BIRD reconfigurations that succeeded")
RELOAD_FAILURES = Counter(
    "calico_bgp_reload_failures", "BIRD reconfigurations refused by BIRD or not possible"
)
RENDER_FAILURES = Counter(
    "calico_bgp_render_failures",
    "Configurations that could not be rendered or that bird -p refused (the old file stayed)",
)
CONFIG_WRITES = Counter("calico_bgp_config_writes", "Times BIRD's configuration file was written")
REFUSED_KEYS = Gauge(
    "calico_bgp_refused_keys", "etcd keys left out of BIRD's configuration (bad key or value)"
)
IN_SYNC = Gauge("calico_bgp_in_sync", "1 when both datastore syncers are in sync, else 0")


def observe_protocols(protocols: list[Protocol]) -> None:
    sessions = bgp_sessions(protocols)
    PEERS_CONFIGURED.set(len(sessions))
    PEERS_ESTABLISHED.set(sum(1 for p in sessions if p.established))
    ROUTES_IMPORTED.set(sum(p.imported for p in sessions))
    ROUTES_EXPORTED.set(sum(p.exported for p in sessions))
    BIRD_UP.set(1)


def bird_down() -> None:
    BIRD_UP.set(0)
    PEERS_ESTABLISHED.set(0)


def serve(port: int) -> bool:
    """Serve the default registry on 0.0.0.0:port (a daemon thread). A port in use is logged,
    not fatal: metrics are an aid, and must not stop BIRD being configured."""
    try:
        start_http_server(port, addr="0.0.0.0")  # all addresses: Prometheus scrapes remotely
    except OSError as e:
        log.error("Cannot serve calico-bgp's Prometheus metrics on port %d: %s", port, e)
        return False
    log.info("Serving calico-bgp's Prometheus metrics on port %d", port)
    return True
