"""A stand-in for the usage-report server, on loopback, for tests (this lab has no internet).

It records each request's path and query parameters and answers with a JSON body of the
test's choosing (e.g. `{"usage_warning": "..."}`).
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PATH = "/UsageCheck/calicoVersionCheck"


@dataclass(frozen=True)
class UsageRequest:
    path: str
    # Each query parameter's values, in order (a parameter sent twice has two).
    query: dict[str, list[str]]

    def param(self, name: str) -> str:
        """The parameter's only value; fails if it is missing or repeated."""
        values = self.query.get(name, [])
        assert len(values) == 1, f"query parameter {name!r}: {values}"
        return values[0]


class FakeUsageServer:
    def __init__(self, reply: Any = None, host: str = "127.0.0.1"):
        self.reply: Any = {} if reply is None else reply
        self.requests: list[UsageRequest] = []
        self._cond = threading.Condition()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the http.server API names it so
                parts = urllib.parse.urlsplit(self.path)
                request = UsageRequest(parts.path, urllib.parse.parse_qs(parts.query))
                body = json.dumps(server.reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                with server._cond:
                    server.requests.append(request)
                    server._cond.notify_all()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output quiet

        self._httpd = ThreadingHTTPServer((host, 0), Handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="fake-usage-server", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{PATH}"

    def start(self) -> FakeUsageServer:
        self._thread.start()
        return self

    def wait_for(self, count: int = 1, timeout: float = 30.0) -> list[UsageRequest]:
        """Wait until at least `count` requests have arrived; all of them so far."""
        with self._cond:
            arrived = self._cond.wait_for(lambda: len(self.requests) >= count, timeout)
            assert arrived, f"{len(self.requests)} usage reports within {timeout} s, not {count}"
            return list(self.requests)

    def close(self) -> None:
        if self._thread.is_alive():  # shutdown() would wait forever for a loop never started
            self._httpd.shutdown()
            self._thread.join(5)
        self._httpd.server_close()

    def __enter__(self) -> FakeUsageServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
