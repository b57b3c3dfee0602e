"""What the rest of the project sees of etcd, whichever API (v2 or v3) is underneath.

Keys are the v1 data model's slash-separated paths in both APIs. A "prefix" is a directory
path such as /calico/v1: it covers the keys below it (v2: the directory tree; v3: the keys
starting with prefix + "/").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class EtcdError(Exception):
    """Any failure talking to etcd."""


class EtcdUnavailable(EtcdError):
    """No answer from the endpoint (connection refused, timeout, 5xx): try again, elsewhere."""


class ResyncRequired(EtcdError):
    """The watch can no longer be continued (v2 event index cleared, v3 compaction)."""


class ClusterIdChanged(EtcdError):
    """etcd answered with a different cluster ID than before: our state is meaningless."""


class EtcdRequestError(EtcdError):
    """etcd refused a request (bad request, permission, failed precondition)."""


@dataclass(frozen=True)
class EtcdSettings:
    """How to reach etcd: endpoint URLs (all one scheme) and TLS files."""

    endpoints: tuple[str, ...]
    key_file: str | None = None
    cert_file: str | None = None
    # CA to verify the server with; None with https means "do not verify".
    ca_file: str | None = None
    timeout: float = 10.0

    @property
    def is_https(self) -> bool:
        return self.endpoints[0].startswith("https://")


def settings_for_host(
    host: str,
    port: int | str,
    key_file: str | None = None,
    cert_file: str | None = None,
    ca_file: str | None = None,
) -> EtcdSettings:
    """The settings for one etcd given by host and port (Neutron's `[calico] etcd_host` and
    `etcd_port`, which the DHCP agent reads too): any TLS file means https; an IPv6 literal
    is put in brackets."""
    scheme = "https" if (key_file or cert_file or ca_file) else "http"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return EtcdSettings((f"{scheme}://{host}:{port}",), key_file, cert_file, ca_file)


@dataclass(frozen=True)
class Snapshot:
    """Every leaf under a prefix, as of one revision (v2: the X-Etcd-Index)."""

    revision: int
    items: dict[str, str]


@dataclass(frozen=True)
class WatchEvent:
    key: str
    value: str | None  # None: deleted (or expired)
    revision: int
    is_dir: bool = False  # v2 only: a directory was deleted, meaning every key below it


class KVStore(Protocol):
    """The operations Felix, the Neutron driver and the DHCP agent need."""

    @property
    def endpoint(self) -> str: ...
    @property
    def cluster_id(self) -> str | None: ...
    def get(self, key: str) -> str | None: ...
    def read_prefix(self, prefix: str) -> Snapshot: ...
    def put(self, key: str, value: str, ttl: int | None = None) -> None: ...
    def delete(self, key: str) -> bool: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def delete_empty_dir(self, path: str) -> bool:
        """Remove a directory if it is empty (v2); True if it went. v3 has no directories."""
        ...

    # Compare-and-swap, for writers that share keys (the Neutron driver's resync and
    # election). A "version" is the key's v2 modifiedIndex / v3 mod_revision.
    def get_versioned(self, key: str) -> tuple[str, int] | None: ...
    def read_prefix_versioned(self, prefix: str) -> dict[str, tuple[str, int]]: ...
    def create(self, key: str, value: str, ttl: int | None = None) -> bool:
        """Write only if the key does not exist; False if it does."""
        ...

    def put_if(self, key: str, value: str, version: int, ttl: int | None = None) -> int | None:
        """Write only if the key is still at version; its new version, or None if not."""
        ...

    def delete_if(self, key: str, version: int) -> bool:
        """Delete only if the key is still at version; False if not (or already gone)."""
        ...

    def watch(self, prefix: str, start_revision: int, timeout: float) -> list[WatchEvent]:
        """Events at or after start_revision under prefix; [] if none came within timeout."""
        ...

    def rotate(self) -> None:
        """Use the next endpoint from now on (after a failure)."""
        ...

    def close(self) -> None: ...
