"""A KVStore that moves on to the next etcd endpoint when one does not answer.

The v2 and v3 clients only change endpoint when told (`rotate()`). The long-running watchers
(Felix's and the DHCP agent's syncer, calico-bgp) rotate themselves and retry with backoff.
Writers that make one request at a time and cannot wait (the Neutron driver's API hooks, its
election, resync and status worker) use this wrapper instead: a request that finds its
endpoint unavailable (refused, timed out, a 5xx such as a member without quorum) is sent to the
next endpoint, until every endpoint has been tried once; only then does the caller see
EtcdUnavailable.

A write retried after a timeout may already have been applied by the member that timed out.
Plain puts and deletes are idempotent; a conditional one (create, put_if, delete_if) then
reports that its condition failed, which every caller already treats as losing to another
writer (the resync repairs it): never a wrong write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from calico.common.etcd.base import EtcdUnavailable, KVStore, Snapshot, WatchEvent

log = logging.getLogger(__name__)

T = TypeVar("T")


class FailoverClient:
    """Wraps `client` (which has `endpoints` endpoints): every request but `watch` is tried
    on each endpoint in turn until one answers."""

    def __init__(self, client: KVStore, endpoints: int):
        self._client = client
        self._attempts = max(1, endpoints)

    def _call(self, what: str, request: Callable[[], T]) -> T:
        for attempt in range(1, self._attempts + 1):
            try:
                return request()
            except EtcdUnavailable as e:
                if attempt == self._attempts:
                    raise
                log.warning("etcd %s failed (%s); trying the next endpoint", what, e)
                self._client.rotate()
        raise AssertionError("not reached")  # pragma: no cover

    @property
    def endpoint(self) -> str:
        return self._client.endpoint

    @property
    def cluster_id(self) -> str | None:
        return self._client.cluster_id

    def get(self, key: str) -> str | None:
        return self._call("get", lambda: self._client.get(key))

    def read_prefix(self, prefix: str) -> Snapshot:
        return self._call("read", lambda: self._client.read_prefix(prefix))

    def put(self, key: str, value: str, ttl: int | None = None) -> None:
        self._call("put", lambda: self._client.put(key, value, ttl))

    def delete(self, key: str) -> bool:
        return self._call("delete", lambda: self._client.delete(key))

    def delete_prefix(self, prefix: str) -> None:
        self._call("delete", lambda: self._client.delete_prefix(prefix))

    def delete_empty_dir(self, path: str) -> bool:
        return self._call("delete", lambda: self._client.delete_empty_dir(path))

    def get_versioned(self, key: str) -> tuple[str, int] | None:
        return self._call("get", lambda: self._client.get_versioned(key))

    def read_prefix_versioned(self, prefix: str) -> dict[str, tuple[str, int]]:
        return self._call("read", lambda: self._client.read_prefix_versioned(prefix))

    def create(self, key: str, value: str, ttl: int | None = None) -> bool:
        return self._call("create", lambda: self._client.create(key, value, ttl))

    def put_if(self, key: str, value: str, version: int, ttl: int | None = None) -> int | None:
        return self._call("put", lambda: self._client.put_if(key, value, version, ttl))

    def delete_if(self, key: str, version: int) -> bool:
        return self._call("delete", lambda: self._client.delete_if(key, version))

    def watch(self, prefix: str, start_revision: int, timeout: float) -> list[WatchEvent]:
        # A watcher has its own retry loop (the Syncer's): rotating here would hide failures.
        return self._client.watch(prefix, start_revision, timeout)

    def rotate(self) -> None:
        self._client.rotate()

    def close(self) -> None:
        self._client.close()
