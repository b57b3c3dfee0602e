"""etcd v2 API client (HTTP + JSON under /v2/keys).

Written here rather than taken from python-etcd because that library has been unmaintained
since 2017 and hides what a watcher needs: the X-Etcd-Index of a recursive read (the
snapshot revision), the X-Etcd-Cluster-Id header on every answer, and the raw error codes
(401 "event index cleared" means the watch must resync).
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

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
    WatchStream,
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
        timeout = (self._settings.timeout, read_timeout or self._settings.timeout)
        try:
            response = self._session.request(
                method, self._url(key), timeout=timeout, stream=True, **kwargs
            )
            body = loads(read_body(response))
        except requests.RequestException as e:
            if is_read_timeout(e) and read_timeout is not None:
                raise _WatchIdle() from None
            raise EtcdUnavailable(f"{self.endpoint}: {describe_error(e, self.endpoint)}") from None
        except ValueError:
            raise EtcdUnavailable(f"{self.endpoint}: answer is not JSON") from None
        self._guard.check(response.headers.get("X-Etcd-Cluster-Id"))
        if response.status_code >= 500:
            raise EtcdUnavailable(f"{self.endpoint}: HTTP {response.status_code}")
        return body, response

    def get(self, key: str) -> str | None:
        body, _ = self._request("GET", key)
        if body.get("errorCode") == KEY_NOT_FOUND:
            return None
        _raise_for_error(body)
        node = body["node"]
        return None if node.get("dir") else node.get("value")

    def read_prefix(self, prefix: str) -> Snapshot:
        body, response = self._request("GET", prefix, params={"recursive": "true"})
        index = int(response.headers.get("X-Etcd-Index", body.get("index", 0)))
        if body.get("errorCode") == KEY_NOT_FOUND:
            return Snapshot(index, {})
        _raise_for_error(body)
        items: dict[str, str] = {}
        stack = [body["node"]]
        pop, extend = stack.pop, stack.extend
        while stack:
            node = pop()
            if node.get("dir"):
                extend(node.get("nodes", ()))
            elif "value" in node:
                items[node["key"]] = node["value"]
        return Snapshot(index, items)

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
        body, _ = self._request("GET", prefix, params={"recursive": "true"})
        if body.get("errorCode") == KEY_NOT_FOUND:
            return {}
        _raise_for_error(body)
        items: dict[str, tuple[str, int]] = {}
        stack = [body["node"]]
        while stack:
            node = stack.pop()
            if node.get("dir"):
                stack.extend(node.get("nodes", ()))
            elif "value" in node:
                items[node["key"]] = (node["value"], int(node["modifiedIndex"]))
        return items

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


def _raise_for_error(body: dict[str, Any]) -> None:
    if "errorCode" in body:
        raise EtcdRequestError(f"etcd error {body['errorCode']}: {body.get('message')}")
