"""MetadataAddr given as a host name (the seed allows it): resolved in a thread of its own,
now and then, so that a DNS server that does not answer never stalls the dataplane loop
(docs/design/dataplane.md, "Interface settings and MetadataAddr")."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable

from calico.common.quoting import quoted

log = logging.getLogger("calico.felix.dataplane")

# How often a MetadataAddr host name is resolved again: while it does not resolve, and after
# that to follow a change of address (Felix 1.4 resolved it once, at start).
RESOLVE_RETRY_SECS = 10.0
RESOLVE_REFRESH_SECS = 300.0
RESOLVE_FIRST_WAIT_SECS = 2.0


def resolve_ipv4(name: str) -> str | None:
    """The first IPv4 address of host `name`, or None (logged) if it does not resolve now."""
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        log.error(
            "MetadataAddr %s does not resolve to an IPv4 address (%s); no metadata NAT until it "
            "does (retried every %.0f s)",
            quoted(name),
            e,
            RESOLVE_RETRY_SECS,
        )
        return None
    return str(infos[0][4][0])


class MetadataResolver:
    """Resolves a MetadataAddr host name in a thread of its own, now and then: a DNS server
    that does not answer must never stall the dataplane loop. `address` is the latest answer
    (None until one came); a failure keeps the last good one."""

    def __init__(self, name: str, resolve: Callable[[str], str | None] = resolve_ipv4) -> None:
        self.name = name
        self._resolve = resolve
        self.address: str | None = None
        self._first = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metadata-resolver", daemon=True)
        self._thread.start()

    def wait_first(self, timeout: float) -> str | None:
        self._first.wait(timeout)
        return self.address

    def _run(self) -> None:
        while True:
            address = self._resolve(self.name)
            if address is not None:
                self.address = address  # one reference assignment: atomic for the reader
            self._first.set()
            time.sleep(RESOLVE_RETRY_SECS if self.address is None else RESOLVE_REFRESH_SECS)
