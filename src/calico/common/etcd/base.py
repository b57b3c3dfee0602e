"""What the rest of the project sees of etcd, whichever API (v2 or v3) is underneath.

Keys are the v1 data model's slash-separated paths in both APIs. A "prefix" is a directory
path such as /calico/v1: it covers the keys below it (v2: the directory tree; v3: the keys
starting with prefix + "/").
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit


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


def settings_for_endpoints(
    endpoints: str | Sequence[str],
    key_file: str | None = None,
    cert_file: str | None = None,
    ca_file: str | None = None,
) -> EtcdSettings:
    """The settings for an etcd cluster given as a list of client URLs (Neutron's `[calico]
    etcd_endpoints`, which the DHCP agent reads too): comma-separated text or a sequence of
    `scheme://host:port` URLs, all http or all https. TLS files with http:// URLs are refused
    rather than ignored (TLS was asked for, the URLs would not use it).

    Raises ValueError naming the bad URL.
    """
    urls = parse_endpoints(endpoints)
    if urls[0].startswith("http://") and (key_file or cert_file or ca_file):
        raise ValueError(
            "TLS files are set but the endpoints use http://: write https:// URLs "
            "(or remove the TLS files)"
        )
    return EtcdSettings(urls, key_file, cert_file, ca_file)


def parse_endpoints(endpoints: str | Sequence[str]) -> tuple[str, ...]:
    """Validated etcd client URLs (a trailing `/` dropped) from comma-separated text or a
    sequence; ValueError for none, a URL that is not `http(s)://host[:port]`, or mixed schemes."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    urls = tuple(item.strip().rstrip("/") for item in items if item.strip())
    if not urls:
        raise ValueError("no etcd endpoints given")
    for url in urls:
        # urlsplit drops tabs and newlines silently: refuse them (and any control character).
        if any(c.isspace() or not c.isprintable() for c in url):
            raise ValueError(f"etcd endpoint {url!r}: white space or a control character")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ValueError(f"etcd endpoint {url!r}: bad host or port") from None
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"etcd endpoint {url!r}: the scheme must be http or https")
        if not parts.hostname or parts.path or parts.query or parts.fragment:
            raise ValueError(f"etcd endpoint {url!r}: must be scheme://host:port, no path")
        if not _valid_host(parts.hostname):
            raise ValueError(f"etcd endpoint {url!r}: bad host")
        if parts.username is not None or parts.password is not None:
            raise ValueError(f"etcd endpoint {url!r}: must not carry a user or password")
        if port == 0:
            raise ValueError(f"etcd endpoint {url!r}: bad port")
    if len({urlsplit(url).scheme for url in urls}) > 1:
        raise ValueError("etcd endpoints must all use the same scheme (all http or all https)")
    return urls


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")


def _valid_host(host: str) -> bool:
    """A DNS name or an IP address (urlsplit has already taken the brackets off IPv6)."""
    if _HOST_NAME_RE.fullmatch(host):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return "%" not in host


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
