"""The real calico-felix, in a lab namespace against a real etcd, reporting usage to a fake
usage server (this machine has no internet): the request's parameters come from the
configuration and the datastore, the server's warning reaches Felix's log, and a server
that refuses connections or never answers does not hold Felix back."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from calico.lab.etcd_server import EtcdServer, free_port
from calico.lab.felix import FelixProcess, felix_env
from calico.lab.netns import NetNS
from calico.lab.relay import LoopbackRelay, listen_in_namespace
from calico.lab.usage_server import PATH, FakeUsageServer, UsageRequest

HOST = "usage-host"
WARNING = "Calico has a critical vulnerability: upgrade to 9.9.9"


class Lab:
    """etcd and Felix's host namespace; whatever it starts, close() stops."""

    def __init__(self, etcd: EtcdServer, ns: NetNS, tmp: Path):
        self.etcd, self.ns, self.tmp = etcd, ns, tmp
        self._closers: list[Callable[[], object]] = []
        self.relay(etcd.port)
        etcd.v2_put("/calico/v1/Ready", "true")

    def relay(self, port: int) -> None:
        """Make a root-namespace loopback port reachable at the same port inside."""
        self._closers.append(LoopbackRelay(self.ns.name, port).close)

    def start(self, **env: str) -> FelixProcess:
        out = self.tmp / f"felix-{len(self._closers)}.log"
        felix = FelixProcess(self.ns, felix_env(self.etcd.client_url, HOST, env), out)
        self._closers.append(felix.stop)
        return felix

    def on_close(self, closer: Callable[[], object]) -> None:
        self._closers.append(closer)

    def close(self) -> None:
        for closer in reversed(self._closers):  # Felix first, then what it talked to
            closer()


@pytest.fixture
def lab(etcd: EtcdServer, netns: Callable[[], NetNS], tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(etcd, netns(), tmp_path)
    try:
        yield lab
    finally:
        lab.close()


def _endpoint(name: str) -> str:
    return json.dumps(
        {"state": "active", "name": name, "mac": "02:00:00:00:00:01", "profile_ids": []}
    )


def test_report_has_version_guid_type_and_cluster_size(lab: Lab):
    server = FakeUsageServer(reply={"usage_warning": WARNING}).start()
    lab.on_close(server.close)
    lab.relay(server.port)
    # Four hosts in the datastore: two with endpoints (one also has a bird_ip), two with a
    # bird_ip only (one of them this host). Config on another host alone does not count.
    lab.etcd.v2_put("/calico/v1/host/h-a/workload/openstack/w1/endpoint/e1", _endpoint("tapa"))
    lab.etcd.v2_put("/calico/v1/host/h-b/workload/openstack/w2/endpoint/e2", _endpoint("tapb"))
    lab.etcd.v2_put("/calico/v1/host/h-b/bird_ip", "198.18.0.2")
    lab.etcd.v2_put("/calico/v1/host/h-c/bird_ip", "198.18.0.3")
    lab.etcd.v2_put(f"/calico/v1/host/{HOST}/bird_ip", "198.18.0.1")
    lab.etcd.v2_put("/calico/v1/host/h-d/config/LogSeverityFile", "INFO")
    # ClusterGUID from etcd (as the Neutron driver writes it), ClusterType from this host's.
    lab.etcd.v2_put("/calico/v1/config/ClusterGUID", "5ca1ab1e")
    lab.etcd.v2_put(f"/calico/v1/host/{HOST}/config/ClusterType", "openstack")

    felix = lab.start(
        FELIX_USAGEREPORTINGENABLED="true",  # the lab turns it off by default
        FELIX_USAGEREPORTINGURL=server.url(),
        FELIX_USAGEREPORTINGINITIALDELAYSECS="0",
        FELIX_USAGEREPORTINGINTERVALSECS="1",
    )
    felix.wait_for("In sync with the datastore")
    # A report may go out before the first in-sync (size 0); the next ones count every host.
    report = _wait_for_report(server, lambda r: r.param("size") == "4")
    assert report.path == PATH
    assert report.param("version") == version("calico-openstack-py")
    assert report.param("guid") == "5ca1ab1e"
    assert report.param("type") == "openstack"
    assert set(report.query) == {"version", "guid", "type", "size"}
    felix.wait_for(rf"\[WARNING\].*Usage server warning: {WARNING}")
    assert felix.stop() == 0


def test_no_report_when_disabled(lab: Lab):
    server = FakeUsageServer().start()
    lab.on_close(server.close)
    lab.relay(server.port)
    felix = lab.start(
        FELIX_USAGEREPORTINGENABLED="false",
        FELIX_USAGEREPORTINGURL=server.url(),
        FELIX_USAGEREPORTINGINITIALDELAYSECS="0",
        FELIX_USAGEREPORTINGINTERVALSECS="1",
    )
    felix.wait_for("In sync with the datastore")
    felix.wait_for("Usage reporting is disabled")
    time.sleep(2.5)  # two intervals: an enabled reporter would have sent by now
    assert server.requests == []
    assert felix.stop() == 0


def test_refusing_server_costs_an_info_line(lab: Lab):
    port = free_port()  # nothing listens on it inside the namespace
    felix = lab.start(
        FELIX_USAGEREPORTINGENABLED="true",  # the lab turns it off by default
        FELIX_USAGEREPORTINGURL=f"http://127.0.0.1:{port}{PATH}",
        FELIX_USAGEREPORTINGINITIALDELAYSECS="0",
    )
    felix.wait_for(r"\[INFO\].*Usage report failed \(will try again at the next interval\)")
    felix.wait_for("In sync with the datastore")
    assert "Traceback" not in felix.text()
    assert felix.stop() == 0


class TricklingServer:
    """Inside the namespace: accepts, then sends one byte of a never-ending status line a
    second, so the request neither completes nor times out while the test watches."""

    def __init__(self, ns: NetNS):
        self.port = free_port()
        self._listener = listen_in_namespace(ns.name, self.port)
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return  # closed before anyone connected
        with conn:
            self.connected.set()
            while not self._stop.wait(1.0):
                try:
                    conn.sendall(b"H")
                except OSError:
                    return

    def close(self) -> None:
        self._stop.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        self._thread.join(5)


def test_hanging_server_neither_delays_start_nor_stop(lab: Lab):
    server = TricklingServer(lab.ns)
    lab.on_close(server.close)
    felix = lab.start(
        FELIX_USAGEREPORTINGENABLED="true",  # the lab turns it off by default
        FELIX_USAGEREPORTINGURL=f"http://127.0.0.1:{server.port}{PATH}",
        FELIX_USAGEREPORTINGINITIALDELAYSECS="0",
    )
    assert server.connected.wait(30), felix.text()[-3000:]
    # The report is in flight, and stays so: Felix gets on with its work regardless.
    felix.wait_for("In sync with the datastore")
    text = felix.text()
    assert "Usage report failed" not in text and "Usage server" not in text
    started = time.monotonic()
    assert felix.stop() == 0
    assert time.monotonic() - started < 8  # the report's thread does not hold up the exit


def _wait_for_report(
    server: FakeUsageServer, wanted: Callable[[UsageRequest], bool], timeout: float = 30
) -> UsageRequest:
    deadline = time.monotonic() + timeout
    count = 1
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no matching usage report in {timeout} s: {server.requests}"
        for request in server.wait_for(count, timeout=remaining):
            if wanted(request):
                return request
        count = len(server.requests) + 1
