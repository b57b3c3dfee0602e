"""etcd access for every component: one KVStore interface over the v2 and v3 APIs."""

from __future__ import annotations

from calico.common.etcd.base import EtcdSettings, KVStore
from calico.common.etcd.v2 import EtcdV2Client

API_VERSIONS = ("v2", "v3")


def connect(api: str, settings: EtcdSettings, *, shuffle: bool = True) -> KVStore:
    """A client for the given API version ("v2" or "v3"); connects lazily.

    shuffle: start at a random endpoint, so that many hosts spread over the members.
    """
    if api == "v2":
        return EtcdV2Client(settings, shuffle=shuffle)
    if api == "v3":
        from calico.common.etcd.v3 import EtcdV3Client  # noqa: PLC0415 (only when used)

        return EtcdV3Client(settings, shuffle=shuffle)
    raise ValueError(f"unknown etcd API version {api!r}")
