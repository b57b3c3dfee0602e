"""BIRD's control socket (what `birdc -s SOCKET` speaks), one connection per command.

The protocol (BIRD's doc/reply_codes; bgp.md §4.3): on connect BIRD greets with `0001 BIRD
<version> ready.`; each command is one line; each reply line starts with a four-digit code and
`-` (more lines follow) or ` ` (the last line), or with a space alone (a continuation of the
previous code). 0xxx: done; 1xxx: table entries; 2xxx: table headings; 8xxx: run-time errors;
9xxx: parse errors. Lines starting `+` are spontaneous printouts and are skipped.

No process is started: the daemon and `calico-bgp status` talk to the socket directly.
"""

from __future__ import annotations

import re
import socket

from calico.bgp.status import ReplyLine, parse_reply

MAX_REPLY = 64 * 1024 * 1024  # bytes; BIRD's longest answers (all routes) stay far below
_SAFE_PATH_RE = re.compile(r"/[A-Za-z0-9_./-]{1,1000}")


def safe_path(path: str) -> bool:
    """Whether `path` may be given to BIRD in a command (absolute, no quote or space)."""
    return _SAFE_PATH_RE.fullmatch(path) is not None


class BirdUnavailable(Exception):
    """BIRD's socket cannot be reached (BIRD is not running, or not yet)."""


class BirdError(Exception):
    """BIRD answered a command with an error (code 8xxx or 9xxx)."""

    def __init__(self, code: int, text: str):
        super().__init__(f"BIRD error {code:04d}: {text}")
        self.code = code
        self.text = text


class BirdControl:
    """Commands to one BIRD through its control socket."""

    def __init__(self, path: str, timeout: float = 5.0):
        self.path = path
        self.timeout = timeout

    def command(self, text: str) -> list[ReplyLine]:
        """Send one command; its reply. BirdUnavailable if BIRD cannot be reached or does not
        answer in time, BirdError if it refuses the command."""
        if "\n" in text:
            raise ValueError("a BIRD command is one line")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.path)
                greeting = self._read(sock)
                if not greeting or greeting[-1].code != 1:
                    raise BirdUnavailable(f"{self.path}: unexpected greeting {greeting!r}")
                sock.sendall(text.encode() + b"\n")
                reply = self._read(sock)
        except OSError as e:  # connection refused, no such file, timeout
            raise BirdUnavailable(f"{self.path}: {e}") from None
        last = reply[-1]
        if last.code >= 8000:
            raise BirdError(last.code, last.text)
        return reply

    def _read(self, sock: socket.socket) -> list[ReplyLine]:
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise BirdUnavailable(f"{self.path}: BIRD closed the connection")
            data += chunk
            if len(data) > MAX_REPLY:
                raise BirdUnavailable(f"{self.path}: reply longer than {MAX_REPLY} bytes")
            if b"\n" in chunk:
                lines, complete = parse_reply(data)
                if complete:
                    return lines

    def configure(self, config_path: str) -> str:
        """Reload BIRD from `config_path`; BIRD's last reply line ("Reconfigured", or that a
        reconfiguration is in progress or queued)."""
        if not safe_path(config_path):
            raise ValueError(f"unsafe configuration path {config_path!r}")
        return self.command(f'configure "{config_path}"')[-1].text

    def show_protocols(self) -> list[ReplyLine]:
        return self.command("show protocols all")

    def version(self) -> str:
        """BIRD's version line from `show status` (e.g. "BIRD 2.0.12")."""
        reply = self.command("show status")
        return reply[0].text if reply else ""
