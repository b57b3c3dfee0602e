"""Running the agent's one dnsmasq (the configuration it runs with is calico.dhcp.dnsmasq's), and
stopping what an earlier run of the agent left behind.

dnsmasq runs under a keeper process that makes it die with the agent (calico.dhcp.keeper): the
agent's child is the keeper, which passes SIGHUP on and stops dnsmasq on SIGTERM. Changing
dnsmasq's interfaces or ranges needs a restart; a new host entry or changed options only a
SIGHUP (dnsmasq re-reads the hosts and options files). A host entry that goes away or changes
also restarts dnsmasq: leases live only in its memory (`--leasefile-ro`), so a restart forgets
the old owner's lease and the address can go to its new owner at once (felix#233).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterable, Sequence
from enum import StrEnum
from pathlib import Path

from calico.common.quoting import quoted
from calico.dhcp.dnsmasq import DnsmasqConfig, DnsmasqFiles, command_line

log = logging.getLogger(__name__)

STOP_TIMEOUT = 5.0


class Action(StrEnum):
    NONE = "none"
    START = "start"
    RESTART = "restart"
    RELOAD = "reload"  # SIGHUP: re-read the hosts and options files
    STOP = "stop"


def plan(running: DnsmasqConfig | None, wanted: DnsmasqConfig) -> Action:
    """What to do to get from the running configuration (None: not running) to the wanted one."""
    if wanted.empty:
        return Action.NONE if running is None else Action.STOP
    if running is None:
        return Action.START
    if (running.interfaces, running.ranges, running.enable_ra) != (
        wanted.interfaces,
        wanted.ranges,
        wanted.enable_ra,
    ):
        return Action.RESTART
    if set(running.hosts) - set(wanted.hosts):
        return Action.RESTART  # forget the removed or changed entry's lease (module docstring)
    if (running.hosts, running.options) != (wanted.hosts, wanted.options):
        return Action.RELOAD
    return Action.NONE


def _write_atomically(path: Path, lines: Iterable[str]) -> None:
    """Write via a temporary file and rename, so dnsmasq never reads half a file. World-readable:
    dnsmasq re-reads it after dropping root privileges."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{line}\n" for line in lines))
    tmp.chmod(0o644)
    tmp.replace(path)


class Dnsmasq:
    """The one dnsmasq of the agent, run under its keeper (calico.dhcp.keeper), so that it dies
    with the agent; the agent's child process is the keeper."""

    def __init__(self, state_dir: Path, binary: str = "dnsmasq", log_dhcp: bool = False):
        self.files = DnsmasqFiles(state_dir)
        self.binary = binary
        self.log_dhcp = log_dhcp
        self.running: DnsmasqConfig | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        """The keeper's PID (dnsmasq's parent); dnsmasq's own is in its PID file."""
        return self._proc.pid if self._proc is not None else None

    def apply(self, wanted: DnsmasqConfig) -> Action:
        """Bring dnsmasq to `wanted`; returns what was done."""
        if self.running is not None and not self.alive():
            status = self._proc.returncode if self._proc is not None else None
            log.warning(
                "dnsmasq (keeper PID %s) exited with %s; starting it again", self.pid, status
            )
            self._reap()
        action = plan(self.running, wanted)
        if action is Action.NONE:
            return action
        log.info("dnsmasq: %s", action)
        if action is Action.STOP:
            self.stop()
            return action
        _write_atomically(self.files.hosts, wanted.hosts)
        _write_atomically(self.files.options, wanted.options)
        if action is Action.RELOAD:
            assert self._proc is not None
            self._proc.send_signal(signal.SIGHUP)  # the keeper passes it on
        else:
            self.stop()
            self._start(wanted)
        self.running = wanted
        return action

    def _start(self, config: DnsmasqConfig) -> None:
        # Never two: whatever our PID file names (if it is really our dnsmasq) goes first.
        stop_leftovers(self.files, self.binary, scan=False)
        argv = command_line(config, self.files, self.binary, self.log_dhcp)
        log.info("Starting %s", " ".join(argv))
        # Its log lines go to our stderr, next to ours. Started from the agent's main thread:
        # the keeper's parent-death signal follows the thread that forked it.
        keeper = [sys.executable, "-m", "calico.dhcp.keeper", str(os.getpid()), "--", *argv]
        self._proc = subprocess.Popen(keeper, stdin=subprocess.DEVNULL)
        self.running = config
        self.starts += 1

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.poll()
        self._proc = None
        self.running = None

    def stop(self) -> None:
        """Stop dnsmasq: SIGTERM to its keeper, which stops dnsmasq (SIGKILL after its own
        timeout); should the keeper not exit in time, SIGKILL it and stop dnsmasq by its PID
        file."""
        proc, self._proc, self.running = self._proc, None, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT + 2)
            except subprocess.TimeoutExpired:
                log.warning("dnsmasq's keeper (PID %d) did not stop; killing it", proc.pid)
                proc.kill()
                proc.wait()
                stop_leftovers(self.files, self.binary, scan=False)
        self.files.pid.unlink(missing_ok=True)


# --- Leftovers of an earlier run --------------------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[:-1]


def is_our_dnsmasq(cmdline: Sequence[str], files: DnsmasqFiles, binary: str) -> bool:
    """Whether a command line is a dnsmasq this agent starts for this state directory: it names
    our PID file, and its program is our binary (also as the script of an interpreter, like
    the tests' stand-in)."""
    if f"--pid-file={files.pid}" not in cmdline[1:]:
        return False
    name = Path(binary).name
    return any(Path(arg).name == name for arg in cmdline[:2])


def _wait_gone(pidfd: int, timeout: float) -> bool:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(int(timeout * 1000)))


def _stop_pid(pid: int, files: DnsmasqFiles, binary: str, why: str) -> bool:
    """Stop `pid` if it is our dnsmasq (checked through a pidfd, so the PID cannot be reused
    between the check and the signal); whether it was."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        cmdline = _cmdline(pid)
        if not is_our_dnsmasq(cmdline, files, binary):
            if cmdline:
                log.info(
                    "PID %d (%s) is not our dnsmasq: left alone", pid, quoted(" ".join(cmdline))
                )
            return False
        log.warning("Stopping dnsmasq PID %d %s", pid, why)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                signal.pidfd_send_signal(pidfd, sig)
            except ProcessLookupError:
                return True
            if _wait_gone(pidfd, STOP_TIMEOUT):
                return True
        log.error("dnsmasq PID %d did not die", pid)
        return True
    finally:
        os.close(pidfd)


def stop_leftovers(files: DnsmasqFiles, binary: str, scan: bool = True) -> list[int]:
    """Stop any dnsmasq an earlier run of the agent left behind for this state directory (the
    agent was killed and so was its keeper, or the platform has no parent-death signal), before
    a new one starts; the PIDs stopped.

    The PID file names the last dnsmasq started here; `scan` also looks through /proc for any
    process whose command line is ours (a PID file deleted by hand). A process is signalled only
    after its /proc/<pid>/cmdline shows that it is our dnsmasq for this state directory.
    """
    stopped = []
    try:
        text = files.pid.read_text().strip()
    except OSError:
        text = ""
    if text.isdigit() and _stop_pid(int(text), files, binary, "left by an earlier run"):
        stopped.append(int(text))
    elif text:
        log.info("Ignoring PID file %s: %s", files.pid, quoted(text))
    if scan:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) not in stopped:
                pid = int(entry.name)
                if is_our_dnsmasq(_cmdline(pid), files, binary) and _stop_pid(
                    pid, files, binary, "found running for our state directory"
                ):
                    stopped.append(pid)
    files.pid.unlink(missing_ok=True)
    return stopped


def prepare_state_dir(state_dir: Path) -> None:
    """Create the state directory, traversable by the unprivileged user dnsmasq runs as."""
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o755)  # noqa: S103 - nothing secret in it; dnsmasq must read it
