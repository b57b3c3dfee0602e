"""The clients' typed decoding of a v2 recursive read and a v3 range: what etcd sends, and
what it must not."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from calico.common.etcd.base import EtcdRequestError, EtcdSettings, EtcdUnavailable
from calico.common.etcd.transport import NestedTooDeep, dumps, loads
from calico.common.etcd.v2 import EtcdV2Client, _decode_tree, _leaves
from calico.common.etcd.v3 import EtcdV3Client, _decode_range


def _key(key: str, value: str, index: int) -> dict[str, Any]:
    return {"key": key, "value": value, "modifiedIndex": index, "createdIndex": 2}


def _listing(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """etcd's answer to a GET of the directory /calico/v1 holding `nodes`."""
    return {"action": "get", "node": {"key": "/calico/v1", "dir": True, "nodes": nodes}}


ANSWER = _listing(
    [
        _key("/calico/v1/Ready", "true", 3),
        {
            "key": "/calico/v1/host",
            "dir": True,
            "modifiedIndex": 4,
            "nodes": [
                {"key": "/calico/v1/host/empty", "dir": True, "modifiedIndex": 5},
                _key("/calico/v1/host/blank", "", 6)
                | {"ttl": 30, "expiration": "2026-12-05T12:00:00Z"},
            ],
        },
    ]
)


def _read(answer: object) -> dict[str, tuple[str, int]]:
    decoded = _decode_tree(dumps(answer))
    return {key.key: (key.value, key.modifiedIndex) for key in _leaves(decoded)}


def test_every_key_under_the_tree_with_its_index_and_nothing_else() -> None:
    assert _read(ANSWER) == {"/calico/v1/Ready": ("true", 3), "/calico/v1/host/blank": ("", 6)}


def test_a_read_of_one_key_is_that_key() -> None:
    assert _read({"action": "get", "node": _key("/calico/v1/Ready", "true", 3)}) == {
        "/calico/v1/Ready": ("true", 3)
    }


def test_an_error_answer_is_an_etcd_error() -> None:
    with pytest.raises(EtcdRequestError, match="etcd error 100: Key not found"):
        _read({"errorCode": 100, "message": "Key not found", "cause": "/x", "index": 7})
    with pytest.raises(EtcdRequestError, match="no node"):
        _read({"action": "get"})


@pytest.mark.parametrize(
    "node",
    [
        {"key": "/calico/v1", "dir": True, "nodes": None},
        {"key": "/calico/v1", "dir": True, "nodes": [{"key": 5, "value": "x"}]},
        {"key": "/calico/v1", "dir": True, "nodes": [{"key": "/calico/v1/a", "value": 5}]},
        {"key": "/calico/v1", "dir": "yes", "nodes": []},
        {"key": "/calico/v1/a", "value": "x", "modifiedIndex": "7"},
        [],
    ],
)
def test_an_answer_of_the_wrong_shape_is_refused(node: object) -> None:
    with pytest.raises(msgspec.ValidationError):
        _decode_tree(dumps({"action": "get", "node": node}))


def _nested(depth: int) -> bytes:
    return b'{"node":' + b'{"dir":true,"nodes":[' * depth + b"]}" * depth + b"}"


def test_nesting_past_the_recursion_limit_is_nested_too_deep() -> None:
    assert list(_leaves(_decode_tree(_nested(100)))) == []
    with pytest.raises(NestedTooDeep):
        _decode_tree(_nested(100_000))
    with pytest.raises(NestedTooDeep):
        loads(_nested(100_000))
    assert issubclass(NestedTooDeep, ValueError)  # not JSON, for whoever cannot read deeper


class _Handler(BaseHTTPRequestHandler):
    """Answers every GET with the test's body, as a 200 from an etcd would."""

    protocol_version = "HTTP/1.1"
    body = b""
    index = "9"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Etcd-Index", self.index)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_client_reads_a_tree_over_http(server: tuple[str, type[_Handler]]) -> None:
    url, handler = server
    handler.body = dumps(ANSWER)
    client = EtcdV2Client(EtcdSettings((url,)), shuffle=False)
    snapshot = client.read_prefix("/calico/v1")
    assert (snapshot.revision, snapshot.items) == (
        9,
        {"/calico/v1/Ready": "true", "/calico/v1/host/blank": ""},
    )
    assert client.read_prefix_versioned("/calico/v1") == _read(ANSWER)
    handler.body = dumps({"errorCode": 100, "message": "Key not found", "index": 9})
    assert client.read_prefix("/calico/v1").items == {}
    client.close()


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"action": "get", "node": {"key": "/calico/v1", "dir": true, "nodes": null}}',
        # A listing (what the level-at-a-time read asks for) nested too deep: not etcd.
        _nested(100_000),
    ],
)
def test_what_is_not_an_etcd_answer_is_etcd_unavailable(
    server: tuple[str, type[_Handler]], body: bytes
) -> None:
    url, handler = server
    handler.body = body
    client = EtcdV2Client(EtcdSettings((url,)), shuffle=False)
    with pytest.raises(EtcdUnavailable, match=url):
        client.read_prefix("/calico/v1")
    client.close()


def test_a_v3_range_page_as_the_gateway_writes_it() -> None:
    """64-bit integers as strings, base64 keys and values, empty fields left out."""
    page = _decode_range(
        b'{"header": {"cluster_id": "11235911382892205977", "revision": "1001", "raft_term": "2"},'
        b' "kvs": [{"key": "L2E=", "create_revision": "3", "mod_revision": "7", "version": "1",'
        b' "value": "eA=="}, {"key": "L2I=", "mod_revision": "8"}], "more": true, "count": "5"}'
    )
    assert (page.header.revision, page.header.cluster_id, page.more) == (
        1001,
        "11235911382892205977",
        True,
    )
    assert [(kv.key, kv.value, kv.mod_revision) for kv in page.kvs] == [
        (b"/a", b"x", 7),
        (b"/b", b"", 8),
    ]
    empty = _decode_range(b'{"header": {"revision": "4"}}')
    assert (empty.kvs, empty.more) == ([], False)


@pytest.mark.parametrize(
    "body",
    [
        b'{"kvs": []}',  # no header: no revision to pin the pages to
        b'{"header": {"revision": "x"}}',
        b'{"header": {"revision": "4"}, "kvs": [{"value": "eA=="}]}',
        b'{"header": {"revision": "4"}, "kvs": [{"key": "not base64!"}]}',
        b'{"header": {"revision": "4"}, "kvs": {}}',
    ],
)
def test_a_v3_range_page_of_the_wrong_shape_is_refused(body: bytes) -> None:
    with pytest.raises(msgspec.ValidationError):
        _decode_range(body)


class _TreeHandler(BaseHTTPRequestHandler):
    """A v2 member whose recursive read of /calico/v1 is too deep to decode, and whose listing
    of it names keys that are not its children (what no etcd sends)."""

    protocol_version = "HTTP/1.1"
    asked: list[str] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        type(self).asked.append(self.path)
        host = {"key": "/calico/v1/host", "dir": True, "nodes": [_key("/calico/v1/host/k", "v", 5)]}
        answers = {
            "/v2/keys/calico/v1?recursive=true": _nested(100_000),
            "/v2/keys/calico/v1": dumps(
                _listing(
                    [
                        _key("/calico/v1/Ready", "true", 3),
                        {"key": "/calico/v1/host", "dir": True},
                        {"key": "/calico/v1/../../version", "dir": True},
                        {"key": "/elsewhere", "dir": True},
                        {"key": "/calico/v1/host/nested", "dir": True},
                    ]
                )
            ),
            "/v2/keys/calico/v1/host?recursive=true": dumps({"action": "get", "node": host}),
        }
        body = answers.get(self.path)
        self.send_response(200 if body is not None else 500)
        self.send_header("X-Etcd-Index", "9")
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")


def test_a_level_at_a_time_read_follows_only_children_of_the_prefix(
    caplog: pytest.LogCaptureFixture,
) -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _TreeHandler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        client = EtcdV2Client(EtcdSettings((f"http://127.0.0.1:{httpd.server_address[1]}",)))
        assert client.read_prefix("/calico/v1").items == {
            "/calico/v1/Ready": "true",
            "/calico/v1/host/k": "v",
        }
        client.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert sorted(_TreeHandler.asked) == [
        "/v2/keys/calico/v1",
        "/v2/keys/calico/v1/host?recursive=true",
        "/v2/keys/calico/v1?recursive=true",
    ]
    skipped = [m for m in caplog.messages if "not a key under" in m]
    assert len(skipped) == 3 and "'/calico/v1/../../version'" in skipped[0]


def test_an_index_that_is_not_a_number_is_etcd_unavailable(
    server: tuple[str, type[_Handler]],
) -> None:
    url, handler = server
    handler.body = dumps(ANSWER)
    handler.index = "9; drop"
    client = EtcdV2Client(EtcdSettings((url,)), shuffle=False)
    with pytest.raises(EtcdUnavailable, match="is not an index"):
        client.read_prefix("/calico/v1")
    client.close()


@pytest.mark.parametrize("line", [b"[1, 2]", b'{"result": [1]}', b'"text"'])
def test_a_v3_watch_message_that_is_not_an_object_is_etcd_unavailable(line: bytes) -> None:
    client = EtcdV3Client(EtcdSettings(("http://127.0.0.1:9",)), shuffle=False)
    stream = SimpleNamespace(lines=iter([line]), next_revision=5)
    with pytest.raises(EtcdUnavailable, match="bad watch message"):
        client._read_response(stream)  # type: ignore[arg-type]
    client.close()
