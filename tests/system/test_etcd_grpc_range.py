"""The v3 client's read of a prefix over gRPC (grpc_range.py), against real etcd servers: the
gateway's answer, pages pinned to one revision, a compaction during a read, TLS, another
endpoint and another cluster, and the gateway when an endpoint does not speak gRPC."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
import requests

from calico.common.etcd import v3
from calico.common.etcd.base import ClusterIdChanged, EtcdSettings, EtcdUnavailable
from calico.common.etcd.grpc_range import GrpcFailed, GrpcRanges, RangePage
from calico.lab.etcd_server import EtcdServer, free_port

PREFIX = "/calico/v1"


class Spy:
    """Counts the pages each way of reading fetched; `after_page` runs after each gRPC page."""

    def __init__(self) -> None:
        self.grpc = 0
        self.gateway = 0
        self.after_page: Callable[[int], None] = lambda pages: None


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    counts = Spy()
    grpc_page = v3.EtcdV3Client._grpc_page
    gateway_page = v3.EtcdV3Client._gateway_page

    def counted_grpc(client: v3.EtcdV3Client, key: bytes, end: bytes, rev: int) -> RangePage | None:
        page = grpc_page(client, key, end, rev)
        if page is not None:
            counts.grpc += 1
            counts.after_page(counts.grpc)
        return page

    def counted_gateway(client: v3.EtcdV3Client, key: bytes, end: bytes, rev: int) -> RangePage:
        counts.gateway += 1
        return gateway_page(client, key, end, rev)

    monkeypatch.setattr(v3.EtcdV3Client, "_grpc_page", counted_grpc)
    monkeypatch.setattr(v3.EtcdV3Client, "_gateway_page", counted_gateway)
    monkeypatch.setattr(v3, "PAGE_SIZE", 7)
    return counts


def _client(
    server: EtcdServer, *endpoints: str, use_grpc: bool = True, **tls: str
) -> v3.EtcdV3Client:
    settings = EtcdSettings(endpoints or (server.client_url,), timeout=3, **tls)
    return v3.EtcdV3Client(settings, shuffle=False, use_grpc=use_grpc)


def _fill(server: EtcdServer, count: int) -> dict[str, str]:
    keys = {f"{PREFIX}/host/h{i:02d}/k": f"value {i}" for i in range(count)}
    for key, value in keys.items():
        server.v3_put(key, value)
    return keys


def test_a_paged_read_over_grpc_is_the_gateways_read(etcd: EtcdServer, spy: Spy) -> None:
    keys = _fill(etcd, 30)
    etcd.v3_put(f"{PREFIX}/host/h07/k", "written twice")  # a mod_revision of its own
    keys[f"{PREFIX}/host/h07/k"] = "written twice"
    etcd.v3_put("/calico/v10", "next to the prefix")
    etcd.v3_put(PREFIX, "the prefix itself")
    client = _client(etcd)
    gateway = _client(etcd, use_grpc=False)
    try:
        snapshot = client.read_prefix(PREFIX)
        assert (spy.grpc, spy.gateway) == (5, 0)  # 30 keys, 7 a page
        assert snapshot.items == keys
        assert snapshot.revision == etcd.v3_revision()
        versioned = client.read_prefix_versioned(PREFIX)
        assert {k: v for k, (v, _) in versioned.items()} == keys
        assert versioned[f"{PREFIX}/host/h07/k"] == client.get_versioned(f"{PREFIX}/host/h07/k")
        assert spy.gateway == 0
        assert gateway.read_prefix(PREFIX) == snapshot
        assert gateway.read_prefix_versioned(PREFIX) == versioned
        assert spy.gateway == 10
    finally:
        client.close()
        gateway.close()


def test_a_read_that_falls_back_midway_keeps_its_revision(
    etcd: EtcdServer, spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = _fill(etcd, 20)
    first_revision = etcd.v3_revision()
    attempts: list[int] = []

    def unreachable(self: GrpcRanges, endpoint: str, *request: object) -> RangePage:
        attempts.append(1)
        raise GrpcFailed(f"{endpoint}: gone", grpc.StatusCode.UNAVAILABLE)

    def after(pages: int) -> None:
        etcd.v3_put(f"{PREFIX}/host/h99/k", "new")
        monkeypatch.setattr(GrpcRanges, "page", unreachable)

    spy.after_page = after
    client = _client(etcd)
    try:
        snapshot = client.read_prefix(PREFIX)
    finally:
        client.close()
    assert (snapshot.revision, snapshot.items) == (first_revision, keys)
    assert (spy.grpc, len(attempts), spy.gateway) == (1, 1, 2)  # then the gateway, pinned


def test_every_page_is_read_at_the_first_pages_revision(etcd: EtcdServer, spy: Spy) -> None:
    keys = _fill(etcd, 20)
    first_revision = etcd.v3_revision()

    def write_meanwhile(pages: int) -> None:
        if pages == 1:
            etcd.v3_put(f"{PREFIX}/host/h19/k", "changed")
            etcd.v3_put(f"{PREFIX}/host/h99/k", "new")

    spy.after_page = write_meanwhile
    client = _client(etcd)
    try:
        snapshot = client.read_prefix(PREFIX)
    finally:
        client.close()
    assert snapshot.revision == first_revision
    assert snapshot.items == keys


def test_a_compaction_during_a_read_starts_it_again(
    etcd_factory: Callable[..., EtcdServer], spy: Spy, caplog: pytest.LogCaptureFixture
) -> None:
    server = etcd_factory()
    keys = _fill(server, 20)

    def compact_meanwhile(pages: int) -> None:
        if pages == 1:
            keys[f"{PREFIX}/host/h99/k"] = "new"
            server.v3_compact(server.v3_put(f"{PREFIX}/host/h99/k", "new"))

    spy.after_page = compact_meanwhile
    client = _client(server)
    caplog.set_level(logging.INFO, logger=v3.__name__)
    try:
        snapshot = client.read_prefix(PREFIX)
    finally:
        client.close()
    assert snapshot.items == keys
    assert snapshot.revision == server.v3_revision()
    assert "compacted revision" in caplog.text
    assert spy.grpc == 1 + 3  # the page before the compaction; then 21 keys, 3 pages


def test_tls_reads_over_grpc_with_the_clients_certificate(
    etcd_factory: Callable[..., EtcdServer], spy: Spy
) -> None:
    server = etcd_factory(tls=True)
    assert server.tls is not None
    keys = _fill(server, 3)
    tls = server.tls
    files = {"ca_file": str(tls.ca_file)}
    with_cert = files | {"cert_file": str(tls.client_cert), "key_file": str(tls.client_key)}
    client = _client(server, **with_cert)
    try:
        assert client.read_prefix(PREFIX).items == keys
        assert (spy.grpc, spy.gateway) == (1, 0)
    finally:
        client.close()
    no_cert = _client(server, **files)
    try:
        with pytest.raises(EtcdUnavailable):  # over gRPC, then through the gateway
            no_cert.read_prefix(PREFIX)
    finally:
        no_cert.close()
    spy.gateway = 0
    # https with no CA file means "do not verify", which gRPC cannot do: the gateway reads.
    unverified = _client(server, cert_file=str(tls.client_cert), key_file=str(tls.client_key))
    try:
        assert unverified._grpc is None
        assert unverified.read_prefix(PREFIX).items == keys
        assert spy.gateway == 1
    finally:
        unverified.close()


def test_the_next_endpoint_and_a_changed_cluster(
    etcd_factory: Callable[..., EtcdServer], spy: Spy
) -> None:
    first, second = etcd_factory(), etcd_factory()
    _fill(first, 2)
    dead = f"http://127.0.0.1:{free_port()}"
    client = _client(first, dead, first.client_url, second.client_url)
    try:
        with pytest.raises(EtcdUnavailable):
            client.read_prefix(PREFIX)
        client.rotate()
        assert len(client.read_prefix(PREFIX).items) == 2
        assert spy.grpc == 1
        client.rotate()  # another cluster behind the next endpoint: refused, not read
        with pytest.raises(ClusterIdChanged):
            client.read_prefix(PREFIX)
    finally:
        client.close()


class _Http1Proxy(BaseHTTPRequestHandler):
    """Forwards HTTP/1.1 POSTs to etcd's gateway: an endpoint that does not speak gRPC."""

    upstream = ""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        answer = requests.post(self.upstream + self.path, data=body, timeout=5)
        self.send_response(answer.status_code)
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http1_proxy(etcd: EtcdServer) -> Iterator[str]:
    handler = type("Proxy", (_Http1Proxy,), {"upstream": etcd.client_url})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_an_endpoint_without_grpc_is_read_through_the_gateway(
    etcd: EtcdServer,
    http1_proxy: str,
    spy: Spy,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = _fill(etcd, 10)
    client = _client(etcd, http1_proxy)
    caplog.set_level(logging.WARNING, logger=v3.__name__)
    attempts: list[int] = []
    page = GrpcRanges.page

    def counted(self: GrpcRanges, *args: Any) -> RangePage:
        attempts.append(1)
        return page(self, *args)

    monkeypatch.setattr(GrpcRanges, "page", counted)
    try:
        assert client.read_prefix(PREFIX).items == keys
        assert client.read_prefix(PREFIX).items == keys
    finally:
        client.close()
    assert (len(attempts), spy.grpc) == (2, 0)  # each read tries gRPC again
    assert spy.gateway == 4  # two reads of two pages
    warnings = [r for r in caplog.records if "over gRPC failed" in r.getMessage()]
    assert len(warnings) == 1  # logged once for the endpoint
