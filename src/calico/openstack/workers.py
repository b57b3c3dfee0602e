"""The Neutron worker that runs the background work: election, resync and status (openstack.md §4).

Neutron 29 runs no eventlet hub, so this is a neutron_lib worker (started by
neutron-periodic-workers through CalicoMechanismDriver.get_workers) running one plain thread.
Only the elected server resyncs and reports status; every server serves API hooks.

Thin on purpose: it builds Neutron's reader, plugin and context and hands them to the
Neutron-free parts, calico.openstack.election, .resync, .port_status and .background (which
holds the schedule).
"""

from __future__ import annotations

import threading
from functools import partial

from neutron_lib import context as n_context
from neutron_lib import worker
from neutron_lib.plugins import directory
from oslo_config import cfg

from calico.openstack.background import BackgroundLoop
from calico.openstack.config import connect_store
from calico.openstack.election import Elector
from calico.openstack.neutron_reader import NeutronReader
from calico.openstack.port_status import StatusReporter
from calico.openstack.resync import NeutronData, resync


class CalicoWorker(worker.BaseWorker):  # type: ignore[misc]
    """Started by neutron-periodic-workers in its own process."""

    def __init__(self) -> None:
        super().__init__(worker_process_count=1, desc="calico-resync-status")
        self._loop: BackgroundLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, name: str = "calico-worker", desc: str | None = None) -> None:
        super().start(name=name, desc=desc)
        store = connect_store()
        reader: NeutronData = NeutronReader()
        status = StatusReporter(store.client, directory.get_plugin, n_context.get_admin_context())
        self._loop = BackgroundLoop(
            Elector(store.client, cfg.CONF.calico.elector_name),
            partial(resync, store, reader),
            status,
        )
        self._thread = threading.Thread(target=self._loop.run, name="calico-worker", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop_event.set()

    def reset(self) -> None:
        pass
