"""The v3 client's read of a prefix over gRPC, against a fake etcd that answers what the test
says: what etcd sends (the request's fields on the wire, bytes that are not UTF-8) and what it
must not (bytes that are not a RangeResponse, a page that goes backwards), compaction, refusals
and deadlines."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from calico.common.etcd import v3
from calico.common.etcd.base import EtcdRequestError, EtcdSettings, EtcdUnavailable
from calico.common.etcd.grpc_range import RangeRequest, RangeResponse

Answer = Callable[[Any, grpc.ServicerContext], bytes]


class FakeEtcd:
    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.answer: Answer = lambda request, context: b""

    def range(self, request: Any, context: grpc.ServicerContext) -> bytes:
        self.requests.append(request)
        return self.answer(request, context)


@pytest.fixture
def fake() -> Iterator[tuple[str, FakeEtcd]]:
    etcd = FakeEtcd()
    server = grpc.server(ThreadPoolExecutor(2))
    method = grpc.unary_unary_rpc_method_handler(
        etcd.range, request_deserializer=RangeRequest.FromString
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("etcdserverpb.KV", {"Range": method})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", etcd
    finally:
        server.stop(None)


def _page(*kvs: tuple[bytes, bytes], more: bool = False, revision: int = 7) -> bytes:
    answer = RangeResponse(more=more)
    answer.header.revision = revision
    answer.header.cluster_id = 2**64 - 1
    for key, value in kvs:
        answer.kvs.add(key=key, value=value, mod_revision=5)
    data: bytes = answer.SerializeToString()
    return data


def _client(url: str, timeout: float = 2) -> v3.EtcdV3Client:
    return v3.EtcdV3Client(EtcdSettings((url,), timeout=timeout), shuffle=False)


def test_keys_and_values_that_are_not_utf8_are_read_with_a_replacement(
    fake: tuple[str, FakeEtcd],
) -> None:
    url, etcd = fake
    etcd.answer = lambda request, context: _page((b"/calico/v1/k\xff", b"v\xfe"), (b"/x", b""))
    client = _client(url)
    snapshot = client.read_prefix("/calico/v1")
    assert snapshot.revision == 7
    assert snapshot.items == {"/calico/v1/k\ufffd": "v\ufffd", "/x": ""}
    assert client.cluster_id == str(2**64 - 1)  # as etcd's gateway writes it
    (request,) = etcd.requests
    assert (request.key, request.range_end) == (b"/calico/v1/", b"/calico/v10")
    assert (request.limit, request.revision) == (v3.PAGE_SIZE, 0)


def test_pages_follow_the_last_key_at_the_first_revision(fake: tuple[str, FakeEtcd]) -> None:
    url, etcd = fake

    def answer(request: Any, context: grpc.ServicerContext) -> bytes:
        if request.revision == 0:
            return _page((b"/calico/v1/a", b"1"), more=True, revision=9)
        return _page((b"/calico/v1/b", b"2"), revision=12)

    etcd.answer = answer
    snapshot = _client(url).read_prefix("/calico/v1")
    assert (snapshot.revision, snapshot.items) == (9, {"/calico/v1/a": "1", "/calico/v1/b": "2"})
    assert [(r.key, r.revision) for r in etcd.requests] == [
        (b"/calico/v1/", 0),
        (b"/calico/v1/a\0", 9),
    ]


def test_an_empty_page_that_says_more_ends_the_read(fake: tuple[str, FakeEtcd]) -> None:
    url, etcd = fake
    etcd.answer = lambda request, context: _page(more=True)
    assert _client(url).read_prefix("/calico/v1").items == {}
    assert len(etcd.requests) == 1


def test_a_page_that_goes_backwards_is_refused(fake: tuple[str, FakeEtcd]) -> None:
    url, etcd = fake
    etcd.answer = lambda request, context: _page((b"/calico/v1/", b"again"), more=True)
    with pytest.raises(EtcdUnavailable, match="went backwards"):
        _client(url).read_prefix("/calico/v1")
    assert len(etcd.requests) == 2


def test_an_answer_that_is_not_a_range_response_is_unavailable(
    fake: tuple[str, FakeEtcd],
) -> None:
    url, etcd = fake
    etcd.answer = lambda request, context: b"\xff\xff\xff\xff"
    # Then the gateway is tried, at the same address: this fake speaks gRPC only.
    with pytest.raises(EtcdUnavailable):
        _client(url).read_prefix("/calico/v1")


def test_a_refusal_is_a_request_error_and_not_asked_again(fake: tuple[str, FakeEtcd]) -> None:
    url, etcd = fake

    def refuse(request: Any, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: bad range")

    etcd.answer = refuse
    with pytest.raises(EtcdRequestError, match="INVALID_ARGUMENT: etcdserver: bad range"):
        _client(url).read_prefix("/calico/v1")
    assert len(etcd.requests) == 1


def test_a_revision_compacted_on_every_attempt_is_unavailable(
    fake: tuple[str, FakeEtcd],
) -> None:
    url, etcd = fake

    def compacting(request: Any, context: grpc.ServicerContext) -> bytes:
        if request.revision == 0:
            return _page((b"/calico/v1/a", b"1"), more=True)
        context.abort(
            grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted"
        )

    etcd.answer = compacting
    with pytest.raises(EtcdUnavailable, match="compacted revision 7"):
        _client(url).read_prefix_versioned("/calico/v1")
    assert [r.revision for r in etcd.requests] == [0, 7] * 3


def test_a_page_past_its_deadline_is_unavailable_without_the_gateway(
    fake: tuple[str, FakeEtcd], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, etcd = fake

    def slow(request: Any, context: grpc.ServicerContext) -> bytes:
        time.sleep(1.0)
        return _page()

    etcd.answer = slow
    gateway: list[bytes] = []
    monkeypatch.setattr(
        v3.EtcdV3Client, "_gateway_page", lambda client, key, *rest: gateway.append(key)
    )
    with pytest.raises(EtcdUnavailable, match="DEADLINE_EXCEEDED"):
        _client(url, timeout=0.1).read_prefix("/calico/v1")
    assert gateway == []
