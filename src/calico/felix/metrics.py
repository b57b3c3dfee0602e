"""Felix's Prometheus metrics (felix.md §6.4; docs/design/status.md lists them).

Every metric lives in prometheus-client's default registry, which also carries the process
collector (CPU, memory, file descriptors, start time) and the Python GC/platform collectors.
The counters are updated whether or not the server runs (it costs a few increments per batch);
`serve()` exposes them when PrometheusMetricsEnabled. The dataplane driver process has its own
registry and server (`calico.felix.driver.metrics`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, start_http_server

from calico.common.sync import SyncStatus
from calico.felix.calc import messages as m

log = logging.getLogger(__name__)

DATASTORE_UPDATES = Counter(
    "felix_datastore_updates", "Datastore key updates and deletions received from etcd"
)
RESYNCS_STARTED = Counter(
    "felix_resyncs_started", "Times Felix started (re)reading the whole datastore snapshot"
)
RESYNC_STATE = Gauge(
    "felix_resync_state", "Datastore sync state: 1 waiting for Ready, 2 resyncing, 3 in sync"
)
IN_SYNC = Gauge("felix_in_sync", "1 while Felix is in sync with the datastore, else 0")
MESSAGES_SENT = Counter(
    "felix_dataplane_messages_sent", "Messages sent to the dataplane driver process"
)
LOCAL_ENDPOINTS = Gauge(
    "felix_local_endpoints", "Endpoints on this host sent to the dataplane", ["kind"]
)
ACTIVE_POLICIES = Gauge("felix_active_policies", "Policies used by at least one local endpoint")
ACTIVE_PROFILES = Gauge("felix_active_profiles", "Profiles used by at least one local endpoint")
IPSETS = Gauge("felix_ipsets", "IP sets in use by active rules")
IPSET_MEMBERS = Gauge("felix_ipset_members", "Members over all active IP sets")

_STATE_NUMBERS = {SyncStatus.WAIT_FOR_READY: 1, SyncStatus.RESYNC: 2, SyncStatus.IN_SYNC: 3}


def on_sync_status(status: SyncStatus) -> None:
    RESYNC_STATE.set(_STATE_NUMBERS[status])
    IN_SYNC.set(1 if status == SyncStatus.IN_SYNC else 0)
    if status == SyncStatus.RESYNC:
        RESYNCS_STARTED.inc()


def on_datastore_updates(count: int) -> None:
    DATASTORE_UPDATES.inc(count)


class DataplaneStats:
    """What the calc graph has told the dataplane, counted from the messages themselves (the
    sequencer's contract makes that exact: no delta adds a present member, nothing is removed
    that was not sent)."""

    def __init__(self) -> None:
        self.workload_endpoints: set[object] = set()
        self.host_endpoints: set[object] = set()
        self.policies: set[object] = set()
        self.profiles: set[str] = set()
        self.ipset_sizes: dict[str, int] = {}
        self.ipset_members = 0

    def observe(self, messages: Iterable[m.Message]) -> None:
        count = 0
        for message in messages:
            count += 1
            self._observe(message)
        MESSAGES_SENT.inc(count)
        LOCAL_ENDPOINTS.labels("workload").set(len(self.workload_endpoints))
        LOCAL_ENDPOINTS.labels("host").set(len(self.host_endpoints))
        ACTIVE_POLICIES.set(len(self.policies))
        ACTIVE_PROFILES.set(len(self.profiles))
        IPSETS.set(len(self.ipset_sizes))
        IPSET_MEMBERS.set(self.ipset_members)

    def _observe(self, message: m.Message) -> None:
        match message:
            case m.WorkloadEndpointUpdate(key):
                self.workload_endpoints.add(key)
            case m.WorkloadEndpointRemove(key):
                self.workload_endpoints.discard(key)
            case m.HostEndpointUpdate(key):
                self.host_endpoints.add(key)
            case m.HostEndpointRemove(key):
                self.host_endpoints.discard(key)
            case m.ActivePolicyUpdate(key):
                self.policies.add(key)
            case m.ActivePolicyRemove(key):
                self.policies.discard(key)
            case m.ActiveProfileUpdate(profile_id):
                self.profiles.add(profile_id)
            case m.ActiveProfileRemove(profile_id):
                self.profiles.discard(profile_id)
            case m.IPSetUpdate(set_id, members):
                self._resize(set_id, len(members))
            case m.IPSetDeltaUpdate(set_id, added, removed):
                self._resize(set_id, self.ipset_sizes.get(set_id, 0) + len(added) - len(removed))
            case m.IPSetRemove(set_id):
                self.ipset_members -= self.ipset_sizes.pop(set_id, 0)
            case _:
                pass

    def _resize(self, set_id: str, size: int) -> None:
        self.ipset_members += size - self.ipset_sizes.get(set_id, 0)
        self.ipset_sizes[set_id] = size


def serve(port: int, what: str = "Felix") -> bool:
    """Serve the default registry on 0.0.0.0:port (a daemon thread). A port in use is logged,
    not fatal: metrics are an aid, and must not stop the host being programmed."""
    try:
        start_http_server(port, addr="0.0.0.0")  # all addresses: Prometheus scrapes remotely
    except OSError as e:
        log.error("Cannot serve %s's Prometheus metrics on port %d: %s", what, port, e)
        return False
    log.info("Serving %s's Prometheus metrics on port %d", what, port)
    return True
