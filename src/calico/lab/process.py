"""A long-running lab daemon (calico-felix, calico-bgp) in a namespace, its stdout and stderr
captured to a file: read the output, wait for a line, stop the daemon; and the one way the lab
stops a process it started (`end_process`)."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from calico.lab.netns import NetNS

STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL


def end_process(
    proc: subprocess.Popen[bytes],
    signum: signal.Signals = signal.SIGTERM,
    timeout: float = STOP_TIMEOUT,
) -> int:
    """Send `signum` to `proc` (by PID) if it is still running, wait `timeout` seconds, then
    SIGKILL it; reaped either way. Its exit code."""
    if proc.poll() is None:
        proc.send_signal(signum)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class LoggedProcess:
    """`argv` running in `ns`, its output in the file `output`."""

    def __init__(
        self, ns: NetNS, argv: Sequence[str], env: Mapping[str, str], output: Path
    ) -> None:
        self.name = Path(argv[0]).name  # for messages
        self.output = output
        self._out = open(output, "wb")  # closed in stop()
        self.proc = ns.popen(list(argv), env=dict(env), stdout=self._out, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 30.0, start: int = 0) -> re.Match[str]:
        """Wait until the output (from character `start`) matches; fail early on exit."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if match := regex.search(self.text(), start):
                return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        if match := regex.search(self.text(), start):
            return match
        raise AssertionError(
            f"{self.name} output never matched {pattern!r} (exit {self.proc.poll()}):\n"
            + self.text()[-4000:]
        )

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds; its exit code."""
        code = end_process(self.proc, timeout=timeout)
        self._out.close()
        return code
