"""HTTP plumbing shared by the v2 and v3 clients: sessions with TLS, endpoint rotation,
and the cluster-ID check."""

from __future__ import annotations

import gc
import random
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import msgspec
import requests
import urllib3.exceptions

from calico.common.etcd.base import ClusterIdChanged, EtcdSettings, EtcdUnavailable

T = TypeVar("T")


def loads(body: bytes) -> Any:
    """etcd's answer decoded into dicts and lists. Raises ValueError for what is not JSON,
    NestedTooDeep (a ValueError) for what is nested too deep."""
    return _paused_gc(msgspec.json.decode, body)


def decode(body: bytes, decoder: msgspec.json.Decoder[T]) -> T:
    """etcd's answer decoded into the decoder's types, which skips the fields they do not
    name without building them (a recursive v2 read: see v2.py). Raises ValueError for what is
    not JSON or not of those types (msgspec's errors are ValueErrors), and NestedTooDeep (a
    ValueError) for what is nested deeper than Python's recursion limit."""
    return _paused_gc(decoder.decode, body)


def _paused_gc(decode_json: Callable[[bytes], T], body: bytes) -> T:
    """msgspec rather than the json module: a snapshot of 100,000 keys is a 64 MB answer, and
    decoding it was the largest part of reading one (docs/benchmarks.md). Python's cyclic
    garbage collector is paused meanwhile: the decoded tree has no cycles, but the hundreds of
    thousands of objects it allocates set off collection after collection of a growing heap
    (4x the decoding time, measured)."""
    try:
        if len(body) < _PAUSE_GC_ABOVE or not gc.isenabled():
            return decode_json(body)
        gc.disable()
        try:
            return decode_json(body)
        finally:
            gc.enable()
    except RecursionError:
        # Nesting deeper than Python's recursion limit: a v2 key hundreds of directories deep.
        raise NestedTooDeep("the answer is nested too deep to decode") from None


_PAUSE_GC_ABOVE = 1 << 16  # bytes; a small answer allocates too little to matter


class NestedTooDeep(ValueError):
    """JSON nested deeper than Python's recursion limit lets a decoder go."""


def answer_of(
    endpoint: str, raw: bytes, decode_json: Callable[[bytes], T], *, deep_passes: bool = False
) -> T:
    """raw decoded by decode_json (loads, or decode with a typed decoder); EtcdUnavailable for
    what is not etcd's JSON. With deep_passes, NestedTooDeep is raised as it is, for a caller
    that reads a level at a time then (the v2 snapshot)."""
    try:
        return decode_json(raw)
    except NestedTooDeep:
        if deep_passes:
            raise
        raise EtcdUnavailable(f"{endpoint}: answer is nested too deep") from None
    except ValueError as e:
        raise EtcdUnavailable(f"{endpoint}: answer is not etcd's JSON: {e}") from None


def read_body(response: requests.Response) -> bytes:
    """The whole body of a `stream=True` answer, in one urllib3 read: for a 64 MB snapshot that
    is 15 % faster than requests' loop of 10 KB chunks (`response.content`: 0.83 s, this 0.71 s,
    curl 0.67 s, measured). Raises requests' exceptions, as `response.content` would."""
    try:
        body: bytes = response.raw.read(decode_content=True)
    except urllib3.exceptions.ReadTimeoutError as e:
        raise requests.ReadTimeout(e) from e
    except urllib3.exceptions.HTTPError as e:
        raise requests.ConnectionError(e) from e
    finally:
        response.raw.release_conn()
    return body


def dumps(value: Any) -> bytes:
    return msgspec.json.encode(value)


def make_session(settings: EtcdSettings) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # never route etcd traffic through an HTTP proxy
    if settings.cert_file and settings.key_file:
        session.cert = (settings.cert_file, settings.key_file)
    if settings.is_https:
        session.verify = settings.ca_file if settings.ca_file else False
    return session


class Endpoints:
    """The endpoint list, shuffled once so that many hosts spread over the members."""

    def __init__(self, urls: tuple[str, ...], shuffle: bool = True):
        self._urls = list(urls)
        if shuffle:
            random.shuffle(self._urls)
        self._index = 0

    @property
    def current(self) -> str:
        return self._urls[self._index]

    def rotate(self) -> None:
        self._index = (self._index + 1) % len(self._urls)


class ClusterIdGuard:
    """Remembers the first cluster ID seen and refuses any other."""

    def __init__(self) -> None:
        self.cluster_id: str | None = None

    def check(self, cluster_id: str | None) -> None:
        if not cluster_id:
            return
        if self.cluster_id is None:
            self.cluster_id = cluster_id
        elif cluster_id != self.cluster_id:
            raise ClusterIdChanged(
                f"etcd cluster ID changed from {self.cluster_id} to {cluster_id}"
            )


def is_read_timeout(error: Exception) -> bool:
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


def describe_error(error: Exception, endpoint: str = "") -> str:
    """The useful part of a requests/urllib3 error ("[Errno 111] Connection refused"),
    with a hint at the likely cause when the endpoint's scheme does not match the server's."""
    text = _error_text(error)
    reason = text
    if match := re.search(r"\[Errno -?\d+\][^'\")]*", text):
        reason = match.group(0).strip()
    elif "timed out" in text.lower():
        reason = "timed out"
    elif match := re.search(r"SSLError\((.{0,150})", text):
        reason = "TLS error: " + match.group(1)
    elif len(text) >= 200:
        reason = text[:200] + "..."
    if endpoint.startswith("https://") and "Connection reset by peer" in text:
        # A plain-HTTP etcd answers a TLS ClientHello either with bytes that fail the handshake
        # (SSLError) or, depending on timing, by resetting the connection.
        reason = f"TLS error (likely: the connection was reset during the exchange): {reason}"
    hint = _scheme_hint(text, endpoint)
    return f"{reason}{hint}" if reason else f"{type(error).__name__}{hint}"


def _error_text(error: Exception) -> str:
    parts = [str(part) for part in error.args]
    return " ".join(p for p in parts if p).strip()


# What a plain-HTTP request to a TLS-only etcd, or a TLS request to a plain one, looks like.
_PLAIN_TO_TLS = ("RemoteDisconnected", "Connection aborted", "HTTP request to an HTTPS server")
_TLS_TO_PLAIN = (
    "UNEXPECTED_EOF",
    "WRONG_VERSION_NUMBER",
    "wrong version number",
    "SSLEOFError",
    "Connection reset by peer",
)


def _scheme_hint(text: str, endpoint: str) -> str:
    if endpoint.startswith("http://") and any(sign in text for sign in _PLAIN_TO_TLS):
        return (
            " (etcd closed the connection: if it serves TLS only, use https:// in "
            "EtcdEndpoints, or EtcdScheme=https, with EtcdCaFile and a client certificate)"
        )
    if endpoint.startswith("https://") and any(sign in text for sign in _TLS_TO_PLAIN):
        return (
            " (the TLS handshake failed: if etcd serves plain HTTP, use http:// in "
            "EtcdEndpoints; otherwise check EtcdCaFile, EtcdCertFile and EtcdKeyFile)"
        )
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return " (etcd's certificate is not signed by EtcdCaFile)"
    return ""


class WatchStream:
    """One open streaming watch (v2 `stream=true`, v3 the gateway's /watch), positioned at
    next_revision: the answer's body is one JSON object per line. `live` is False for a v2
    answer that holds one event and then stays silent; `store_index` is v2's X-Etcd-Index when
    the watch was made, which tells (see EtcdV2Client.watch)."""

    def __init__(
        self,
        response: requests.Response,
        prefix: str,
        next_revision: int,
        store_index: int | None = None,
    ):
        self.response = response
        self.prefix = prefix
        self.next_revision = next_revision
        self.store_index = store_index
        self.live = True
        self.received = 0  # messages read so far
        self.lines: Iterator[bytes] = response.iter_lines()

    def close(self) -> None:
        self.response.close()
