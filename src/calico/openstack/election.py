"""The election of the one neutron-server that resyncs etcd and reports status (openstack.md §4).

Needs no Neutron: it works on any KVStore (tests/openstack/test_election.py over a real etcd,
tests/unit/test_openstack_worker.py over an in-memory store).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Final

from calico.common.datamodel_v1 import NeutronElectionKey
from calico.common.etcd.base import EtcdError, KVStore
from calico.common.quoting import quoted

log = logging.getLogger(__name__)

ELECTION_TTL_SECS: Final = 60
ELECTION_REFRESH_SECS: Final = 10  # how often the master refreshes its key
NON_MASTER_CHECK_SECS: Final = 5  # how often the others try to take the lead


class Elector:
    """One master among several neutron-servers: whoever holds the election key (TTL 60 s,
    refreshed every 10 s by compare-and-swap on its version). A holder that dies stops
    refreshing and the key expires; a holder on this host whose PID is gone is removed at
    once."""

    def __init__(
        self,
        client: KVStore,
        name: str,
        ttl: int = ELECTION_TTL_SECS,
        pid_alive: Callable[[int], bool] | None = None,
    ):
        self.client = client
        self.name = name
        self.id = f"{name}:{os.getpid()}"
        self.ttl = ttl
        self._version: int | None = None  # our key's version while we are master
        self._pid_alive = pid_alive or _pid_alive
        self.key = NeutronElectionKey().path

    @property
    def master(self) -> bool:
        return self._version is not None

    def step(self) -> bool:
        """Refresh or try to take the lead; True if we are master afterwards."""
        try:
            if self._version is not None:
                self._version = self.client.put_if(self.key, self.id, self._version, self.ttl)
                if self._version is None:
                    log.warning("lost the election key; stepping down")
                return self.master
            current = self.client.get_versioned(self.key)
            if current is not None:
                holder, version = current
                if not self._stale(holder):
                    return False
                log.info("deleting the stale election key of %s", quoted(holder))
                self.client.delete_if(self.key, version)
            if self.client.create(self.key, self.id, ttl=self.ttl):
                # Read back for the version to refresh against.
                mine = self.client.get_versioned(self.key)
                if mine is not None and mine[0] == self.id:
                    self._version = mine[1]
                    log.info("elected master as %s", self.id)
        except EtcdError as e:
            log.warning("election step failed: %s", e)
            self._version = None
        return self.master

    def _stale(self, holder: str) -> bool:
        name, _, pid = holder.rpartition(":")
        return name == self.name and pid.isdigit() and not self._pid_alive(int(pid))

    def stand_down(self) -> None:
        if self._version is not None:
            try:
                self.client.delete_if(self.key, self._version)
            except EtcdError as e:
                log.warning("could not delete the election key: %s", e)
            self._version = None


def _pid_alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")
