"""etcd v2 API client (HTTP + JSON under /v2/keys).

Written here rather than taken from python-etcd because that library has been unmaintained
since 2017 and hides what a watcher needs: the X-Etcd-Index of a recursive read (the
snapshot revision), the X-Etcd-Cluster-Id header on every answer, and the raw error codes
(401 "event index cleared" means the watch must resync).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

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
from calico.common.etcd.transport import (
    ClusterIdGuard,
    Endpoints,
    NestedTooDeep,
    WatchStream,
    answer_of,
    decode,
    describe_error,
    is_read_timeout,
    loads,
    make_session,
    read_body,
)

log = logging.getLogger(__name__)

KEY_NOT_FOUND = 100
DIR_NOT_EMPTY = 108
EVENT_INDEX_CLEARED = 401
_DELETE_ACTIONS = frozenset({"delete", "expire", "compareAndDelete"})
# Key not found, compare failed, node exists: the condition did not hold.
_COMPARE_FAILURES = frozenset({100, 101, 105})
# Directory levels a snapshot descends one at a time when a tree is too deep to decode whole.
_MAX_LEVELS = 32


class EtcdV2Client:
    def __init__(self, settings: EtcdSettings, *, shuffle: bool = True):
        self._settings = settings
        self._endpoints = Endpoints(settings.endpoints, shuffle)
        self._session = make_session(settings)
        self._guard = ClusterIdGuard()
        self._stream: WatchStream | None = None
        # (prefix, revision, index): nothing under prefix changed from revision to index - 1.
        self._quiet: tuple[str, int, int] | None = None

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

    # -- requests ------------------------------------------------------------------------

    def _url(self, key: str) -> str:
        return f"{self._endpoints.current}/v2/keys{quote(key, safe='/')}"

    def _request(
        self, method: str, key: str, *, read_timeout: float | None = None, **kwargs: Any
    ) -> tuple[dict[str, Any], requests.Response]:
        raw, response = self._exchange(method, key, read_timeout, kwargs)
        return answer_of(self.endpoint, raw, loads), response

    def _read_tree(self, prefix: str, *, recursive: bool = True) -> tuple[_Answer, int]:
        """A GET of prefix decoded into _Answer (see _Node), and its X-Etcd-Index."""
        params = {"recursive": "true"} if recursive else {}
        raw, response = self._exchange("GET", prefix, None, {"params": params})
        # A listing is three levels deep: only a recursive read may be too deep for etcd's JSON.
        answer = answer_of(self.endpoint, raw, _decode_tree, deep_passes=recursive)
        index = response.headers.get("X-Etcd-Index", str(answer.index))
        if not index.isdigit():
            raise EtcdUnavailable(f"{self.endpoint}: X-Etcd-Index {index[:40]!r} is not an index")
        return answer, int(index)

    def _read_keys(self, prefix: str, levels_left: int = _MAX_LEVELS) -> tuple[int, list[_Node]]:
        """Every key under prefix (none when it does not exist), and the X-Etcd-Index to watch
        from. One recursive GET, unless the tree is nested too deep to decode (a hostile key
        hundreds of directories deep stopped every snapshot): then prefix is listed alone and
        each child directory read the same way, a level at a time, down to _MAX_LEVELS below,
        past which a subtree is skipped and logged (no Calico key is nested that deep). The
        index is then the earliest of the reads', so a watch from it replays what changed
        between them."""
        try:
            answer, index = self._read_tree(prefix)
            return index, [] if answer.errorCode == KEY_NOT_FOUND else list(_leaves(answer))
        except NestedTooDeep:
            if levels_left == 0:
                log.error("Skipping %r: its keys are nested too deep to read", prefix)
                return sys.maxsize, []
        answer, index = self._read_tree(prefix, recursive=False)
        if answer.errorCode == KEY_NOT_FOUND:
            return index, []
        keys: list[_Node] = []
        for child in _children(answer):
            if not _is_child(child.key, prefix):
                # etcd lists only children; anything else would aim the next GET elsewhere.
                log.error("Skipping %r: not a key under %r", child.key, prefix)
            elif child.dir:
                child_index, child_keys = self._read_keys(child.key, levels_left - 1)
                index = min(index, child_index)
                keys.extend(child_keys)
            else:
                keys.append(child)
        return index, keys

    def _exchange(
        self, method: str, key: str, read_timeout: float | None, kwargs: dict[str, Any]
    ) -> tuple[bytes, requests.Response]:
        timeout = (self._settings.timeout, read_timeout or self._settings.timeout)
        try:
            response = self._session.request(
                method, self._url(key), timeout=timeout, stream=True, **kwargs
            )
            raw = read_body(response)
        except requests.RequestException as e:
            if is_read_timeout(e) and read_timeout is not None:
                raise _WatchIdle() from None
            raise EtcdUnavailable(f"{self.endpoint}: {describe_error(e, self.endpoint)}") from None
        self._guard.check(response.headers.get("X-Etcd-Cluster-Id"))
        if response.status_code >= 500:
            raise EtcdUnavailable(f"{self.endpoint}: HTTP {response.status_code}")
        return raw, response

    def get(self, key: str) -> str | None:
        body, _ = self._request("GET", key)
        if body.get("errorCode") == KEY_NOT_FOUND:
            return None
        _raise_for_error(body)
        node = body["node"]
        return None if node.get("dir") else node.get("value")

    def read_prefix(self, prefix: str) -> Snapshot:
        index, keys = self._read_keys(prefix)
        return Snapshot(index, {key.key: key.value for key in keys})

    def put(self, key: str, value: str, ttl: int | None = None) -> None:
        data: dict[str, Any] = {"value": value}
        if ttl is not None:
            data["ttl"] = ttl
        body, _ = self._request("PUT", key, data=data)
        _raise_for_error(body)

    def delete(self, key: str) -> bool:
        body, _ = self._request("DELETE", key)
        if body.get("errorCode") == KEY_NOT_FOUND:
            return False
        _raise_for_error(body)
        return True

    def delete_prefix(self, prefix: str) -> None:
        body, _ = self._request("DELETE", prefix, params={"recursive": "true"})
        if body.get("errorCode") != KEY_NOT_FOUND:
            _raise_for_error(body)

    def delete_empty_dir(self, path: str) -> bool:
        body, _ = self._request("DELETE", path, params={"dir": "true"})
        if body.get("errorCode") in (KEY_NOT_FOUND, DIR_NOT_EMPTY):
            return False
        _raise_for_error(body)
        return True

    # -- compare-and-swap ----------------------------------------------------------------

    def get_versioned(self, key: str) -> tuple[str, int] | None:
        body, _ = self._request("GET", key)
        if body.get("errorCode") == KEY_NOT_FOUND:
            return None
        _raise_for_error(body)
        node = body["node"]
        return None if node.get("dir") else (node.get("value", ""), int(node["modifiedIndex"]))

    def read_prefix_versioned(self, prefix: str) -> dict[str, tuple[str, int]]:
        _, keys = self._read_keys(prefix)
        return {key.key: (key.value, key.modifiedIndex) for key in keys}

    def _conditional_put(
        self, key: str, value: str, ttl: int | None, condition: dict[str, str]
    ) -> int | None:
        data: dict[str, Any] = {"value": value, **condition}
        if ttl is not None:
            data["ttl"] = ttl
        body, _ = self._request("PUT", key, data=data)
        if body.get("errorCode") in _COMPARE_FAILURES:
            return None
        _raise_for_error(body)
        return int(body["node"]["modifiedIndex"])

    def create(self, key: str, value: str, ttl: int | None = None) -> bool:
        return self._conditional_put(key, value, ttl, {"prevExist": "false"}) is not None

    def put_if(self, key: str, value: str, version: int, ttl: int | None = None) -> int | None:
        return self._conditional_put(key, value, ttl, {"prevIndex": str(version)})

    def delete_if(self, key: str, version: int) -> bool:
        body, _ = self._request("DELETE", key, params={"prevIndex": str(version)})
        if body.get("errorCode") in _COMPARE_FAILURES:
            return False
        _raise_for_error(body)
        return True

    def watch(self, prefix: str, start_revision: int, timeout: float) -> list[WatchEvent]:
        """The next change at or after `start_revision` under `prefix`; [] if none came within
        `timeout` seconds.

        A watcher that has caught up keeps one `stream=true` answer open, to which etcd writes
        each event as it happens: a burst of writes costs no HTTP round trip per event (a plain
        long poll answers one event per request, which made Felix's watch the bottleneck of a
        burst). etcd registers a streaming watcher only when its history holds nothing under
        the prefix at or after waitIndex; otherwise it answers that one event and the stream
        then stays silent. The answer's X-Etcd-Index, the store's index when the watch was made,
        tells which: an event at or before it came from the history (a one-shot answer, read
        and closed: the watcher is catching up), an event after it is live.

        An answer that stays silent until `timeout` also tells that nothing under the prefix
        changed up to its X-Etcd-Index: the next answer for the same revision starts after it.
        So writes elsewhere (every host's status reports) no longer push an idle watcher out of
        etcd's 1,000-event history (upstream felix#920), unless 1,000 of them come within
        one `timeout`.
        """
        revision = start_revision
        while True:
            stream = self._stream
            if stream is None or stream.prefix != prefix or stream.next_revision != revision:
                self._close_stream()
                wait_index = self._wait_index(prefix, revision)
                stream = self._stream = self._open_stream(prefix, revision, wait_index, timeout)
            try:
                body = self._next_message(stream)
            except _WatchIdle:
                if not stream.received and stream.store_index is not None:
                    quiet_until = max(self._wait_index(prefix, revision), stream.store_index + 1)
                    self._quiet = (prefix, revision, quiet_until)
                self._close_stream()
                return []
            except (EtcdUnavailable, EtcdRequestError, ResyncRequired):
                self._close_stream()
                raise
            node = body["node"]
            revision = int(node["modifiedIndex"]) + 1
            stream.next_revision = revision
            if stream.received == 1:
                stream.live = stream.store_index is not None and revision > stream.store_index + 1
            if not stream.live:
                self._close_stream()
            if body.get("action") in _DELETE_ACTIONS:
                return [WatchEvent(node["key"], None, revision - 1, bool(node.get("dir")))]
            if not node.get("dir"):
                return [WatchEvent(node["key"], node.get("value", ""), revision - 1)]
            # A directory was created: no leaf changed. Read on from the next revision (the
            # caller's revision only moves with the events it is given).

    def _wait_index(self, prefix: str, revision: int) -> int:
        """Where a watch for `revision` may start: past what silent answers showed unchanged."""
        quiet = self._quiet
        return quiet[2] if quiet is not None and quiet[:2] == (prefix, revision) else revision

    def _open_stream(
        self, prefix: str, revision: int, wait_index: int, timeout: float
    ) -> WatchStream:
        params = {"recursive": "true", "wait": "true", "stream": "true"}
        params["waitIndex"] = str(wait_index)
        try:
            response = self._session.get(
                self._url(prefix),
                params=params,
                stream=True,
                timeout=(self._settings.timeout, timeout),
            )
        except requests.RequestException as e:
            raise EtcdUnavailable(f"{self.endpoint}: {describe_error(e, self.endpoint)}") from None
        self._guard.check(response.headers.get("X-Etcd-Cluster-Id"))
        if response.status_code != 200:  # an error answer, whole: e.g. 401 index cleared
            try:
                body = loads(response.content)
            except (requests.RequestException, ValueError):
                body = {}
            finally:
                response.close()
            if body.get("errorCode") == EVENT_INDEX_CLEARED:
                raise ResyncRequired(f"etcd v2 history no longer holds index {wait_index}")
            if response.status_code < 500 and "errorCode" in body:
                _raise_for_error(body)
            raise EtcdUnavailable(f"{self.endpoint}: watch HTTP {response.status_code}")
        try:
            store_index: int | None = int(response.headers.get("X-Etcd-Index", ""))
        except ValueError:
            store_index = None  # unknown: read one event, then open again
        return WatchStream(response, prefix, revision, store_index)

    def _next_message(self, stream: WatchStream) -> dict[str, Any]:
        """The next event's JSON object from an open watch answer."""
        try:
            line = b""
            while not line.strip():
                line = next(stream.lines)
        except StopIteration:
            # etcd ended the answer: it drops a streaming watcher that falls 100 events behind.
            # Open again at once if this stream moved on; else something is wrong (back off).
            if stream.received:
                raise _WatchIdle() from None
            raise EtcdUnavailable(f"{self.endpoint}: watch answer ended") from None
        except requests.RequestException as e:
            if is_read_timeout(e):
                raise _WatchIdle() from None
            raise EtcdUnavailable(f"{self.endpoint}: {describe_error(e, self.endpoint)}") from None
        stream.received += 1
        try:
            body = loads(line)
        except ValueError:
            raise EtcdUnavailable(f"{self.endpoint}: watch event is not JSON") from None
        if not isinstance(body, dict):
            raise EtcdUnavailable(f"{self.endpoint}: watch event is not an object")
        if body.get("errorCode") == EVENT_INDEX_CLEARED:
            raise ResyncRequired(f"etcd v2 history no longer holds index {stream.next_revision}")
        _raise_for_error(body)
        return body

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


class _WatchIdle(Exception):
    """A long poll saw no event before its read timeout (normal)."""


class _Node(msgspec.Struct, gc=False):
    """One node of a recursive v2 read. A typed decoder builds only these fields, and skips
    the rest (createdIndex, ttl, expiration) without building them: with Struct rather than
    dict nodes, decoding and walking 100,000 keys takes half the time (docs/benchmarks.md).
    gc=False: the tree has no cycles, so the collector need not track its nodes."""

    key: str = ""
    dir: bool = False
    nodes: list[_Node] = []
    value: str = ""  # etcd sends one for every key ("" included), none for a directory
    modifiedIndex: int = 0


class _Answer(msgspec.Struct, gc=False):
    node: _Node | None = None
    errorCode: int | None = None
    message: str = ""
    index: int = 0


_TREE_DECODER: msgspec.json.Decoder[_Answer] = msgspec.json.Decoder(_Answer)


def _decode_tree(raw: bytes) -> _Answer:
    return decode(raw, _TREE_DECODER)


def _children(answer: _Answer) -> list[_Node]:
    if answer.errorCode is not None:
        raise EtcdRequestError(f"etcd error {answer.errorCode}: {answer.message}")
    if answer.node is None:
        raise EtcdRequestError("etcd's answer has no node")
    return answer.node.nodes if answer.node.dir else [answer.node]


def _is_child(key: str, prefix: str) -> bool:
    rest = key.removeprefix(prefix.rstrip("/") + "/")
    return rest != key and rest not in ("", ".", "..") and "/" not in rest


def _leaves(answer: _Answer) -> Iterator[_Node]:
    """Every key (not directory) under the answer's node."""
    stack = _children(answer)
    pop, extend = stack.pop, stack.extend
    while stack:
        node = pop()
        if node.dir:
            extend(node.nodes)
        else:
            yield node


def _raise_for_error(body: dict[str, Any]) -> None:
    if "errorCode" in body:
        raise EtcdRequestError(f"etcd error {body['errorCode']}: {body.get('message')}")
