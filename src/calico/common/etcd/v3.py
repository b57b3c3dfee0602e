"""etcd v3 API client, over etcd's gRPC gateway (JSON over HTTP, with requests).

The gateway's protocol is four POSTs of JSON with base64 keys and values (range, put, delete,
txn, plus lease grants and the watch stream), so this client speaks it through the same
requests session it uses for TLS and the watch, and decodes answers with msgspec. It used to go
through etcd3gw, which added nothing else: its watcher drops what a resyncing watcher must see
(the compaction cancel `compact_revision`, the response headers with the cluster ID and
revision), its requests decode with the json module (most of the time of reading a 100,000-key
snapshot, docs/benchmarks.md), and it brings futurist and eventlet into every process.

The paged read of a prefix (a snapshot) goes over gRPC instead where it can (grpc_range.py):
through the gateway it took three times as long as `etcdctl`.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import msgspec
import requests

from calico.common.etcd.base import (
    EtcdRequestError,
    EtcdSettings,
    EtcdUnavailable,
    ResyncRequired,
    Snapshot,
    WatchEvent,
)
from calico.common.etcd.grpc_range import GrpcFailed, GrpcRanges, KeyValue, RangePage, usable
from calico.common.etcd.transport import (
    ClusterIdGuard,
    Endpoints,
    WatchStream,
    answer_of,
    decode,
    describe_error,
    dumps,
    is_read_timeout,
    loads,
    make_session,
    read_body,
)

log = logging.getLogger(__name__)

_JSON = {"Content-Type": "application/json"}
# Answers that mean "this member cannot serve now" (what etcd3gw mapped to connection failures).
_UNAVAILABLE_STATUSES = frozenset({500, 502, 503, 504, 408})
# Keys per range request when reading a prefix; large pages are cheaper on etcd 3.4.
PAGE_SIZE = 20000
# etcd's answer to a range at a compacted revision (gRPC OUT_OF_RANGE, the gateway's HTTP 400).
_COMPACTED = "required revision has been compacted"
_READ_ATTEMPTS = 3
T = TypeVar("T")


def _b64(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return base64.b64encode(data).decode()


def _unb64(text: str) -> str:
    return _text(binascii.a2b_base64(text))


def _text(data: bytes) -> str:
    """A v3 key or value as text. v3 keys and values are any bytes: what is not UTF-8 has
    U+FFFD in its place (as etcd's v2 API does), which no key or value check accepts, rather
    than stopping the read of every other key."""
    return data.decode(errors="replace")


class _Kv(msgspec.Struct, gc=False):
    """One key of a range answer. msgspec decodes the base64 into bytes itself, and skips
    the fields not named here: the untyped decode and a base64 call per key and per value
    took twice the time (docs/benchmarks.md). proto3 JSON leaves out empty fields."""

    key: bytes
    value: bytes = b""
    mod_revision: int = 0


class _Header(msgspec.Struct, gc=False):
    revision: int
    cluster_id: str = ""


class _Range(msgspec.Struct, gc=False):
    header: _Header
    kvs: list[_Kv] = []
    more: bool = False
    count: int = 0


# strict=False: the gateway writes 64-bit integers as strings ("revision": "1001").
_RANGE_DECODER: msgspec.json.Decoder[_Range] = msgspec.json.Decoder(_Range, strict=False)


def _decode_range(raw: bytes) -> _Range:
    return decode(raw, _RANGE_DECODER)


def _range_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with prefix."""
    data = bytearray(prefix)
    data[-1] += 1
    return bytes(data)


def _prefix_range(prefix: str) -> tuple[bytes, bytes]:
    """[start, end) of the keys under prefix (a directory, in v2's terms)."""
    start = (prefix.rstrip("/") + "/").encode()
    return start, _range_end(start)


def _page_problem(page: RangePage, key: bytes, end: bytes, left: int) -> str:
    """What makes page one that etcd would not send for [key, end), with `left` keys still in
    that range (by the first page's count); "" for none. A hostile answer that passed would loop
    for ever: keys that grow by a byte a page never reach end. etcd answers a range sorted by key,
    and says `more` only for a full page."""
    kvs = page.kvs
    if page.revision <= 0:
        return "has no revision"
    if kvs and not key <= kvs[0].key <= kvs[-1].key < end:
        return "holds keys outside the range asked for"
    if page.more and len(kvs) != PAGE_SIZE:
        return "says there is more, but is not full"
    if len(kvs) > left:
        return "holds more keys than etcd counted"
    return ""


class EtcdV3Client:
    def __init__(self, settings: EtcdSettings, *, shuffle: bool = True, use_grpc: bool = True):
        """use_grpc=False: read prefixes through the JSON gateway only (as where gRPC cannot
        be used: see grpc_range.py); for comparisons."""
        self._settings = settings
        self._endpoints = Endpoints(settings.endpoints, shuffle)
        self._session = make_session(settings)
        self._guard = ClusterIdGuard()
        self._stream: WatchStream | None = None
        self._grpc = GrpcRanges(settings) if use_grpc and usable(settings) else None
        self._gateway_warned: set[str] = set()  # endpoints whose gRPC failure was logged

    def _url(self, path: str) -> str:
        return f"{self._endpoints.current}/v3{path}"

    @property
    def endpoint(self) -> str:
        return self._endpoints.current

    @property
    def cluster_id(self) -> str | None:
        return self._guard.cluster_id

    def rotate(self) -> None:
        self._close_stream()
        self._endpoints.rotate()

    def close(self) -> None:
        self._close_stream()
        self._session.close()
        if self._grpc is not None:
            self._grpc.close()

    # -- requests ------------------------------------------------------------------------

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = answer_of(self.endpoint, self._exchange(path, payload), loads)
        self._guard.check(body.get("header", {}).get("cluster_id"))
        return body

    def _range(self, payload: dict[str, Any]) -> _Range:
        """A range answer decoded into _Range (see _Kv)."""
        page = answer_of(self.endpoint, self._exchange("/kv/range", payload), _decode_range)
        self._guard.check(page.header.cluster_id)
        return page

    def _exchange(self, path: str, payload: dict[str, Any]) -> bytes:
        try:
            response = self._session.post(
                self._url(path),
                data=dumps(payload),
                headers=_JSON,
                timeout=self._settings.timeout,
                stream=True,
            )
        except requests.RequestException as e:
            raise EtcdUnavailable(f"{self.endpoint}: {describe_error(e, self.endpoint)}") from None
        if response.status_code in _UNAVAILABLE_STATUSES:
            why = f"HTTP {response.status_code} {response.text[:200]}"
            raise EtcdUnavailable(
                f"{self.endpoint}: {describe_error(Exception(why), self.endpoint)}"
            )
        if response.status_code != 200:
            raise EtcdRequestError(
                f"{self.endpoint}: HTTP {response.status_code} {response.text[:200]}"
            )
        try:
            return read_body(response)
        except requests.RequestException as e:
            raise EtcdUnavailable(f"{self.endpoint}: {describe_error(e, self.endpoint)}") from None

    def get(self, key: str) -> str | None:
        kvs = self._range({"key": _b64(key)}).kvs
        return _text(kvs[0].value) if kvs else None

    def read_prefix(self, prefix: str) -> Snapshot:
        """All keys under prefix at one revision."""

        def read() -> Snapshot:
            items: dict[str, str] = {}
            revision = 0
            for page_revision, kvs in self._pages(prefix):
                revision = page_revision
                for kv in kvs:
                    # _text written out: a call per key and per value is a tenth of the read.
                    items[kv.key.decode(errors="replace")] = kv.value.decode(errors="replace")
            return Snapshot(revision, items)

        return self._restarting(read)

    def _restarting(self, read: Callable[[], T]) -> T:
        """read(), started again at the newest revision when etcd compacts away the revision
        its pages are pinned to before the last page (a large read while etcd's
        auto-compaction runs); "unavailable" after _READ_ATTEMPTS tries."""
        for attempt in range(1, _READ_ATTEMPTS):
            try:
                return read()
            except _Compacted as e:
                log.info("Reading again, attempt %d: %s", attempt + 1, e)
        return read()

    def _pages(self, prefix: str) -> Iterator[tuple[int, Sequence[KeyValue]]]:
        """The keys under prefix, a page at a time, every page pinned to the revision of the
        first: (that revision, the page's keys). At least one page, even when empty."""
        key, end = _prefix_range(prefix)
        revision = 0
        left = -1  # keys still to come at that revision, as etcd counted them
        through_gateway = self._grpc is None
        while True:
            try:
                page = None if through_gateway else self._grpc_page(key, end, revision)
                if page is None:
                    through_gateway = True  # for the rest of this read
                    page = self._gateway_page(key, end, revision)
            except EtcdRequestError as e:
                if revision and _COMPACTED in str(e):
                    raise _Compacted(f"etcd compacted revision {revision} during a read") from e
                raise
            revision = revision or page.revision
            left = page.in_range if left < 0 else left
            if problem := _page_problem(page, key, end, left):
                raise EtcdUnavailable(f"{self.endpoint}: a range page {problem}")
            left -= len(page.kvs)
            yield revision, page.kvs
            if not page.more:
                return
            key = page.kvs[-1].key + b"\0"

    def _grpc_page(self, key: bytes, end: bytes, revision: int) -> RangePage | None:
        """A page over gRPC; None when it should be read through the gateway instead."""
        assert self._grpc is not None
        endpoint = self.endpoint
        try:
            page = self._grpc.page(endpoint, key, end, PAGE_SIZE, revision)
        except GrpcFailed as e:
            if e.refused:
                raise EtcdRequestError(str(e)) from None
            if not e.gateway_may_answer:
                raise EtcdUnavailable(str(e)) from None
            if endpoint not in self._gateway_warned:
                self._gateway_warned.add(endpoint)
                log.warning("etcd range over gRPC failed (%s); reading through the gateway", e)
            return None
        self._guard.check(page.cluster_id)
        return page

    def _gateway_page(self, key: bytes, end: bytes, revision: int) -> RangePage:
        payload: dict[str, Any] = {"key": _b64(key), "range_end": _b64(end), "limit": PAGE_SIZE}
        if revision:
            payload["revision"] = revision
        page = self._range(payload)
        header = page.header
        return RangePage(header.revision, header.cluster_id, page.kvs, page.more, page.count)

    def put(self, key: str, value: str, ttl: int | None = None) -> None:
        payload: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if ttl is not None:
            lease = self._post("/lease/grant", {"TTL": ttl})
            payload["lease"] = lease["ID"]
        self._post("/kv/put", payload)

    def delete(self, key: str) -> bool:
        body = self._post("/kv/deleterange", {"key": _b64(key)})
        return int(body.get("deleted", 0)) > 0

    def delete_prefix(self, prefix: str) -> None:
        start, end = _prefix_range(prefix)
        self._post("/kv/deleterange", {"key": _b64(start), "range_end": _b64(end)})
        self.delete(prefix.rstrip("/"))

    def delete_empty_dir(self, path: str) -> bool:
        return False  # v3 keys are flat: there are no directories to remove

    # -- compare-and-swap ----------------------------------------------------------------

    def get_versioned(self, key: str) -> tuple[str, int] | None:
        kvs = self._range({"key": _b64(key)}).kvs
        return (_text(kvs[0].value), kvs[0].mod_revision) if kvs else None

    def read_prefix_versioned(self, prefix: str) -> dict[str, tuple[str, int]]:
        def read() -> dict[str, tuple[str, int]]:
            return {
                _text(kv.key): (_text(kv.value), kv.mod_revision)
                for _, kvs in self._pages(prefix)
                for kv in kvs
            }

        return self._restarting(read)

    def _txn(self, compare: dict[str, Any], request: dict[str, Any]) -> int | None:
        """Run request if compare holds: the new revision, or None."""
        body = self._post("/kv/txn", {"compare": [compare], "success": [request]})
        # proto3 JSON leaves out false booleans: a missing "succeeded" means it failed.
        return int(body["header"]["revision"]) if body.get("succeeded") else None

    def _put_request(self, key: str, value: str, ttl: int | None) -> dict[str, Any]:
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if ttl is not None:
            put["lease"] = self._post("/lease/grant", {"TTL": ttl})["ID"]
        return {"request_put": put}

    def create(self, key: str, value: str, ttl: int | None = None) -> bool:
        compare = {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}
        return self._txn(compare, self._put_request(key, value, ttl)) is not None

    def put_if(self, key: str, value: str, version: int, ttl: int | None = None) -> int | None:
        compare = {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": version}
        return self._txn(compare, self._put_request(key, value, ttl))

    def delete_if(self, key: str, version: int) -> bool:
        compare = {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": version}
        return self._txn(compare, {"request_delete_range": {"key": _b64(key)}}) is not None

    # -- watching ------------------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int, timeout: float) -> list[WatchEvent]:
        stream = self._stream
        if stream is None or stream.prefix != prefix or stream.next_revision != start_revision:
            self._close_stream()
            stream = self._stream = self._open_stream(prefix, start_revision, timeout)
        try:
            while True:
                events = self._read_response(stream)
                if events:
                    stream.next_revision = events[-1].revision + 1
                    return events
        except _StreamIdle:
            self._close_stream()
            return []
        except (EtcdUnavailable, ResyncRequired):
            self._close_stream()
            raise

    def _open_stream(self, prefix: str, start_revision: int, timeout: float) -> WatchStream:
        start, end = _prefix_range(prefix)
        request: dict[str, Any] = {
            "create_request": {
                "key": _b64(start),
                "range_end": _b64(end),
                "start_revision": start_revision,
            }
        }
        try:
            response = self._session.post(
                self._url("/watch"),
                json=request,
                stream=True,
                timeout=(self._settings.timeout, timeout),
            )
        except requests.RequestException as e:
            raise EtcdUnavailable(f"{self.endpoint}: {describe_error(e, self.endpoint)}") from None
        if response.status_code != 200:
            response.close()
            raise EtcdUnavailable(f"{self.endpoint}: watch HTTP {response.status_code}")
        return WatchStream(response, prefix, start_revision)

    def _read_response(self, stream: WatchStream) -> list[WatchEvent]:
        try:
            line = next(stream.lines)
        except StopIteration:
            raise EtcdUnavailable(f"{self.endpoint}: watch stream ended") from None
        except requests.RequestException as e:
            if is_read_timeout(e):
                raise _StreamIdle() from None
            raise EtcdUnavailable(f"{self.endpoint}: {describe_error(e, self.endpoint)}") from None
        if not line.strip():
            return []
        try:
            message = loads(line)
        except ValueError:
            raise EtcdUnavailable(f"{self.endpoint}: bad watch message") from None
        if not isinstance(message, dict):
            raise EtcdUnavailable(f"{self.endpoint}: bad watch message")
        if "error" in message:
            raise EtcdUnavailable(f"{self.endpoint}: watch error {message['error']}")
        result = message.get("result", {})
        if not isinstance(result, dict):
            raise EtcdUnavailable(f"{self.endpoint}: bad watch message")
        self._guard.check(result.get("header", {}).get("cluster_id"))
        if int(result.get("compact_revision", 0) or 0) > 0:
            raise ResyncRequired(
                f"etcd compacted to revision {result['compact_revision']}, past "
                f"{stream.next_revision}"
            )
        if result.get("canceled"):
            raise EtcdUnavailable(f"{self.endpoint}: watch canceled: {result.get('cancel_reason')}")
        events = []
        for event in result.get("events", ()):
            kv = event["kv"]
            deleted = event.get("type") == "DELETE"
            events.append(
                WatchEvent(
                    _unb64(kv["key"]),
                    None if deleted else _unb64(kv.get("value", "")),
                    int(kv["mod_revision"]),
                )
            )
        return events

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


class _Compacted(EtcdUnavailable):
    """The revision a paged read is pinned to was compacted before its last page."""


class _StreamIdle(Exception):
    """No watch message arrived within the read timeout (normal)."""
