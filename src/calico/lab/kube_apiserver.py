"""A Kubernetes API server for the lab: the subset Felix, `kubectl` and the official Python client
use, over HTTPS with bearer tokens, faithful where clients depend on it. No kube-apiserver can be
installed on these machines (kubernetes-datastore.md §6), so this stands in for one; the tests
prove it speaks the API by driving it with Debian's real kubectl and the official Python client.

Served (kubernetes-datastore.md §5): discovery (`/version`, `/api`, `/apis`, each group version);
pods, namespaces, nodes (core v1), networkpolicies (networking.k8s.io/v1), globalfelixconfigs and
ippools (crd.projectcalico.org/v1), cluster-wide and per namespace; get, list (resourceVersion,
`limit`/`continue`, label and field selectors), watch (`?watch=` and the `/watch/` path form;
ADDED / MODIFIED / DELETED / BOOKMARK / ERROR, one JSON object per line, chunked), create, update,
patch (merge and strategic merge), delete, `status` subresources. Errors are `Status` objects.

Test controls: `compact()` (watches and paged lists from before answer 410 Expired, as a 200 with
one ERROR event, or a plain HTTP 410 with `gone_as_http`), `drop_watches()` (abrupt connection
drops), `restart()` (same port, same objects), short watch timeouts and bookmark intervals, tokens
with per-verb/resource rights (401 without a valid token, 403 without the right).

Storage and versions: `calico.lab.kube_store`; resource table, discovery, selectors and patches:
`calico.lab.kube_resources`; paths, verbs and tokens' rights: `calico.lab.kube_routes`.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from calico.lab import kube_routes as routes
from calico.lab.kube_resources import (
    MERGE_PATCH,
    NAMESPACES,
    STRATEGIC_MERGE_PATCH,
    ApiError,
    Resource,
    bad_request,
    discovery,
    expired,
    merge_patch,
)
from calico.lab.kube_routes import Identity, reader
from calico.lab.kube_store import KubeStore
from calico.lab.tls import TlsFiles

__all__ = ["Identity", "KubeApiServer", "ensure_namespace", "reader"]

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024


class KubeApiServer:
    def __init__(
        self,
        store: KubeStore | None = None,
        *,
        tls: TlsFiles | None = None,
        tokens: dict[str, Identity] | None = None,
        port: int = 0,
        min_request_timeout: float = 1800.0,
        bookmark_interval: float = 60.0,
        gone_as_http: bool = False,
    ) -> None:
        self.store = store or KubeStore()
        self.tls = tls
        self.tokens = tokens  # None: no authentication (every request is "admin")
        self.port = port
        self.min_request_timeout = min_request_timeout
        self.bookmark_interval = bookmark_interval
        self.gone_as_http = gone_as_http
        self.requests: list[tuple[str, str]] = []  # (method, path and query) of every request
        self.unserved: set[str] = set()  # resource plurals answered 404 (a CRD not installed)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._watches: set[socket.socket] = set()
        self._connections: set[socket.socket] = set()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def start(self) -> KubeApiServer:
        httpd = _HTTPServer(("127.0.0.1", self.port), _Handler)
        httpd.api = self
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.tls.server_cert, self.tls.server_key)
            httpd.tls_context = context
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, name="kube-apiserver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open watch (the objects stay in the store)."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for sock in connections:  # a restarted server has no old connections either
            _cut(sock)
        self.drop_watches()
        if self._thread is not None:
            self._thread.join(5)

    def restart(self, pause: float = 0.0) -> None:
        self.stop()
        time.sleep(pause)
        self.start()

    def close(self) -> None:
        self.stop()
        self.store.close()

    def drop_watches(self) -> int:
        """Cut every open watch connection abruptly (no end-of-stream); how many were cut."""
        with self._lock:
            sockets = list(self._watches)
            self._watches.clear()
        for sock in sockets:
            _cut(sock)
        return len(sockets)

    def compact(self) -> int:
        return self.store.compact()

    def count(self, method: str, path_prefix: str) -> int:
        with self._lock:
            return sum(1 for m, p in self.requests if m == method and p.startswith(path_prefix))

    def _register(self, sock: socket.socket, add: bool, watch: bool = True) -> None:
        with self._lock:
            sockets = self._watches if watch else self._connections
            if add:
                sockets.add(sock)
            else:
                sockets.discard(sock)


def _cut(sock: socket.socket) -> None:
    """Shut a connection down under whoever is using it (their next read or write fails)."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    api: KubeApiServer
    tls_context: ssl.SSLContext | None = None

    def get_request(self) -> tuple[Any, Any]:
        conn, addr = super().get_request()
        if self.tls_context is not None:
            # The handshake runs in the handler's thread, so a slow client blocks only itself.
            conn = self.tls_context.wrap_socket(
                conn, server_side=True, do_handshake_on_connect=False
            )
        return conn, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up or failed its TLS handshake: normal for a server, not a traceback.
        log.debug("kube-apiserver: connection from %s ended badly", client_address, exc_info=True)
        self.api._register(request, False, watch=False)  # setup() may not have reached finish()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        self.request.settimeout(30)
        self.server.api._register(self.request, True, watch=False)
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()  # a failure ends this connection (handle_error)
        super().setup()

    def finish(self) -> None:
        self.server.api._register(self.request, False, watch=False)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("kube-apiserver: " + format, *args)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    # --- Dispatch ---------------------------------------------------------------------------------

    def _serve(self, method: str) -> None:
        api = self.server.api
        with api._lock:
            api.requests.append((method, self.path))
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            body = self._body()
            if path == "/version" and method == "GET":  # public, as kube-apiserver's
                return self._send(200, discovery(path, self._address()))
            identity = self._authenticate()
            document = discovery(path, self._address())
            if document is not None and method == "GET":
                return self._send(200, document)
            route = routes.route(path)
            if route.resource.plural in api.unserved:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            verb = routes.verb(method, route, query)
            self._authorize(identity, verb, route)
            self._perform(method, verb, route, query, body)
        except ApiError as e:
            self._send(e.code, e.status())

    def _address(self) -> str:
        return f"127.0.0.1:{self.server.api.port}"

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ApiError(413, "RequestEntityTooLarge", "request body too large")
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as e:
            raise bad_request(f"invalid JSON body: {e}") from None

    def _authenticate(self) -> str:
        tokens = self.server.api.tokens
        if tokens is None:
            return "admin"
        # As kube-apiserver's bearer token authenticator: the scheme in any case.
        scheme, _, token = self.headers.get("Authorization", "").strip().partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        if token not in tokens:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        return token

    def _authorize(self, token: str, verb: str, route: routes.Route) -> None:
        tokens = self.server.api.tokens
        if tokens is None:
            return
        identity = tokens[token]
        plural = route.resource.plural + (f"/{route.subresource}" if route.subresource else "")
        if identity.allows(verb, plural):
            return
        scope = (
            f'in the namespace "{route.namespace}"' if route.namespace else "at the cluster scope"
        )
        name = f'{plural} "{route.name}"' if route.name else plural
        raise ApiError(
            403,
            "Forbidden",
            f'{name} is forbidden: User "{identity.user}" cannot {verb} resource "{plural}" in '
            f'API group "{route.resource.group}" {scope}',
            {
                "name": route.name or "",
                "group": route.resource.group,
                "kind": route.resource.plural,
            },
        )

    def _perform(
        self, method: str, verb: str, route: routes.Route, query: dict[str, str], body: Any
    ) -> None:
        store = self.server.api.store
        resource, name = route.resource, route.name
        namespace = route.namespace or ""
        if verb == "watch":
            return self._watch(route, query)
        if verb == "list":
            return self._list(route, query)
        assert name is not None or verb == "create"
        if verb == "get":
            return self._send(200, store.get(resource, namespace, name or ""))
        if verb == "create":
            if not isinstance(body, dict):
                raise bad_request("the body of a create must be an object")
            given = (body.get("metadata") or {}).get("namespace")
            if resource.namespaced and given and given != namespace:
                raise bad_request(
                    "the namespace of the provided object does not match the "
                    "namespace sent on the request"
                )
            return self._send(201, store.create(resource, namespace, body))
        assert name is not None
        if verb == "update":
            if not isinstance(body, dict):
                raise bad_request("the body of an update must be an object")
            return self._send(
                200, store.replace(resource, namespace, name, body, route.subresource)
            )
        if verb == "patch":
            kind = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            if kind not in (MERGE_PATCH, STRATEGIC_MERGE_PATCH):
                raise ApiError(
                    415, "UnsupportedMediaType", f"the patch type {kind!r} is not supported"
                )
            current = store.get(resource, namespace, name)
            patched = merge_patch(current, body, strategic=kind == STRATEGIC_MERGE_PATCH)
            if not isinstance(patched, dict):
                raise bad_request("the patch must leave an object")
            if not (isinstance(body, dict) and "resourceVersion" in (body.get("metadata") or {})):
                patched.setdefault("metadata", {}).pop("resourceVersion", None)
            return self._send(
                200, store.replace(resource, namespace, name, patched, route.subresource)
            )
        if verb == "delete":
            grace = query.get("gracePeriodSeconds")
            if isinstance(body, dict) and body.get("gracePeriodSeconds") is not None:
                grace = body["gracePeriodSeconds"]
            seconds = float(grace) if grace is not None else None
            return self._send(200, store.delete(resource, namespace, name, seconds))
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")

    def _list(self, route: routes.Route, query: dict[str, str]) -> None:
        store, resource = self.server.api.store, route.resource
        limit = routes.integer(query.get("limit"), "limit")
        match = routes.matcher(route, query)
        items, rv, token, remaining = store.list(
            resource, route.namespace, match, limit, query.get("continue") or None
        )
        if resource.builtin:
            for item in items:
                item.pop("kind", None)
                item.pop("apiVersion", None)
        meta: dict[str, Any] = {"resourceVersion": rv}
        if token:
            meta["continue"] = token
        if remaining is not None:
            meta["remainingItemCount"] = remaining
        body = {
            "kind": f"{resource.kind}List",
            "apiVersion": resource.api_version,
            "metadata": meta,
            "items": items,
        }
        self._send(200, body)

    # --- Watch ------------------------------------------------------------------------------------

    def _watch(self, route: routes.Route, query: dict[str, str]) -> None:
        api, store, resource = self.server.api, self.server.api.store, route.resource
        match = routes.matcher(route, query)
        timeout = query.get("timeoutSeconds")
        duration = (
            float(routes.integer(timeout, "timeoutSeconds") or 0)
            if timeout
            else random.uniform(api.min_request_timeout, 2 * api.min_request_timeout)  # noqa: S311
        )
        bookmarks = query.get("allowWatchBookmarks") in routes.TRUE
        rv_text = query.get("resourceVersion") or ""
        initial: list[dict[str, Any]] = []
        error: ApiError | None = None
        if rv_text in ("", "0"):
            with store.cond:
                cursor = store.rv
                initial, _, _, _ = store.list(resource, route.namespace, match)
        else:
            cursor = routes.integer(rv_text, "resourceVersion") or 0
            if cursor < store.compacted:
                error = expired(f"too old resource version: {cursor} ({store.compacted})")
                if api.gone_as_http:
                    raise error
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        api._register(self.connection, True)
        try:
            self._stream(route, match, cursor, initial, error, duration, bookmarks)
        except (OSError, ValueError, AttributeError) as e:  # the client went, or was cut off
            log.debug("watch ended: %s", e)
            self.close_connection = True
        finally:
            api._register(self.connection, False)

    def _stream(
        self,
        route: routes.Route,
        match: Any,
        cursor: int,
        initial: list[dict[str, Any]],
        error: ApiError | None,
        duration: float,
        bookmarks: bool,
    ) -> None:
        api, store, resource = self.server.api, self.server.api.store, route.resource
        for obj in initial:
            self._event("ADDED", resource, obj)
        deadline = time.monotonic() + duration
        last_bookmark = time.monotonic()
        while error is None and time.monotonic() < deadline and api.running:
            try:
                events, new_cursor = store.events_after(cursor)
            except ApiError as e:  # this reader fell behind a compaction
                error = e
                break
            for event in events:
                if event.resource is not resource:
                    continue
                old = event.old is not None and match(event.old)
                new = match(event.obj)
                kind = event.type
                if kind == "MODIFIED" and old != new:  # entering or leaving the selection
                    kind = "ADDED" if new else "DELETED"
                if new if kind != "DELETED" else (new or old):
                    self._event(kind, resource, event.obj)
            cursor = new_cursor
            now = time.monotonic()
            if bookmarks and now - last_bookmark >= api.bookmark_interval:
                self._event("BOOKMARK", resource, {"metadata": {"resourceVersion": str(cursor)}})
                last_bookmark = now
            store.wait(cursor, max(0.0, min(0.5, deadline - now)))
        if error is not None:
            self._chunk({"type": "ERROR", "object": error.status()})
        self.wfile.write(b"0\r\n\r\n")  # end of stream, cleanly

    def _event(self, kind: str, resource: Resource, obj: dict[str, Any]) -> None:
        obj = {"kind": resource.kind, "apiVersion": resource.api_version, **obj}
        self._chunk({"type": kind, "object": obj})

    def _chunk(self, data: dict[str, Any]) -> None:
        line = json.dumps(data).encode() + b"\n"
        self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def ensure_namespace(store: KubeStore, name: str, labels: dict[str, str] | None = None) -> None:
    """Create namespace `name` if it does not exist (a test convenience)."""
    try:
        store.get(NAMESPACES, "", name)
    except ApiError:
        store.create(NAMESPACES, "", {"metadata": {"name": name, "labels": labels or {}}})
