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
    describe_error,
    is_read_timeout,
    loads,
    make_session,
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

    @property
    def endpoint(self) -> str:
        return self._endpoints.current

    @property
    def cluster_id(self) -> str | None:
        return self._guard.cluster_id

    def rotate(self) -> None:
        self._endpoints.rotate()

    def close(self) -> None:
        self._session.close()

    # -- requests ------------------------------------------------------------------------

    def _url(self, key: str) -> str:
        return f"{self._endpoints.current}/v2/keys{quote(key, safe='/')}"

    def _request(
        self, method: str, key: str, *, read_timeout: float | None = None, **kwargs: Any
    ) -> tuple[dict[str, Any], requests.Response]:
        timeout = (self._settings.timeout, read_timeout or self._settings.timeout)
        try:
            response = self._session.request(method, self._url(key), timeout=timeout, **kwargs)
            body = loads(response.content)
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
        """One long poll: v2 returns a single event per request."""
        params = {"recursive": "true", "wait": "true", "waitIndex": str(start_revision)}
        try:
            body, _ = self._request("GET", prefix, params=params, read_timeout=timeout)
        except _WatchIdle:
            return []
        if body.get("errorCode") == EVENT_INDEX_CLEARED:
            raise ResyncRequired(f"etcd v2 history no longer holds index {start_revision}")
        _raise_for_error(body)
        node = body["node"]
        revision = int(node["modifiedIndex"])
        if body["action"] in _DELETE_ACTIONS:
            return [WatchEvent(node["key"], None, revision, bool(node.get("dir")))]
        if node.get("dir"):
            return []  # a directory was created: no leaf changed
        return [WatchEvent(node["key"], node.get("value", ""), revision)]


class _WatchIdle(Exception):
    """A long poll saw no event before its read timeout (normal)."""


def _raise_for_error(body: dict[str, Any]) -> None:
    if "errorCode" in body:
        raise EtcdRequestError(f"etcd error {body['errorCode']}: {body.get('message')}")
