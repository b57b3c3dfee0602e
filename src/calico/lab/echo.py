"""A stand-in server for lab tests, and probes that show what NAT did to a connection.

:class:`EchoServer` runs in a namespace (stopped by PID) and answers every HTTP GET with
``<token> peer=<ip> local=<ip>``, the connection's addresses as the server's socket sees them
(after any NAT on the way), and every UDP datagram to the same address and port with ``<token>
peer=<ip>``. The random token proves the answer came from this server and nothing else. Tests
use it as a metadata server, as a service in a VM and as a host outside the compute host.
"""

from __future__ import annotations

import secrets
import select
import subprocess
import sys
import tempfile
from types import TracebackType
from typing import IO, NamedTuple

from calico.lab.netns import NetNS

FETCH_TIMEOUT = 2  # seconds curl waits for one answer
START_TIMEOUT = 30  # seconds the server may take to bind, on a busy machine

SERVER_SCRIPT = r"""
import http.server, socket, socketserver, sys, threading

addr, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        local = self.connection.getsockname()[0]
        body = f"{token} peer={self.client_address[0]} local={local}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

def udp_echo(sock):
    while True:
        _, peer = sock.recvfrom(2048)
        sock.sendto(f"{token} peer={peer[0]}\n".encode(), peer)

class Server(http.server.ThreadingHTTPServer):
    def server_bind(self):
        # Not HTTPServer's: it looks the address up in DNS, which no namespace here has.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = addr, port

server = Server((addr, port), Handler)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind((addr, port))
threading.Thread(target=udp_echo, args=(udp,), daemon=True).start()
print("listening", flush=True)
server.serve_forever()
"""


class Reply(NamedTuple):
    """What a client learnt from one fetch: the server's token, the peer and local addresses
    the server saw, and the address the client's own socket was connected to."""

    token: str
    peer: str
    local: str
    remote: str


class EchoServer:
    """A :data:`SERVER_SCRIPT` process in a namespace, stopped by PID on exit."""

    def __init__(self, ns: NetNS, addr: str, port: int):
        self.ns = ns
        self.addr = addr
        self.port = port
        self.token = f"tok-{secrets.token_hex(8)}"
        self.proc: subprocess.Popen[bytes] | None = None
        # stderr goes to a file, not a pipe: nobody reads it while the server runs, and a
        # full pipe would block the server.
        self.stderr: IO[bytes] = tempfile.TemporaryFile()

    def __enter__(self) -> EchoServer:
        argv = [sys.executable, "-c", SERVER_SCRIPT, self.addr, str(self.port), self.token]
        self.proc = self.ns.popen(argv, stdout=subprocess.PIPE, stderr=self.stderr)
        assert self.proc.stdout is not None
        # The script prints one line once bound; wait for it (bounded) before any probe.
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT)
        line = self.proc.stdout.readline() if ready else b""
        if line.strip() != b"listening":
            self._stop()
            self.stderr.seek(0)
            stderr = self.stderr.read().decode(errors="replace")
            self.stderr.close()
            raise RuntimeError(f"echo server on {self.addr}:{self.port} did not start: {stderr}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()
        self.stderr.close()

    def _stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def fetch(self, src: NetNS, addr: str, port: int | None = None) -> Reply | None:
        """GET http://addr:port/ from ``src``; the reply if this server answered, else None."""
        url = f"http://{addr}:{port or self.port}/"
        argv = ["curl", "-s", "--noproxy", "*", "-m", str(FETCH_TIMEOUT)]
        argv += ["-w", "remote=%{remote_ip}", url]
        proc = src.run(argv, check=False, timeout=FETCH_TIMEOUT + 10)
        fields = proc.stdout.split()
        if proc.returncode != 0 or not fields or fields[0] != self.token:
            return None
        values = dict(field.partition("=")[::2] for field in fields[1:])
        return Reply(fields[0], values["peer"], values["local"], values["remote"])

    def peer_seen(self, src: NetNS, addr: str, port: int | None = None) -> str | None:
        """GET from ``src`` as :meth:`fetch`; the client address this server saw, or None."""
        reply = self.fetch(src, addr, port)
        return reply.peer if reply else None

    def udp_exchange(self, src: NetNS, addr: str, sport: int) -> str | None:
        """One datagram from ``src``:sport to addr:port; the peer address this server saw, or
        None if it did not answer. A fixed source port keeps one conntrack entry alive."""
        argv = ["nc", "-4", "-u", "-w1", "-p", str(sport), addr, str(self.port)]
        proc = src.run(argv, check=False, input=secrets.token_hex(4) + "\n", timeout=15)
        fields = proc.stdout.split()
        if len(fields) != 2 or fields[0] != self.token:
            return None
        return fields[1].removeprefix("peer=")


def ping_reply_from(src: NetNS, addr: str) -> str | None:
    """Ping ``addr`` once from ``src``; the source address of the echo reply, or None."""
    proc = src.run(["ping", "-4", "-n", "-c1", "-W1", addr], check=False, timeout=15)
    for line in proc.stdout.splitlines():
        if " bytes from " in line:
            return line.split(" bytes from ")[1].split(":")[0]
    return None
