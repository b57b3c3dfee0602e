"""The schedule of the Neutron side's background work: election, resync, status (openstack.md §4).

One thread: every TICK_SECS it steps the election (every ELECTION_REFRESH_SECS as master,
every NON_MASTER_CHECK_SECS plus up to a second of jitter otherwise) and, as master only, runs a
resync pass every RESYNC_INTERVAL_SECS (and at once on taking over) and a status poll on every
tick. Needs no Neutron: calico.openstack.workers builds it with Neutron's reader and plugin.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Final, Protocol

from calico.openstack.election import ELECTION_REFRESH_SECS, NON_MASTER_CHECK_SECS

log = logging.getLogger(__name__)

TICK_SECS: Final = 1.0
RESYNC_INTERVAL_SECS: Final = 60


class Elected(Protocol):
    """What the loop needs of calico.openstack.election.Elector."""

    @property
    def master(self) -> bool: ...

    def step(self) -> bool: ...

    def stand_down(self) -> None: ...


class Poller(Protocol):
    """calico.openstack.port_status.StatusReporter."""

    def poll(self) -> None: ...


class BackgroundLoop:
    """Election, then (as master) resync every 60 s and status polls; one thread.

    resync: one resync pass, returning its report (resync.resync bound to a store and reader).
    """

    def __init__(
        self,
        elector: Elected,
        resync: Callable[[], object],
        status: Poller | None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.elector = elector
        self.resync = resync
        self.status = status
        self.clock = clock
        self.stop_event = threading.Event()
        self._next_resync = 0.0
        self._next_election = 0.0

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                self.tick()
                self.stop_event.wait(TICK_SECS)
        finally:
            self.elector.stand_down()

    def tick(self) -> None:
        now = self.clock()
        if now >= self._next_election:
            was_master = self.elector.master
            master = self.elector.step()
            if master and not was_master:
                self._next_resync = 0.0  # resync at once on taking over
            wait = ELECTION_REFRESH_SECS if master else NON_MASTER_CHECK_SECS
            self._next_election = now + wait + (0 if master else random.uniform(0, 1))  # noqa: S311
        if not self.elector.master:
            return
        # One failed pass must not end the thread (the next one retries), and a failed resync
        # must not stop the status polls or the other way round.
        if now >= self._next_resync:
            self._next_resync = now + RESYNC_INTERVAL_SECS
            try:
                log.info("resync: %s", self.resync())
            except Exception:
                log.exception("resync pass failed")
        if self.status is not None:
            try:
                self.status.poll()
            except Exception:
                log.exception("status poll failed")
