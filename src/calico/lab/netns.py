"""Network namespaces that are created for a test or demo and always deleted afterwards.

Everything goes through iproute2's ``ip`` command and happens inside the namespaces: veth
pairs are created directly inside one namespace with the peer placed in the other, so the
root namespace (the host's real network) is never touched.

Names start with PREFIX so leftovers from a crashed run are recognisable and can be swept
by :func:`cleanup_leftovers`.  Several test sessions may run on one machine at once, so
each namespace also gets an owner file in OWNER_DIR naming the process that created it;
the sweep spares namespaces whose owner is another process that is still alive.
"""

from __future__ import annotations

import atexit
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

PREFIX = "calt-"
KILL_TIMEOUT = 5.0
# On /run (tmpfs), like /run/netns itself, so it is emptied by a reboot just as they are.
OWNER_DIR = Path("/run/calico-lab-netns")

# Namespaces this process created and has not deleted yet (for the atexit safety net and
# for the test session's leak check).
_live: dict[str, NetNS] = {}


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def list_namespaces() -> list[str]:
    """Names of all named network namespaces (``ip netns list``)."""
    # Lines look like "calt-1a2b3c (id: 4)" or just "calt-1a2b3c".
    lines = _ip("netns", "list").stdout.splitlines()
    return [line.split()[0] for line in lines if line.strip()]


def live_namespaces() -> list[str]:
    """Namespaces created by this process and not deleted yet."""
    return sorted(_live)


def _process_identity(pid: int) -> str | None:
    """``"<pid> <start time>"``, or None if pid is not running.

    The start time (field 22 of /proc/<pid>/stat) tells a live owner from an unrelated
    process that happens to have been given a dead owner's PID.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces, so split after its ")".
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else f"{pid} {fields[19]}"


def _owned_by_other_live_process(name: str) -> bool:
    try:
        owner = (OWNER_DIR / name).read_text().strip()
    except FileNotFoundError:
        return False
    pid = int(owner.split()[0])
    return pid != os.getpid() and _process_identity(pid) == owner


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class NetNS:
    """A named network namespace with ``lo`` up, plus the processes started inside it."""

    PREFIX = PREFIX

    def __init__(self, name: str | None = None):
        self.name = name or f"{PREFIX}{secrets.token_hex(3)}"
        self._procs: list[subprocess.Popen[Any]] = []
        # Only a namespace this object created is ours to empty of processes.
        self._created = False

    def __repr__(self) -> str:
        return f"NetNS({self.name!r})"

    # -- lifecycle -----------------------------------------------------------------------

    def create(self) -> NetNS:
        """``ip netns add`` (fails if the name exists: never adopt someone else's)."""
        _ip("netns", "add", self.name)
        self._created = True
        _live[self.name] = self
        try:
            OWNER_DIR.mkdir(mode=0o700, exist_ok=True)
            (OWNER_DIR / self.name).write_text(f"{_process_identity(os.getpid())}\n")
            # A fresh namespace has lo down; much software assumes 127.0.0.1 works.
            self.set_up("lo")
        except BaseException:
            self.delete()
            raise
        return self

    def exists(self) -> bool:
        return self.name in list_namespaces()

    def delete(self) -> None:
        """Stop our processes, then ``ip netns delete``.  Idempotent; quiet if gone."""
        self._stop_processes()
        proc = _ip("netns", "delete", self.name, check=False)
        _live.pop(self.name, None)
        (OWNER_DIR / self.name).unlink(missing_ok=True)
        if proc.returncode != 0 and self.exists():
            raise RuntimeError(f"ip netns delete {self.name}: {proc.stderr.strip()}")

    def __enter__(self) -> NetNS:
        return self if self._created else self.create()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.delete()

    # -- processes -----------------------------------------------------------------------

    def _exec(self, argv: Sequence[str]) -> list[str]:
        # `ip netns exec` execs argv in place, so the PID we get is argv's own PID.
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, argv: Sequence[str], check: bool = True, **kw: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run argv inside the namespace; output is captured as text unless told otherwise."""
        if "stdout" not in kw and "stderr" not in kw:
            kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        proc = subprocess.run(self._exec(argv), check=False, **kw)
        if check and proc.returncode != 0:
            err = subprocess.CalledProcessError(proc.returncode, argv, proc.stdout, proc.stderr)
            err.add_note(f"in netns {self.name}; stderr: {proc.stderr!r}")
            raise err
        return proc

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start argv inside the namespace; delete() will stop it."""
        proc = subprocess.Popen(self._exec(argv), **kw)
        self._procs.append(proc)
        return proc

    def _pids_inside(self) -> list[int]:
        """PIDs of processes living in this namespace (none if it is already gone)."""
        proc = _ip("netns", "pids", self.name, check=False)
        return [int(pid) for pid in proc.stdout.split()] if proc.returncode == 0 else []

    def _stop_processes(self) -> None:
        """SIGTERM, wait up to KILL_TIMEOUT, then SIGKILL.

        Besides what popen() started, this also stops any process still inside a
        namespace that this object created: such processes can only have been started
        in it by us (e.g. a daemon that forked away from a popen()ed parent), and while
        one lives the kernel keeps the namespace alive after ``ip netns delete``.
        """
        procs, self._procs = self._procs, []
        running = [p for p in procs if p.poll() is None]
        strays = self._pids_inside() if self._created else []
        if not running and not strays:
            return
        for p in running:
            p.terminate()
        for pid in strays:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + KILL_TIMEOUT
        while any(p.poll() is None for p in running) or (self._created and self._pids_inside()):
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        for p in running:
            if p.poll() is None:
                p.kill()
                p.wait()
        for pid in self._pids_inside() if self._created else []:
            _signal(pid, signal.SIGKILL)

    # -- links and addresses ---------------------------------------------------------------

    def add_veth_to(self, other: NetNS, self_if: str, other_if: str) -> None:
        """A veth pair: ``self_if`` here, ``other_if`` in ``other`` (both left down).

        Made inside this namespace with the peer moved straight into ``other``, so
        neither end ever exists in the root namespace.
        """
        _ip(
            "-n", self.name, "link", "add", self_if, "type", "veth",
            "peer", "name", other_if, "netns", other.name,
        )  # fmt: skip

    def set_up(self, ifname: str) -> None:
        _ip("-n", self.name, "link", "set", ifname, "up")

    def add_addr(self, ifname: str, cidr: str) -> None:
        _ip("-n", self.name, "addr", "add", cidr, "dev", ifname)


def cleanup_leftovers(prefix: str = PREFIX) -> list[str]:
    """Delete leftover namespaces whose names start with ``prefix``; return their names.

    Spared: namespaces whose owner file names another process that is still alive (a
    concurrent test session or demo).  Namespaces this process created are deleted
    normally, their processes stopped.  Other leftovers (from a crashed run) are only
    unlinked: we did not start whatever may still run in them, so we leave it alone.
    """
    if not prefix:
        raise ValueError("an empty prefix would delete every namespace on the host")
    removed = []
    for name in list_namespaces():
        if name.startswith(prefix) and not _owned_by_other_live_process(name):
            (_live.get(name) or NetNS(name)).delete()
            removed.append(name)
    return removed


@atexit.register
def _delete_forgotten() -> None:
    """Safety net: delete namespaces this process created and never deleted."""
    for ns in list(_live.values()):
        try:
            ns.delete()
        except Exception:  # noqa: S110 - best effort at interpreter exit
            pass
