"""Makes a loopback service of the root namespace reachable inside a lab network namespace.

Felix runs inside a namespace (it must never touch the root namespace's kernel state), but
the lab's etcd listens on the root namespace's loopback, which a namespace cannot see. The
relay listens on 127.0.0.1:<port> *inside* the namespace and forwards each connection to
127.0.0.1:<port> in the root namespace. It creates no links or routes anywhere: the
listening socket is opened while this thread is switched into the namespace (setns), and a
socket stays in the namespace it was created in.
"""

from __future__ import annotations

import ctypes
import logging
import os
import selectors
import socket
import threading

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def listen_in_namespace(netns: str, port: int) -> socket.socket:
    """A listening TCP socket on 127.0.0.1:port inside the named namespace."""
    with open("/proc/thread-self/ns/net", "rb") as own, open(f"/run/netns/{netns}", "rb") as ns:
        _setns(ns.fileno())
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(64)
        finally:
            _setns(own.fileno())
    return sock


def _pump(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    sel = selectors.DefaultSelector()
    sel.register(a, selectors.EVENT_READ, b)
    sel.register(b, selectors.EVENT_READ, a)
    try:
        while True:
            for key, _ in sel.select():
                source: socket.socket = key.fileobj  # type: ignore[assignment]
                data = source.recv(65536)
                if not data:
                    return
                key.data.sendall(data)
    except OSError:
        return
    finally:
        sel.close()
        a.close()
        b.close()


class LoopbackRelay:
    """127.0.0.1:port in `netns` -> 127.0.0.1:port in the root namespace, on threads."""

    def __init__(self, netns: str, port: int):
        self.netns = netns
        self.port = port
        self._listener = listen_in_namespace(netns, port)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name=f"relay-{netns}", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                inside, _ = self._listener.accept()
            except OSError:
                return
            try:
                outside = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                outside.settimeout(None)
            except OSError as e:
                log.debug("relay %s:%d: target refused: %s", self.netns, self.port, e)
                inside.close()
                continue
            threading.Thread(target=_pump, args=(inside, outside), daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        self._thread.join(5)

    def __enter__(self) -> LoopbackRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
