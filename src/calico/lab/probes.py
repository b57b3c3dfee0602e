"""Connectivity probes between lab namespaces, and the nodes they run between.

Probes (:func:`ping`, :func:`tcp_ok`, :func:`udp_ok`, :func:`probe`) run real tools (``ping``,
netcat-openbsd ``nc``) inside the namespaces, each exchange carrying random tokens so a
success cannot be mistaken for anything else. Every process they start is stopped by PID.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from calico.lab.netns import NetNS

PROBE_TIMEOUT = 1.0


class _HasNetns(Protocol):
    ns: NetNS


class Node:
    """Something with a namespace and addresses (a VM or the external host)."""

    ns: NetNS
    ip: str
    ip6: str | None

    @property
    def name(self) -> str:
        return self.ns.name

    def addr(self, v6: bool = False) -> str:
        if not v6:
            return self.ip
        if self.ip6 is None:
            raise ValueError(f"{self!r} has no IPv6 address")
        return self.ip6

    def run(self, argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[Any]:
        return self.ns.run(argv, check=check)


NsLike = NetNS | _HasNetns | str


def _ns_name(x: NsLike) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, NetNS):
        return x.name
    return x.ns.name


def _ns_exec(ns: NsLike, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", _ns_name(ns), *argv]


# -- probes ----------------------------------------------------------------------------------


def _dst_addr(dst: Node | str, v6: bool) -> str:
    return dst if isinstance(dst, str) else dst.addr(v6)


def ping(src: NsLike, dst: Node | str, v6: bool = False, timeout: float = PROBE_TIMEOUT) -> bool:
    """One ICMP echo from ``src``'s namespace to ``dst`` (a node or an address)."""
    addr = _dst_addr(dst, v6)
    argv = ["ping", "-6" if v6 or ":" in addr else "-4", "-n", "-q", "-c1"]
    argv += [f"-W{max(1, round(timeout))}", addr]
    proc = subprocess.run(
        _ns_exec(src, argv), capture_output=True, text=True, check=False, timeout=timeout + 10
    )
    return proc.returncode == 0


def _stop(proc: subprocess.Popen[Any]) -> None:
    """Stop a probe process by its PID (SIGTERM, then SIGKILL)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_listening(ns: NsLike, proto: str, addr: str, port: int, timeout: float = 3.0) -> None:
    flag = "-Hltn" if proto == "tcp" else "-Hlun"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            _ns_exec(ns, ["ss", flag, f"sport = :{port}"]),
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        if addr in out:  # not another family's listener on the same port
            return
        time.sleep(0.02)
    raise RuntimeError(f"nc never listened on {proto}/{port} in {_ns_name(ns)}")


@contextlib.contextmanager
def _nc_server(
    dst: Node, argv: list[str], stdin_data: bytes, proto: str, addr: str, port: int
) -> Any:
    """Run an ``nc`` listener in dst's namespace; yield (process, output file path)."""
    with tempfile.TemporaryDirectory(prefix="calico-probe-") as tmp:
        out_path = Path(tmp) / "server.out"
        in_path = Path(tmp) / "server.in"
        in_path.write_bytes(stdin_data)
        with open(in_path, "rb") as stdin, open(out_path, "wb") as stdout:
            proc = subprocess.Popen(
                _ns_exec(dst.ns, argv), stdin=stdin, stdout=stdout, stderr=subprocess.DEVNULL
            )
        try:
            _wait_listening(dst.ns, proto, addr, port)
            yield proc, out_path
        finally:
            _stop(proc)


def tcp_ok(
    src: NsLike, dst: Node, port: int, v6: bool = False, timeout: float = PROBE_TIMEOUT
) -> bool:
    """A TCP connection from ``src`` to ``dst``:port, each side sending a random token.

    True only if the client received the server's token and the server the client's.
    """
    addr = dst.addr(v6)
    family = "-6" if v6 else "-4"
    server_token = f"srv-{secrets.token_hex(8)}\n".encode()
    client_token = f"cli-{secrets.token_hex(8)}\n".encode()
    # -N: shut the socket down for writing after stdin's EOF, so both sides see EOF.
    server_argv = ["nc", family, "-N", "-l", addr, str(port)]
    with _nc_server(dst, server_argv, server_token, "tcp", addr, port) as (server, out_path):
        wait = max(1, round(timeout))
        client = subprocess.run(
            _ns_exec(src, ["nc", family, "-N", f"-w{wait}", addr, str(port)]),
            input=client_token,
            capture_output=True,
            check=False,
            timeout=timeout + 10,
        )
        if server_token not in client.stdout:
            return False
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            if client_token in out_path.read_bytes():
                return True
            if server.poll() is not None:
                break
            time.sleep(0.01)
        return client_token in out_path.read_bytes()


def udp_ok(
    src: NsLike, dst: Node, port: int, v6: bool = False, timeout: float = PROBE_TIMEOUT
) -> bool:
    """A UDP datagram carrying a random token from ``src`` to ``dst``:port; True if the
    listener in dst's namespace received the token within ``timeout``."""
    addr = dst.addr(v6)
    family = "-6" if v6 else "-4"
    token = f"udp-{secrets.token_hex(8)}\n".encode()
    server_argv = ["nc", family, "-u", "-l", addr, str(port)]
    with _nc_server(dst, server_argv, b"", "udp", addr, port) as (_server, out_path):
        wait = max(1, round(timeout)) + 1
        client = subprocess.Popen(
            _ns_exec(src, ["nc", family, "-u", f"-w{wait}", addr, str(port)]),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert client.stdin is not None
            client.stdin.write(token)
            client.stdin.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if token in out_path.read_bytes():
                    return True
                time.sleep(0.01)
            return token in out_path.read_bytes()
        finally:
            _stop(client)


def probe(src: NsLike, dst: Node, proto: str, v6: bool = False, port: int | None = None) -> bool:
    """Dispatch: ``proto`` is ``icmp``, ``tcp`` or ``udp`` (tcp/udp need ``port``)."""
    if proto == "icmp":
        return ping(src, dst, v6=v6)
    if port is None:
        raise ValueError(f"{proto} needs a port")
    if proto == "tcp":
        return tcp_ok(src, dst, port, v6=v6)
    if proto == "udp":
        return udp_ok(src, dst, port, v6=v6)
    raise ValueError(f"unknown protocol {proto!r}")


def wait_until(predicate: Any, timeout: float, interval: float = 0.2) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout`` seconds pass; return the last."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
