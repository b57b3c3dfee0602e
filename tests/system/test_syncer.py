"""The datastore watcher against a real etcd, over the v2 and the v3 API."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from calico.common.etcd import connect
from calico.common.etcd.base import ClusterIdChanged, EtcdSettings, EtcdUnavailable, KVStore
from calico.common.etcd.syncer import Syncer, SyncStatus, Update
from calico.common.etcd.transport import WatchStream
from calico.common.etcd.v2 import EtcdV2Client
from calico.lab.etcd_server import EtcdServer, free_port

READY = "/calico/v1/Ready"
WAIT = 20.0


@dataclass
class Recorder:
    """A SyncListener that mirrors the datastore and lets tests wait for conditions."""

    state: dict[str, str] = field(default_factory=dict)
    statuses: list[SyncStatus] = field(default_factory=list)
    updates: list[Update] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def on_status(self, status: SyncStatus) -> None:
        with self.cond:
            self.statuses.append(status)
            self.cond.notify_all()

    def on_updates(self, updates: list[Update]) -> None:
        with self.cond:
            for key, value in updates:
                if value is None:
                    assert key in self.state, f"delete of unknown key {key}"
                    del self.state[key]
                else:
                    self.state[key] = value
            self.updates.extend(updates)
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        with self.cond:
            assert self.cond.wait_for(predicate, timeout), f"timed out waiting for {what}"

    def in_sync(self) -> bool:
        return bool(self.statuses) and self.statuses[-1] == SyncStatus.IN_SYNC


class Writer:
    """Writes through the harness (not the code under test), in the API being tested."""

    def __init__(self, server: EtcdServer, api: str):
        self.server, self.api = server, api

    def put(self, key: str, value: str) -> None:
        if self.api == "v2":
            self.server.v2_put(key, value)
        else:
            self.server.v3_put(key, value)

    def delete(self, key: str) -> None:
        if self.api == "v2":
            self.server.v2_delete(key)
        else:
            self.server.v3_delete(key)

    def delete_tree(self, prefix: str) -> None:
        if self.api == "v2":
            self.server.v2_delete(prefix, recursive=True)
        else:
            self.server.v3_delete(prefix + "/", prefix=True)


class Gate:
    """Wraps a client so a test can hold the watcher between two watch calls."""

    def __init__(self, inner: KVStore):
        self.inner = inner
        self.hold = threading.Event()
        self.holding = threading.Event()
        self.release = threading.Event()
        self.fail_read_prefix_once: Callable[[], None] | None = None
        self.after_read_prefix: Callable[[], None] | None = None

    def watch(self, prefix: str, start_revision: int, timeout: float) -> Any:
        if self.hold.is_set():
            self.holding.set()
            self.release.wait()
            self.hold.clear()
            self.inner.rotate()  # v3: drop the open stream so the next call starts afresh
        return self.inner.watch(prefix, start_revision, timeout)

    def read_prefix(self, prefix: str) -> Any:
        snapshot = self.inner.read_prefix(prefix)
        if self.after_read_prefix is not None:
            hook, self.after_read_prefix = self.after_read_prefix, None
            hook()
        return snapshot

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class Running:
    syncer: Syncer
    thread: threading.Thread
    recorder: Recorder
    gate: Gate
    error: list[BaseException]


@pytest.fixture(params=["v2", "v3"])
def api(request: pytest.FixtureRequest) -> str:
    return request.param


def start_syncer(
    server: EtcdServer,
    api: str,
    endpoints: tuple[str, ...] | None = None,
    tls: Any = None,
    **settings: Any,
) -> Running:
    kw = {}
    if tls is not None:
        kw = {
            "key_file": str(tls.client_key),
            "cert_file": str(tls.client_cert),
            "ca_file": str(tls.ca_file),
        }
    kw.update(settings)
    settings_ = EtcdSettings(endpoints or (server.client_url,), timeout=2.0, **kw)
    client = connect(api, settings_, shuffle=False)
    gate = Gate(client)
    recorder = Recorder()
    syncer = Syncer(gate, recorder, watch_timeout=0.5, ready_poll_interval=0.1)  # type: ignore[arg-type]
    error: list[BaseException] = []

    def run() -> None:
        try:
            syncer.run()
        except BaseException as e:
            error.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return Running(syncer, thread, recorder, gate, error)


@pytest.fixture
def running() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for r in started:
        r.gate.release.set()
        r.syncer.stop()
        r.thread.join(10)
        assert not r.thread.is_alive(), "syncer did not stop"


def datastore(server: EtcdServer, api: str) -> dict[str, str]:
    client = connect(api, EtcdSettings((server.client_url,)))
    return client.read_prefix("/calico/v1").items


def test_snapshot_then_watch(etcd: EtcdServer, api: str, running: list[Running]):
    w = Writer(etcd, api)
    w.put(READY, "true")
    for i in range(50):
        w.put(f"/calico/v1/host/h{i % 3}/workload/o/w{i}/endpoint/e", f'{{"n": {i}}}')
    r = start_syncer(etcd, api)
    running.append(r)
    r.recorder.wait_for(r.recorder.in_sync, "in-sync")
    assert r.recorder.statuses[:3] == [
        SyncStatus.WAIT_FOR_READY,
        SyncStatus.RESYNC,
        SyncStatus.IN_SYNC,
    ]
    assert r.recorder.state == datastore(etcd, api)
    assert len(r.recorder.state) == 51

    # Ordered updates after in-sync: set, overwrite, delete, delete of a whole tree.
    w.put("/calico/v1/policy/profile/p1/rules", "1")
    w.put("/calico/v1/policy/profile/p1/rules", "2")
    w.delete("/calico/v1/host/h0/workload/o/w0/endpoint/e")
    w.delete_tree("/calico/v1/host/h1")
    w.put("/calico/v1/last", "x")
    r.recorder.wait_for(lambda: "/calico/v1/last" in r.recorder.state, "last key")
    tail = r.recorder.updates[51:]
    assert tail[:3] == [
        ("/calico/v1/policy/profile/p1/rules", "1"),
        ("/calico/v1/policy/profile/p1/rules", "2"),
        ("/calico/v1/host/h0/workload/o/w0/endpoint/e", None),
    ]
    assert r.recorder.state == datastore(etcd, api)
    assert not any(k.startswith("/calico/v1/host/h1/") for k in r.recorder.state)
    assert r.syncer.resyncs == 1


def test_waits_for_ready(etcd: EtcdServer, api: str, running: list[Running]):
    w = Writer(etcd, api)
    w.put("/calico/v1/config/Foo", "1")
    r = start_syncer(etcd, api)
    running.append(r)
    time.sleep(1.0)
    assert r.recorder.statuses == [SyncStatus.WAIT_FOR_READY]
    assert r.recorder.state == {}
    w.put(READY, "false")
    time.sleep(0.5)
    assert r.recorder.statuses == [SyncStatus.WAIT_FOR_READY]
    w.put(READY, "true")
    r.recorder.wait_for(r.recorder.in_sync, "in-sync")
    assert r.recorder.state == {READY: "true", "/calico/v1/config/Foo": "1"}


def test_ready_turning_false_waits_and_resyncs(etcd: EtcdServer, api: str, running: list[Running]):
    w = Writer(etcd, api)
    w.put(READY, "true")
    w.put("/calico/v1/a", "1")
    r = start_syncer(etcd, api)
    running.append(r)
    r.recorder.wait_for(r.recorder.in_sync, "in-sync")
    w.put(READY, "false")
    r.recorder.wait_for(
        lambda: r.recorder.statuses[-1] == SyncStatus.WAIT_FOR_READY, "wait-for-ready"
    )
    # Changes while not ready are picked up by the resync that follows.
    w.delete("/calico/v1/a")
    w.put("/calico/v1/b", "2")
    w.put(READY, "true")
    r.recorder.wait_for(
        lambda: r.recorder.in_sync() and "/calico/v1/b" in r.recorder.state, "second in-sync"
    )
    assert r.recorder.state == datastore(etcd, api)
    assert r.syncer.resyncs == 2


def test_updates_during_the_snapshot_are_not_lost(
    etcd: EtcdServer, api: str, running: list[Running]
):
    w = Writer(etcd, api)
    w.put(READY, "true")
    for i in range(20):
        w.put(f"/calico/v1/k{i}", "old")
    r_holder: list[Running] = []

    def write_after_snapshot() -> None:
        # The snapshot is already read; these land after its revision.
        w.put("/calico/v1/k1", "new")
        w.delete("/calico/v1/k2")
        w.put("/calico/v1/k-added", "new")

    r = start_syncer(etcd, api)
    r.gate.after_read_prefix = write_after_snapshot
    r_holder.append(r)
    running.append(r)
    r.recorder.wait_for(lambda: "/calico/v1/k-added" in r.recorder.state, "late write")
    assert r.recorder.state == datastore(etcd, api)
    assert r.recorder.state["/calico/v1/k1"] == "new"
    assert "/calico/v1/k2" not in r.recorder.state


def _hold(r: Running) -> None:
    r.gate.hold.set()
    assert r.gate.holding.wait(WAIT), "watcher did not come back to the gate"


def test_lost_history_forces_a_resync_that_reports_deletions(
    etcd_factory: Callable[..., EtcdServer], api: str, running: list[Running]
):
    """v3: compaction; v2: more than 1000 events while not watching (event index cleared)."""
    server = etcd_factory()
    w = Writer(server, api)
    w.put(READY, "true")
    for i in range(10):
        w.put(f"/calico/v1/gone/k{i}", "x")
    w.put("/calico/v1/stays", "1")
    r = start_syncer(server, api)
    running.append(r)
    r.recorder.wait_for(r.recorder.in_sync, "in-sync")
    _hold(r)

    w.delete_tree("/calico/v1/gone")
    w.put("/calico/v1/stays", "2")
    if api == "v3":
        server.v3_compact(server.v3_revision())
    else:
        for i in range(1100):
            server.v2_put("/calico/other/churn", str(i))  # outside the watched prefix
    w.put("/calico/v1/new", "n")
    r.gate.release.set()

    r.recorder.wait_for(
        lambda: r.syncer.resyncs == 2 and r.recorder.in_sync(), "resync after lost history"
    )
    assert r.recorder.state == datastore(server, api)
    assert r.recorder.state["/calico/v1/stays"] == "2"
    deleted = {k for k, v in r.recorder.updates if v is None}
    assert deleted == {f"/calico/v1/gone/k{i}" for i in range(10)}


def test_survives_etcd_stop_and_restart(
    etcd_factory: Callable[..., EtcdServer], api: str, running: list[Running]
):
    server = etcd_factory()
    w = Writer(server, api)
    w.put(READY, "true")
    w.put("/calico/v1/a", "1")
    r = start_syncer(server, api)
    running.append(r)
    r.recorder.wait_for(r.recorder.in_sync, "in-sync")
    server.stop()
    r.recorder.wait_for(lambda: not r.recorder.in_sync(), "leaving in-sync")
    server.start()
    w.put("/calico/v1/b", "2")
    w.delete("/calico/v1/a")
    # The resync snapshot may land between the put and the delete, in which case
    # the delete arrives by watch a moment later: wait for the final state.
    expected = {READY: "true", "/calico/v1/b": "2"}
    r.recorder.wait_for(
        lambda: r.recorder.in_sync() and r.recorder.state == expected, "resynced", 40
    )
    assert r.recorder.state == datastore(server, api)
    assert not r.error


def test_rotates_to_a_live_endpoint(etcd: EtcdServer, api: str, running: list[Running]):
    w = Writer(etcd, api)
    w.put(READY, "true")
    dead = f"http://127.0.0.1:{free_port()}"
    r = start_syncer(etcd, api, endpoints=(dead, etcd.client_url))
    running.append(r)
    r.recorder.wait_for(r.recorder.in_sync, "in-sync via the second endpoint")
    assert r.recorder.state == {READY: "true"}


def test_changed_cluster_id_is_fatal(
    etcd_factory: Callable[..., EtcdServer], api: str, running: list[Running]
):
    server = etcd_factory()
    w = Writer(server, api)
    w.put(READY, "true")
    r = start_syncer(server, api)
    running.append(r)
    r.recorder.wait_for(r.recorder.in_sync, "in-sync")
    server.stop()
    server.wipe()  # a rebuilt etcd on the same address: new cluster ID
    server.start()
    w.put(READY, "true")
    r.thread.join(WAIT)
    assert not r.thread.is_alive()
    assert len(r.error) == 1 and isinstance(r.error[0], ClusterIdChanged)


def test_tls_with_client_certificate(
    etcd_factory: Callable[..., EtcdServer], api: str, running: list[Running]
):
    server = etcd_factory(tls=True)
    assert server.client_url.startswith("https://")
    w = Writer(server, api)
    w.put(READY, "true")
    w.put("/calico/v1/secret", "s")
    r = start_syncer(server, api, tls=server.tls)
    running.append(r)
    r.recorder.wait_for(r.recorder.in_sync, "in-sync over TLS")
    assert r.recorder.state == {READY: "true", "/calico/v1/secret": "s"}


def test_tls_server_refuses_plaintext_and_clients_without_certificates(
    etcd_factory: Callable[..., EtcdServer], api: str
):
    server = etcd_factory(tls=True)
    plain = connect(api, EtcdSettings((server.client_url.replace("https", "http"),), timeout=2))
    with pytest.raises(EtcdUnavailable):
        plain.get(READY)
    no_cert = connect(
        api, EtcdSettings((server.client_url,), ca_file=str(server.tls.ca_file), timeout=2)
    )
    with pytest.raises(EtcdUnavailable):
        no_cert.get(READY)
    wrong_ca = connect(
        api,
        EtcdSettings(
            (server.client_url,),
            key_file=str(server.tls.client_key),
            cert_file=str(server.tls.client_cert),
            ca_file="/etc/ssl/certs/ca-certificates.crt",
            timeout=2,
        ),
    )
    with pytest.raises(EtcdUnavailable):
        wrong_ca.get(READY)


class _CountingV2Client(EtcdV2Client):
    """Counts the watch answers it opens (each one an HTTP request)."""

    opened = 0

    def _open_stream(
        self, prefix: str, revision: int, wait_index: int, timeout: float
    ) -> WatchStream:
        self.opened += 1
        return super()._open_stream(prefix, revision, wait_index, timeout)


def _v2_client(server: EtcdServer) -> _CountingV2Client:
    return _CountingV2Client(EtcdSettings((server.client_url,), timeout=2.0), shuffle=False)


def _watch_n(client: EtcdV2Client, revision: int, n: int) -> list[tuple[str, str | None, int]]:
    seen: list[tuple[str, str | None, int]] = []
    deadline = time.monotonic() + WAIT
    while len(seen) < n and time.monotonic() < deadline:
        for event in client.watch("/calico/v1", revision, 1.0):
            seen.append((event.key, event.value, event.revision))
            revision = event.revision + 1
    return seen


def test_v2_watch_streams_a_burst_over_one_answer(etcd: EtcdServer) -> None:
    """A caught-up v2 watcher reads a burst of writes from one `stream=true` answer: no HTTP
    request per event (the long poll's one event per request made Felix's watch the burst's
    bottleneck), every event in order, deletions included."""
    etcd.v2_put(READY, "true")
    client = _v2_client(etcd)
    start = client.read_prefix("/calico/v1").revision + 1
    # Writes elsewhere move etcd's index past `start` (status reports do so all the time):
    # the watch is still live, as no event under the prefix is in the history.
    etcd.v2_put("/calico/felix/v1/elsewhere", "x")
    results: list[list[tuple[str, str | None, int]]] = []
    reader = threading.Thread(target=lambda: results.append(_watch_n(client, start, 201)))
    reader.start()
    time.sleep(0.3)  # the watch is open (and live) before the burst
    for i in range(200):
        etcd.v2_put(f"/calico/v1/burst/k{i}", str(i))
    etcd.v2_delete("/calico/v1/burst/k7")
    reader.join(WAIT + 5)
    client.close()
    [seen] = results
    assert [(k, v) for k, v, _ in seen] == [
        *((f"/calico/v1/burst/k{i}", str(i)) for i in range(200)),
        ("/calico/v1/burst/k7", None),
    ]
    first = start + 1  # the write elsewhere took `start`
    assert [r for _, _, r in seen] == list(range(first, first + 201))
    assert client.opened <= 3  # one answer (again after an idle read timeout at most)


def test_v2_watch_catches_up_then_streams(etcd: EtcdServer) -> None:
    """Behind, each answer holds one event from etcd's history (etcd registers no streaming
    watcher then): the client reads it, closes that answer and goes on, then streams live.
    A directory created under the prefix changes no leaf and is skipped, not returned again."""
    etcd.v2_put(READY, "true")
    client = _v2_client(etcd)
    start = client.read_prefix("/calico/v1").revision + 1
    for i in range(5):
        etcd.v2_put(f"/calico/v1/old/k{i}", str(i))
    etcd.v2_mkdir("/calico/v1/adir")
    etcd.v2_put("/calico/v1/old/last", "x")
    seen = _watch_n(client, start, 6)
    assert [k for k, _, _ in seen] == [
        *(f"/calico/v1/old/k{i}" for i in range(5)),
        "/calico/v1/old/last",
    ]
    catch_up = client.opened
    assert catch_up >= 6  # one answer per event from history (the directory's included)
    revision = seen[-1][2] + 1
    results: list[list[tuple[str, str | None, int]]] = []
    reader = threading.Thread(target=lambda: results.append(_watch_n(client, revision, 50)))
    reader.start()
    time.sleep(0.3)
    for i in range(50):
        etcd.v2_put(f"/calico/v1/live/k{i}", str(i))
    reader.join(WAIT + 5)
    client.close()
    assert [k for k, _, _ in results[0]] == [f"/calico/v1/live/k{i}" for i in range(50)]
    assert client.opened - catch_up <= 3


def test_v2_idle_watch_survives_writes_elsewhere(etcd: EtcdServer) -> None:
    """Upstream felix#920: writes outside the prefix (status reports) move etcd's index, and a
    watch reopened at its old revision after 1,000 of them found the history cleared and
    resynced. A silent answer shows nothing under the prefix changed up to its X-Etcd-Index,
    so the next one starts there: 1,200 writes elsewhere across idle watches, then a change
    under the prefix is seen as an event, with no resync."""
    etcd.v2_put(READY, "true")
    client = _v2_client(etcd)
    revision = client.read_prefix("/calico/v1").revision + 1
    for round_ in range(4):
        for i in range(300):
            etcd.v2_put("/calico/felix/v1/host/h/status", f"{round_}-{i}")
        assert client.watch("/calico/v1", revision, 0.3) == []  # idle
    etcd.v2_put("/calico/v1/after", "x")
    events = client.watch("/calico/v1", revision, 2.0)  # raised ResyncRequired before
    client.close()
    assert [(e.key, e.value) for e in events] == [("/calico/v1/after", "x")]


def test_v2_watch_loses_nothing_when_etcd_drops_a_slow_stream(etcd: EtcdServer) -> None:
    """etcd drops a streaming watcher that falls 100 events behind. A live stream is left
    unread while 900 events of 24 KB are written: the client reads what etcd sent, sees the
    answer end, and catches up from the history, so every event arrives, in order, once."""
    etcd.v2_put(READY, "true")
    client = _v2_client(etcd)
    revision = client.read_prefix("/calico/v1").revision + 1
    first: list[list[tuple[str, str | None, int]]] = []
    reader = threading.Thread(target=lambda: first.append(_watch_n(client, revision, 1)))
    reader.start()
    time.sleep(0.3)  # the watch is open, and live
    etcd.v2_put("/calico/v1/slow/first", "0")
    reader.join(WAIT)
    [[(key, _, first_revision)]] = first
    assert key == "/calico/v1/slow/first"
    opened = client.opened
    # Nobody reads meanwhile; large values, so that the socket's buffers fill and etcd's own
    # buffer of 100 events overflows (fewer than its 1,000-event history).
    values = [f"{i}:" + "x" * 24_000 for i in range(900)]
    for i, value in enumerate(values):
        etcd.v2_put(f"/calico/v1/slow/k{i}", value)
    seen = _watch_n(client, first_revision + 1, 900)
    client.close()
    assert [(k, v) for k, v, _ in seen] == [
        (f"/calico/v1/slow/k{i}", value) for i, value in enumerate(values)
    ]
    assert client.opened > opened  # the dropped stream was followed by new answers


def test_v2_a_key_nested_too_deep_is_skipped_and_every_other_key_read(
    etcd: EtcdServer, running: list[Running], caplog: pytest.LogCaptureFixture
) -> None:
    """A key thousands of directories deep (etcd takes it) made a recursive read's answer too
    deep to decode, and so stopped every snapshot. The read then goes a level at a time: the
    deep subtree is skipped and logged once by its key, every other key is read, and a write
    made between two of those reads still reaches the syncer, through the watch."""
    w = Writer(etcd, "v2")
    expected = {f"/calico/v1/host/h{i}/workload/o/w/endpoint/e": f'{{"n": {i}}}' for i in range(4)}
    for key, value in expected.items():
        w.put(key, value)
    w.put("/calico/v1/host/h0/workload/o/deep" + "/d" * 3000 + "/e", "{}")
    r = start_syncer(etcd, "v2")
    running.append(r)
    client = r.gate.inner
    read_tree = client._read_tree  # type: ignore[attr-defined]
    written: list[str] = []

    def read_then_write_behind(prefix: str, *, recursive: bool = True) -> Any:
        answer = read_tree(prefix, recursive=recursive)
        if recursive and prefix in ("/calico/v1/host/h1", "/calico/v1/host/h2") and not written:
            written.append(prefix + "/workload/o/w/endpoint/e")
            w.put(written[0], '{"changed": true}')  # after its read: only the watch has it
        return answer

    client._read_tree = read_then_write_behind  # type: ignore[attr-defined]
    w.put(READY, "true")
    expected[READY] = "true"
    r.recorder.wait_for(r.recorder.in_sync, "in-sync")
    assert written, "no directory was read a level at a time"
    expected[written[0]] = '{"changed": true}'
    r.recorder.wait_for(lambda: r.recorder.state == expected, "every key but the deep one")
    assert r.syncer.resyncs == 1 and not r.error
    skipped = [m for m in caplog.messages if "nested too deep to read" in m]
    assert len(skipped) == 1, skipped
    assert "'/calico/v1/host/h0/workload/o/deep/d/d/" in skipped[0]


def test_v3_keys_and_values_that_are_not_utf8_are_read_with_replacement_characters(
    etcd: EtcdServer, running: list[Running]
) -> None:
    """v3 keys and values are any bytes. One that is not UTF-8 stopped the snapshot (and the
    watch) with a UnicodeDecodeError; it is now read with U+FFFD in place of what is not
    UTF-8, as etcd's v2 API does, which no key or value check accepts, and every other key is
    read as before."""

    def put_bytes(key: bytes, value: bytes) -> None:
        b64 = base64.b64encode
        payload = {"key": b64(key).decode(), "value": b64(value).decode()}
        requests.post(f"{etcd.client_url}/v3/kv/put", json=payload, timeout=10).raise_for_status()

    w = Writer(etcd, "v3")
    w.put(READY, "true")
    w.put("/calico/v1/host/h0/workload/o/w/endpoint/e", '{"n": 0}')
    put_bytes(b"/calico/v1/host/h\xff/workload/o/w/endpoint/e", b'{"n": 1}')
    put_bytes(b"/calico/v1/host/h1/workload/o/w/endpoint/e", b'{"name": "\xfe"}')
    r = start_syncer(etcd, "v3")
    running.append(r)
    r.recorder.wait_for(r.recorder.in_sync, "in-sync")
    assert r.recorder.state == {
        READY: "true",
        "/calico/v1/host/h0/workload/o/w/endpoint/e": '{"n": 0}',
        "/calico/v1/host/h\ufffd/workload/o/w/endpoint/e": '{"n": 1}',
        "/calico/v1/host/h1/workload/o/w/endpoint/e": '{"name": "\ufffd"}',
    }
    put_bytes(b"/calico/v1/host/h2\xc3/workload/o/w/endpoint/e", b"\xc3")
    w.put("/calico/v1/last", "x")
    r.recorder.wait_for(lambda: "/calico/v1/last" in r.recorder.state, "the write after")
    assert r.recorder.state["/calico/v1/host/h2\ufffd/workload/o/w/endpoint/e"] == "\ufffd"
    assert r.syncer.resyncs == 1 and not r.error
