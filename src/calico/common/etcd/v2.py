"""etcd v2 API client (HTTP + JSON under /v2/keys).

Written here rather than taken from python-etcd because that library has been unmaintained
since 2017 and hides what a watcher needs: the X-Etcd-Index of a recursive read (the
snapshot revision), the X-Etcd-Cluster-Id header on every answer, and the raw error codes
(401 "event index cleared" means the watch must resync).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any
from urllib.parse import quote

import requests
import urllib3.exceptions

from calico.common.etcd.base import (
    EtcdRequestError,
    EtcdSettings,
    EtcdUnavailable,
    ResyncRequired,
    Snapshot,
    WatchEvent,
)
from calico.common.etcd.transport import ClusterIdGuard, Endpoints, make_session

log = logging.getLogger(__name__)

KEY_NOT_FOUND = 100
EVENT_INDEX_CLEARED = 401
_DELETE_ACTIONS = frozenset({"delete", "expire", "compareAndDelete"})


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
            body = response.json()
        except requests.RequestException as e:
            if _is_read_timeout(e) and read_timeout is not None:
                raise _WatchIdle() from None
            raise EtcdUnavailable(f"{self.endpoint}: {_short(e)}") from None
        except (ValueError, json.JSONDecodeError):
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
        while stack:
            node = stack.pop()
            if node.get("dir"):
                stack.extend(node.get("nodes", ()))
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


def _is_read_timeout(error: Exception) -> bool:
    if isinstance(error, requests.ReadTimeout):
        return True
    # While streaming the body, requests wraps urllib3's read timeout in ConnectionError.
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, urllib3.exceptions.ReadTimeoutError):
            return True
        cause = cause.__context__ or cause.__cause__
        if cause is error:
            break
    return bool(error.args) and isinstance(error.args[0], urllib3.exceptions.ReadTimeoutError)


def _short(error: Exception) -> str:
    """The useful part of a requests/urllib3 error ("[Errno 111] Connection refused")."""
    text = str(error)
    if match := re.search(r"\[Errno -?\d+\][^'\")]*", text):
        return match.group(0).strip()
    if "timed out" in text.lower():
        return "timed out"
    if match := re.search(r"SSLError\((.{0,150})", text):
        return "TLS error: " + match.group(1)
    return text if len(text) < 200 else text[:200] + "..."
