"""A thin Kubernetes API client over `requests`: paged lists and watch streams, with every answer
treated as hostile (sizes capped, JSON depth-checked, shapes checked). Why not the official client:
docs/kubernetes.md, "Why a thin client".

Errors: `KubeUnavailable` (no answer, a broken stream, 429, 5xx: retry with backoff),
`ResourceExpired` (410: relist), `KubeApiError` (any other refusal, with the `Status` reason and
message: 401, 403, 404, ...).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests

from calico.common.quoting import quoted
from calico.k8s.settings import KubeSettings, SettingsError, read_token_file

log = logging.getLogger(__name__)

MAX_RESPONSE = 256 * 1024 * 1024  # one list page or one watch line
TOKEN_REREAD_SECS = 60.0
CONNECT_TIMEOUT = 10.0
MAX_CONTINUE_RESTARTS = 5


class KubeError(Exception):
    pass


class KubeUnavailable(KubeError):
    """No usable answer (connection, timeout, broken stream, 429, 5xx): retry later."""


class KubeApiError(KubeError):
    """The API server refused the request; `code` and `reason` from its Status."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message


class ResourceExpired(KubeApiError):
    """410: the resource version (or continue token) is older than the server's history."""


@dataclass(frozen=True)
class Page:
    items: list[Any]
    resource_version: str
    continue_token: str | None


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK, ERROR
    object: dict[str, Any]


def decode(raw: bytes | str, what: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise KubeUnavailable(f"{what}: undecodable JSON: {e}") from None
    except RecursionError:
        raise KubeUnavailable(f"{what}: JSON nested too deeply") from None


MAX_VERSION = 256  # characters of a resourceVersion (kube-apiserver's are decimal numbers)
MAX_TOKEN = 16384  # characters of a continue token


def opaque(value: object, limit: int) -> bool:
    """Whether a server-chosen token (resourceVersion, continue) is fit to send back: a
    non-empty printable string of at most `limit` characters. Its meaning is never read."""
    return (
        isinstance(value, str) and 0 < len(value) <= limit and all("!" <= c <= "~" for c in value)
    )


def status_error(code: int, body: object) -> KubeApiError:
    """The error a Status object (or any error body) describes."""
    status: dict[str, Any] = body if isinstance(body, dict) else {}
    reason, message = status.get("reason"), status.get("message")
    reason = reason if isinstance(reason, str) and reason else "Unknown"
    message = message if isinstance(message, str) else ""
    if isinstance(status.get("code"), int) and not isinstance(status.get("code"), bool):
        code = status["code"]
    cls = ResourceExpired if code == 410 else KubeApiError
    return cls(code, printable(reason, 40), printable(message, 300))


def printable(text: str, limit: int) -> str:
    """Server text for a log line: printable ASCII only (others become "?"), capped."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text[: limit + 1])
    return clean if len(clean) <= limit else clean[:limit] + "..."


class KubeClient:
    def __init__(self, settings: KubeSettings, timeout: float = 30.0) -> None:
        self.settings = settings
        self._timeout = timeout
        self._session = requests.Session()
        self._session.trust_env = False  # no proxies from the environment, as for etcd
        self._session.verify = False if settings.insecure else (settings.ca_file or True)
        if settings.cert_file and settings.key_file:
            self._session.cert = (settings.cert_file, settings.key_file)
        self._token = settings.token
        self._token_read_at = 0.0
        self._lock = threading.Lock()

    def close(self) -> None:
        self._session.close()

    def copy(self) -> KubeClient:
        """Another client with the same settings and its own connections (one per thread: a
        requests Session is not meant to be shared by threads holding long watches)."""
        return KubeClient(self.settings, self._timeout)

    # --- Requests ---------------------------------------------------------------------------------

    def _headers(self, reread: bool = False) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "calico-felix"}
        path = self.settings.token_file
        with self._lock:
            if path and (reread or time.monotonic() - self._token_read_at >= TOKEN_REREAD_SECS):
                try:
                    self._token = read_token_file(path)
                except SettingsError as e:
                    raise KubeUnavailable(str(e)) from None
                self._token_read_at = time.monotonic()
            if self._token:
                headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def _request(
        self, path: str, params: dict[str, str], read_timeout: float = 0.0
    ) -> requests.Response:
        """A 200 response, streamed (so no body is read beyond MAX_RESPONSE); errors raised."""
        url = self.settings.server.rstrip("/") + path
        timeout = (CONNECT_TIMEOUT, read_timeout or self._timeout)
        for attempt in (0, 1):
            try:
                response = self._session.get(
                    url,
                    params=params,
                    headers=self._headers(reread=attempt == 1),
                    timeout=timeout,
                    stream=True,
                )
            except requests.RequestException as e:
                raise KubeUnavailable(f"GET {path}: {e}") from None
            if response.status_code == 401 and attempt == 0 and self.settings.token_file:
                response.close()  # the token may have rotated: read it again, once
                continue
            break
        if response.status_code == 200:
            return response
        try:
            body = decode(_read(response, MAX_RESPONSE, path), path)
        except KubeError:
            body = None
        finally:
            response.close()
        error = status_error(response.status_code, body)
        if response.status_code == 429 or response.status_code >= 500:
            raise KubeUnavailable(f"GET {path}: {error}")
        raise error

    def get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        response = self._request(path, params or {})
        try:
            body = decode(_read(response, MAX_RESPONSE, path), path)
        finally:
            response.close()
        if not isinstance(body, dict):
            raise KubeUnavailable(f"GET {path}: expected an object, got {quoted(body)}")
        return body

    # --- Lists ------------------------------------------------------------------------------------

    def list_page(self, path: str, limit: int, continue_token: str | None = None) -> Page:
        params = {"limit": str(limit)}
        if continue_token:
            params["continue"] = continue_token
        body = self.get(path, params)
        meta = body.get("metadata")
        items = body.get("items")
        if not isinstance(meta, dict) or not isinstance(items, list):
            raise KubeUnavailable(f"GET {path}: not a list: {quoted(body)}")
        rv = meta.get("resourceVersion")
        token = meta.get("continue") or None
        if not opaque(rv, MAX_VERSION) or (token is not None and not opaque(token, MAX_TOKEN)):
            raise KubeUnavailable(f"GET {path}: list metadata {quoted(meta)} is unusable")
        return Page(items, str(rv), token)

    def list_all(self, path: str, limit: int) -> tuple[list[Any], str]:
        """Every item, page by page (all pages at the first page's version), and that version.
        An expired continue token restarts the list from the first page."""
        for _ in range(MAX_CONTINUE_RESTARTS):
            items: list[Any] = []
            page = self.list_page(path, limit)
            rv = page.resource_version
            items.extend(page.items)
            try:
                while page.continue_token:
                    page = self.list_page(path, limit, page.continue_token)
                    items.extend(page.items)
            except ResourceExpired as e:
                log.info("List of %s expired between pages (%s); listing again", path, e)
                continue
            return items, rv
        raise KubeUnavailable(f"GET {path}: every list expired between pages")

    # --- Watches ----------------------------------------------------------------------------------

    def watch(self, path: str, resource_version: str, timeout_seconds: int) -> WatchStream:
        params = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        # The server ends the watch after timeout_seconds; silence for much longer is a fault.
        response = self._request(path, params, read_timeout=timeout_seconds + 30.0)
        return WatchStream(response, path)


class WatchStream:
    """The events of one watch, in order, until the server ends it; `close()` (from any thread)
    ends it early."""

    def __init__(self, response: requests.Response, path: str) -> None:
        self._response = response
        self._path = path

    def close(self) -> None:
        # Shut the socket down first: closing the response alone waits for the reader (it takes
        # the buffer's lock) until the server next sends something.
        sock = getattr(getattr(self._response.raw, "connection", None), "sock", None)
        if isinstance(sock, socket.socket):
            try:
                socket.socket.shutdown(
                    sock, socket.SHUT_RDWR
                )  # not SSLSocket's: no TLS state change
            except OSError:
                pass
        self._response.close()

    def __iter__(self) -> Iterator[WatchEvent]:
        buffer = b""
        try:
            for chunk in self._response.iter_content(chunk_size=65536):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield self._event(line)
                if len(buffer) > MAX_RESPONSE:
                    raise KubeUnavailable(f"watch {self._path}: an event over {MAX_RESPONSE} bytes")
            if buffer.strip():
                yield self._event(buffer)
        except (requests.RequestException, OSError, ValueError, AttributeError) as e:
            # ValueError/AttributeError: urllib3 when the response is closed under it.
            raise KubeUnavailable(f"watch {self._path}: {e}") from None
        finally:
            self._response.close()

    def _event(self, line: bytes) -> WatchEvent:
        data = decode(line, f"watch {self._path}")
        if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
            raise KubeUnavailable(f"watch {self._path}: not an event: {quoted(data)}")
        kind = data.get("type")
        if kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"):
            raise KubeUnavailable(f"watch {self._path}: unknown event type {quoted(kind)}")
        return WatchEvent(str(kind), data["object"])


def _read(response: requests.Response, limit: int, what: str) -> bytes:
    """The body, refusing one longer than `limit` bytes (a hostile or broken server)."""
    data = bytearray()
    try:
        for chunk in response.iter_content(chunk_size=1 << 20):
            data += chunk
            if len(data) > limit:
                raise KubeUnavailable(f"{what}: answer longer than {limit} bytes")
    except requests.RequestException as e:
        raise KubeUnavailable(f"{what}: {e}") from None
    return bytes(data)
