"""Runs the real `calico-felix` inside a lab network namespace, for tests and the demo."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from calico.lab.netns import NetNS

FELIX = str(Path(sys.executable).with_name("calico-felix"))
# The NFTablesMode every lab Felix gets unless its caller says otherwise (the e2e suite runs once
# per rules backend by setting it; unset: Felix's default, iptables).
LAB_NFTABLES_MODE = "CALICO_LAB_NFTABLESMODE"


def felix_env(
    etcd_url: str, hostname: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """An environment for a lab Felix: its etcd, its name, logs to the screen only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FELIX_")}
    env.update(
        {
            "FELIX_ETCDENDPOINTS": etcd_url,
            "FELIX_FELIXHOSTNAME": hostname,
            "FELIX_LOGFILEPATH": "none",
            "FELIX_LOGSEVERITYSYS": "none",
            "FELIX_LOGSEVERITYSCREEN": "INFO",
            # Lab traffic stays in the lab: no usage reports to the internet.
            "FELIX_USAGEREPORTINGENABLED": "false",
        }
    )
    if os.environ.get(LAB_NFTABLES_MODE):
        env["FELIX_NFTABLESMODE"] = os.environ[LAB_NFTABLES_MODE]
    env.update(extra or {})
    return env


def run_felix(
    ns: NetNS, args: Sequence[str], env: Mapping[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run calico-felix to completion (e.g. --show-config) inside the namespace."""
    return ns.run([FELIX, *args], check=False, env=dict(env), timeout=timeout)


class FelixProcess:
    """A long-running calico-felix in a namespace, its output captured to a file."""

    def __init__(
        self,
        ns: NetNS,
        env: Mapping[str, str],
        output: Path,
        args: Sequence[str] = ("-c", "/nonexistent/felix.cfg"),
    ):
        self.output = output
        self._out = open(output, "wb")  # closed in stop()
        self.proc = ns.popen(
            [FELIX, *args], env=dict(env), stdout=self._out, stderr=subprocess.STDOUT
        )

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """Wait until the output matches pattern; fail early if Felix exits."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            if match := regex.search(self.text()):
                return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        if match := regex.search(self.text()):
            return match
        raise AssertionError(
            f"calico-felix output never matched {pattern!r} (exit {self.proc.poll()}):\n"
            + self.text()[-3000:]
        )

    def wait_exit(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.proc.returncode
