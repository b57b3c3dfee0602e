"""Runs the real `calico-felix` inside a lab network namespace, for tests and the demo."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from calico.lab.netns import NetNS
from calico.lab.process import LoggedProcess

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


class FelixProcess(LoggedProcess):
    """A long-running calico-felix in a namespace, its output captured to a file."""

    def __init__(
        self,
        ns: NetNS,
        env: Mapping[str, str],
        output: Path,
        args: Sequence[str] = ("-c", "/nonexistent/felix.cfg"),
    ):
        super().__init__(ns, [FELIX, *args], env, output)

    def wait_exit(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)
