"""Felix's reports in etcd -> Neutron: the Felix agent rows and port status (openstack.md §4.2).

Needs no Neutron: it talks to Neutron's core plugin through the three methods of `StatusPlugin`
(in Neutron, the ML2 plugin; in tests/unit/test_openstack_worker.py, a fake).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final, Protocol

from calico.common.datamodel_v1 import (
    FELIX_HOST_DIR,
    FelixStatusKey,
    WorkloadEndpointStatusKey,
    parse_key,
)
from calico.common.etcd.base import KVStore
from calico.common.quoting import quoted
from calico.common.resources import InvalidValue, decode_object
from calico.openstack.constants import (
    AGENT_BINARY_FELIX,
    AGENT_TYPE_FELIX,
    BINDING_HOST,
    ORCHESTRATOR,
    PORT_STATUS_ACTIVE,
    PORT_STATUS_DOWN,
    PORT_STATUS_ERROR,
)
from calico.openstack.endpoints import is_bound_endpoint
from calico.openstack.translation import warn_once

log = logging.getLogger(__name__)

STATUS_POLL_SECS: Final = 5
# Felix's endpoint status -> Neutron port status; anything else (or no JSON object) is ERROR.
PORT_STATUS: Final = {
    "up": PORT_STATUS_ACTIVE,
    "down": PORT_STATUS_DOWN,
    "error": PORT_STATUS_ERROR,
}


class StatusPlugin(Protocol):
    """The parts of Neutron's core plugin the reporter uses."""

    def create_or_update_agent(self, context: Any, agent_state: dict[str, Any]) -> Any: ...

    def get_ports(self, context: Any) -> list[dict[str, Any]]: ...

    def update_port_status(
        self, context: Any, port_id: str, status: str, host: str | None = None
    ) -> Any: ...


class StatusReporter:
    """Felix's reports in etcd -> Neutron: the Felix agent row and port status.

    Polls a snapshot of /calico/felix/v1/host every few seconds (simple, and it cannot miss
    an event); writes to Neutron only what changed since the last poll.
    """

    def __init__(self, client: KVStore, plugin: Callable[[], StatusPlugin], context: Any):
        self.client = client
        self._plugin = plugin
        self.context = context
        self._reported: dict[str, str] = {}  # port id -> status we last wrote
        self._hosts: set[str] = set()

    def poll(self) -> None:
        items = self.client.read_prefix(FELIX_HOST_DIR).items
        plugin = self._plugin()
        live_hosts: set[str] = set()
        statuses: dict[tuple[str, str], str] = {}  # (host, port id) -> Neutron status
        for path, value in items.items():
            key = parse_key(path)
            if isinstance(key, FelixStatusKey):
                live_hosts.add(key.hostname)
            elif isinstance(key, WorkloadEndpointStatusKey) and key.orchestrator == ORCHESTRATOR:
                statuses[(key.hostname, key.endpoint)] = port_status(value)
        self._report_agents(plugin, live_hosts)
        self._hosts = live_hosts
        self._report_ports(plugin, live_hosts, statuses)

    def _report_agents(self, plugin: StatusPlugin, live_hosts: set[str]) -> None:
        for host in sorted(live_hosts):
            # Every poll is a heartbeat: keeps the agent alive for bind_port.
            state = {
                "agent_type": AGENT_TYPE_FELIX,
                "binary": AGENT_BINARY_FELIX,
                "host": host,
                "topic": "N/A",
                "configurations": {},
                "start_flag": host not in self._hosts,
            }
            try:
                plugin.create_or_update_agent(self.context, state)
            except Exception as e:  # one host's row must not stop the others' or the ports'
                warn_once(f"status: agent row of {quoted(host)} failed: {e!r}", exc_info=e)

    def _report_ports(
        self, plugin: StatusPlugin, live_hosts: set[str], statuses: dict[tuple[str, str], str]
    ) -> None:
        for port in plugin.get_ports(self.context):
            if not is_bound_endpoint(port):
                continue
            host = port[BINDING_HOST]
            # Only the host the port lives on now counts: a report from its old host is stale.
            status = statuses.get((host, port["id"]))
            if status is None:
                # No report: Felix down on that host, or the report vanished.
                if host in live_hosts and port["id"] not in self._reported:
                    continue  # Felix has not got to this endpoint yet
                gone = port["id"] in self._reported or host not in live_hosts
                status = PORT_STATUS_ERROR if gone else None
            if status is None or self._reported.get(port["id"]) == status:
                continue
            if port.get("status") != status:
                try:
                    plugin.update_port_status(self.context, port["id"], status, host=host)
                except Exception as e:  # one port (deleted meanwhile, say) must not stop all
                    log.warning("status: port %s: %s", quoted(port["id"]), quoted(repr(e)))
                    continue
            self._reported[port["id"]] = status


def port_status(raw: str) -> str:
    """The Neutron port status for one of Felix's endpoint status values."""
    try:
        status = decode_object(raw, "endpoint status").get("status")
    except InvalidValue:  # not a JSON object
        return PORT_STATUS_ERROR
    if not isinstance(status, str):
        return PORT_STATUS_ERROR
    return PORT_STATUS.get(status, PORT_STATUS_ERROR)
