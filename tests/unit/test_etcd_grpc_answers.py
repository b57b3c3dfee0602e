"""The v3 client's read of a prefix over gRPC, against a fake etcd that answers what the test
says: what etcd sends (the request's fields on the wire, bytes that are not UTF-8) and what it
must not (bytes that are not a RangeResponse, a page that goes backwards), compaction, refusals
and deadlines."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from calico.common.etcd import v3
from calico.common.etcd.base import EtcdRequestError, EtcdSettings, EtcdUnavailable
from calico.common.etcd.grpc_range import RangePage, RangeRequest, RangeResponse, _target
from calico.lab.tls import make_tls

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


def _page(
    *kvs: tuple[bytes, bytes], more: bool = False, revision: int = 7, in_range: int = -1
) -> bytes:
    """A RangeResponse; in_range: etcd's count (by default, the keys given)."""
    answer = RangeResponse(more=more, count=len(kvs) if in_range < 0 else in_range)
    answer.header.revision = revision
    answer.header.cluster_id = 2**64 - 1
    for key, value in kvs:
        answer.kvs.add(key=key, value=value, mod_revision=5)
    data: bytes = answer.SerializeToString()
    return data


@pytest.fixture
def client(fake: tuple[str, FakeEtcd]) -> Iterator[Callable[..., v3.EtcdV3Client]]:
    made: list[v3.EtcdV3Client] = []

    def make(timeout: float = 2) -> v3.EtcdV3Client:
        made.append(v3.EtcdV3Client(EtcdSettings((fake[0],), timeout=timeout), shuffle=False))
        return made[-1]

    try:
        yield make
    finally:
        for one in made:
            one.close()


@pytest.fixture
def one_key_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(v3, "PAGE_SIZE", 1)


Client = Callable[..., v3.EtcdV3Client]


def test_keys_and_values_that_are_not_utf8_are_read_with_a_replacement(
    fake: tuple[str, FakeEtcd], client: Client
) -> None:
    etcd = fake[1]
    etcd.answer = lambda request, context: _page(
        (b"/calico/v1/k\xff", b"v\xfe"), (b"/calico/v1/z", b"")
    )
    reader = client()
    snapshot = reader.read_prefix("/calico/v1")
    assert snapshot.revision == 7
    assert snapshot.items == {"/calico/v1/k\ufffd": "v\ufffd", "/calico/v1/z": ""}
    assert reader.cluster_id == str(2**64 - 1)  # as etcd's gateway writes it
    (request,) = etcd.requests
    assert (request.key, request.range_end) == (b"/calico/v1/", b"/calico/v10")
    assert (request.limit, request.revision) == (v3.PAGE_SIZE, 0)


def test_pages_follow_the_last_key_at_the_first_revision(
    fake: tuple[str, FakeEtcd], client: Client, one_key_pages: None
) -> None:
    etcd = fake[1]

    def answer(request: Any, context: grpc.ServicerContext) -> bytes:
        if request.revision == 0:
            return _page((b"/calico/v1/a", b"1"), more=True, revision=9, in_range=2)
        return _page((b"/calico/v1/b", b"2"), revision=12)

    etcd.answer = answer
    snapshot = client().read_prefix("/calico/v1")
    assert (snapshot.revision, snapshot.items) == (9, {"/calico/v1/a": "1", "/calico/v1/b": "2"})
    assert [(r.key, r.revision) for r in etcd.requests] == [
        (b"/calico/v1/", 0),
        (b"/calico/v1/a\0", 9),
    ]


@pytest.mark.parametrize(
    ("kvs", "more", "in_range", "revision", "problem"),
    [
        ([(b"/calico/v2/a", b"")], False, 1, 7, "outside the range"),
        ([(b"/calico/v1/", b""), (b"/calico/v0", b"")], False, 2, 7, "outside the range"),
        ([(b"/calico/v1/b", b""), (b"/calico/v1/a", b"")], False, 2, 7, "outside the range"),
        ([(b"/calico/v1/a", b"")], True, 5, 7, "says there is more, but is not full"),
        ([], True, 0, 7, "says there is more, but is not full"),
        ([(b"/calico/v1/a", b""), (b"/calico/v1/b", b"")], False, 1, 7, "more keys than etcd"),
        ([(b"/calico/v1/a", b"")], False, 1, 0, "has no revision"),
    ],
)
def test_a_page_etcd_would_not_send_is_refused(
    fake: tuple[str, FakeEtcd],
    client: Client,
    kvs: list[tuple[bytes, bytes]],
    more: bool,
    in_range: int,
    revision: int,
    problem: str,
) -> None:
    fake[1].answer = lambda request, context: _page(
        *kvs, more=more, in_range=in_range, revision=revision
    )
    with pytest.raises(EtcdUnavailable, match=problem):
        client().read_prefix("/calico/v1")


def test_keys_that_grow_a_byte_a_page_stop_at_etcds_count(
    fake: tuple[str, FakeEtcd], client: Client, one_key_pages: None
) -> None:
    """Each page moves forwards and stays in the range; only the count ends it."""
    etcd = fake[1]
    etcd.answer = lambda request, context: _page((request.key, b""), more=True, in_range=10)
    with pytest.raises(EtcdUnavailable, match="more keys than etcd counted"):
        client().read_prefix("/calico/v1")
    assert len(etcd.requests) == 11


def test_an_answer_that_is_not_a_range_response_is_unavailable(
    fake: tuple[str, FakeEtcd], client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    fake[1].answer = lambda request, context: b"\xff\xff\xff\xff"
    # Then the gateway is tried, at the same address: this fake speaks gRPC only.
    with pytest.raises(EtcdUnavailable):
        client().read_prefix("/calico/v1")
    assert "gRPC INTERNAL" in caplog.text  # the gRPC failure, logged before the gateway's


def test_a_refusal_is_a_request_error_and_not_asked_again(
    fake: tuple[str, FakeEtcd], client: Client
) -> None:
    etcd = fake[1]

    def refuse(request: Any, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: bad range")

    etcd.answer = refuse
    with pytest.raises(EtcdRequestError, match="INVALID_ARGUMENT: etcdserver: bad range"):
        client().read_prefix("/calico/v1")
    assert len(etcd.requests) == 1


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The first key of each page asked of the gateway, which answers none."""
    asked: list[bytes] = []

    def unanswered(client: v3.EtcdV3Client, key: bytes, *rest: object) -> RangePage:
        asked.append(key)
        raise EtcdUnavailable("the gateway is not there")

    monkeypatch.setattr(v3.EtcdV3Client, "_gateway_page", unanswered)
    return asked


@pytest.mark.parametrize(
    ("code", "details", "error", "gateway_asked"),
    [
        # etcd's own "cannot serve now": the gateway would wait as long for the same answer.
        (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader", EtcdUnavailable, False),
        (grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out", EtcdUnavailable, False),
        # etcd's refusals.
        (
            grpc.StatusCode.PERMISSION_DENIED,
            "etcdserver: permission denied",
            EtcdRequestError,
            False,
        ),
        # Not etcd's: an HTTP/2 front end's 403, a server without etcd's service.
        (
            grpc.StatusCode.PERMISSION_DENIED,
            "Received http2 header with status: 403",
            EtcdUnavailable,
            True,
        ),
        (grpc.StatusCode.UNIMPLEMENTED, "Method not found!", EtcdUnavailable, True),
    ],
)
def test_who_said_no_decides_whether_the_gateway_is_asked(
    fake: tuple[str, FakeEtcd],
    client: Client,
    gateway: list[bytes],
    code: grpc.StatusCode,
    details: str,
    error: type[Exception],
    gateway_asked: bool,
) -> None:
    def refuse(request: Any, context: grpc.ServicerContext) -> bytes:
        context.abort(code, details)

    fake[1].answer = lambda request, context: _page()
    reader = client()
    reader.read_prefix("/calico/v1")  # the channel is open: no second try on a new one
    fake[1].answer = refuse
    said = "the gateway is not there" if gateway_asked else details
    with pytest.raises(error, match=said):
        reader.read_prefix("/calico/v1")
    assert gateway == ([b"/calico/v1/"] if gateway_asked else [])
    assert len(fake[1].requests) == 2


def test_a_failure_that_is_not_etcds_goes_to_the_gateway_and_drops_the_channel(
    fake: tuple[str, FakeEtcd], client: Client, gateway: list[bytes]
) -> None:
    etcd = fake[1]
    etcd.answer = lambda request, context: _page()
    reader = client()
    assert reader.read_prefix("/calico/v1").items == {}
    assert reader._grpc is not None and reader._grpc._channel is not None

    def broken(request: Any, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.UNAVAILABLE, "upstream connect error")

    etcd.answer = broken
    with pytest.raises(EtcdUnavailable, match="the gateway is not there"):
        reader.read_prefix("/calico/v1")
    assert len(etcd.requests) == 2
    assert gateway == [b"/calico/v1/"]
    assert reader._grpc._channel is None  # the next read opens a new one


def test_a_member_that_never_answers_times_out_without_the_gateway(
    client: Client, gateway: list[bytes]
) -> None:
    """A port that takes connections and never speaks (the kernel completes the handshake
    for the listen backlog): the connection attempt ends at the client's timeout (gRPC's own
    would be 20 s), and the gateway is not asked to wait as long again."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        reader = v3.EtcdV3Client(EtcdSettings((url,), timeout=0.5), shuffle=False)
        try:
            with pytest.raises(EtcdUnavailable, match="timed out before receiving SETTINGS"):
                reader.read_prefix("/calico/v1")
        finally:
            reader.close()
    assert gateway == []


def test_closing_the_client_cancels_a_read_in_progress(
    fake: tuple[str, FakeEtcd], client: Client, gateway: list[bytes]
) -> None:
    answering = threading.Event()

    def slow(request: Any, context: grpc.ServicerContext) -> bytes:
        answering.set()
        time.sleep(3.0)
        return _page((b"/calico/v1/a", b"1"))

    fake[1].answer = slow
    reader = client()
    outcome: list[object] = []

    def read() -> None:
        try:
            outcome.append(reader.read_prefix("/calico/v1"))
        except EtcdUnavailable as e:
            outcome.append(e)

    thread = threading.Thread(target=read)
    thread.start()
    assert answering.wait(10)
    reader.close()
    thread.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], EtcdUnavailable)
    assert "CANCELLED" in str(outcome[0]) or "closed" in str(outcome[0])
    assert gateway == []


@pytest.mark.parametrize(
    ("endpoint", "target"),
    [
        ("http://etcd.example", "etcd.example:80"),
        ("https://etcd.example", "etcd.example:443"),
        ("http://127.0.0.1:2379", "127.0.0.1:2379"),
        ("https://[fd00:65::1]:2379", "[fd00:65::1]:2379"),
        ("http://[fd00:65::1]", "[fd00:65::1]:80"),
    ],
)
def test_the_grpc_target_has_the_port_requests_would_use(endpoint: str, target: str) -> None:
    assert _target(endpoint) == target


def test_a_revision_compacted_on_every_attempt_is_unavailable(
    fake: tuple[str, FakeEtcd], client: Client, one_key_pages: None
) -> None:
    etcd = fake[1]

    def compacting(request: Any, context: grpc.ServicerContext) -> bytes:
        if request.revision == 0:
            return _page((b"/calico/v1/a", b"1"), more=True, in_range=2)
        context.abort(
            grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted"
        )

    etcd.answer = compacting
    with pytest.raises(EtcdUnavailable, match="compacted revision 7"):
        client().read_prefix_versioned("/calico/v1")
    assert [r.revision for r in etcd.requests] == [0, 7] * 3  # three attempts


def test_a_page_past_its_deadline_is_unavailable_without_the_gateway(
    fake: tuple[str, FakeEtcd], client: Client, gateway: list[bytes]
) -> None:
    def slow(request: Any, context: grpc.ServicerContext) -> bytes:
        time.sleep(3.0)
        return _page()

    fake[1].answer = slow
    with pytest.raises(EtcdUnavailable, match="gRPC DEADLINE_EXCEEDED: Deadline Exceeded"):
        client(timeout=0.5).read_prefix("/calico/v1")  # 1.5 s for the page
    assert len(fake[1].requests) == 1
    assert gateway == []


_HALF_PAIRS = """
import sys
from calico.common.etcd.base import EtcdSettings, EtcdUnavailable
from calico.common.etcd.v3 import EtcdV3Client
ca, cert, key, empty = sys.argv[1:]
for files in ({"cert_file": cert}, {"key_file": key}, {"cert_file": cert, "key_file": empty},
              {"cert_file": empty, "key_file": key}, {"ca_file": empty}):
    files = {"ca_file": ca} | files
    client = EtcdV3Client(EtcdSettings(("https://127.0.0.1:1",), timeout=1, **files))
    try:
        client.read_prefix("/calico/v1")
    except EtcdUnavailable:
        print("unavailable")
    finally:
        client.close()
"""


def test_half_a_client_certificate_or_an_empty_tls_file_is_not_fatal(tmp_path: Path) -> None:
    """gRPC aborts the process for a certificate without its key (or an empty one): a child
    process shows it, where this one would die."""
    tls = make_tls(tmp_path / "tls")
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    files = [tls.ca_file, tls.client_cert, tls.client_key, empty]
    child = subprocess.run(
        [sys.executable, "-c", _HALF_PAIRS, *map(str, files)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.split() == ["unavailable"] * 5
