"""BIRD and calico-bgp run inside lab network namespaces, for tests, benchmarks and the demo.

:class:`BirdProcess` is one BIRD 2 daemon in a namespace with its own files under a work
directory (configuration, control socket, PID file, log): ``bird -f -c <conf> -s <sock> -P
<pid> [-R]``, in the foreground, so that it is our child and is stopped by its PID (never by
name; Debian's own ``bird.service`` is never used). Queries go through the real ``birdc``
(an oracle independent of calico-bgp's own socket client).

:class:`BgpProcess` is the real ``calico-bgp`` console script in a namespace, its output in a
file, stopped by its PID.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from calico.lab.netns import NetNS
from calico.lab.process import LoggedProcess, end_process

CALICO_BGP = str(Path(sys.executable).with_name("calico-bgp"))


def bootstrap_config(router_id: str) -> str:
    """What a BIRD starts with before calico-bgp has written its file (Debian's package
    ships a similar one): no session, no route."""
    lines = ["log stderr all;", f"router id {router_id};", 'timeformat protocol "%F %T";']
    return "\n".join([*lines, "protocol device {}", ""])


class BirdProcess:
    """One BIRD in ``ns``; files in ``work_dir`` (socket path: keep it short)."""

    def __init__(self, ns: NetNS, work_dir: Path, name: str = "bird"):
        self.ns = ns
        self.work_dir = work_dir
        work_dir.mkdir(parents=True, exist_ok=True)
        self.config = work_dir / f"{name}.conf"
        self.socket = work_dir / f"{name}.ctl"
        self.pidfile = work_dir / f"{name}.pid"
        self.log = work_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def __repr__(self) -> str:
        return f"BirdProcess({self.ns.name!r}, {str(self.config)!r})"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(
        self, graceful: bool = True, router_id: str = "192.0.2.1", timeout: float = 10.0
    ) -> BirdProcess:
        """Start BIRD (with ``-R``: graceful restart recovery) on the file as it is, or on a
        bootstrap file if there is none yet; wait until its socket answers."""
        if self.pid is not None:
            raise RuntimeError(f"{self!r} is already running")
        if not self.config.exists():
            self.config.write_text(bootstrap_config(router_id))
        argv = ["bird", "-f", "-c", str(self.config), "-s", str(self.socket)]
        argv += ["-P", str(self.pidfile), *(["-R"] if graceful else [])]
        with open(self.log, "ab") as out:
            self.proc = self.ns.popen(argv, stdout=out, stderr=subprocess.STDOUT)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self!r} exited {self.proc.returncode}:\n{self.log_text()}")
            if self.birdc("show", "status", check=False).returncode == 0:
                return self
            time.sleep(0.05)
        raise RuntimeError(f"{self!r} never answered on {self.socket}:\n{self.log_text()}")

    def stop(self) -> None:
        """SIGTERM (a clean shutdown: peers drop our routes), then SIGKILL; by PID."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL, as a crash: peers keep our routes as stale (graceful restart)."""
        self._end(signal.SIGKILL)

    def _end(self, signum: signal.Signals) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            end_process(proc, signum)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    # -- queries through the real birdc -----------------------------------------------------

    def birdc(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = ["birdc", "-s", str(self.socket), *command]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {proc.stdout}{proc.stderr}")
        return proc

    def protocols(self) -> dict[str, tuple[str, str]]:
        """``show protocols``: name -> (state, info) for every protocol."""
        out = self.birdc("show", "protocols").stdout
        result = {}
        for line in out.splitlines()[2:]:  # the greeting and the heading
            fields = line.split()
            if len(fields) >= 4:
                # name proto table state date time info... (calico-bgp's time format)
                result[fields[0]] = (fields[3], " ".join(fields[6:]))
        return result

    def established(self) -> set[str]:
        return {name for name, (_, info) in self.protocols().items() if info == "Established"}

    def wait_established(self, names: Sequence[str], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if set(names) <= self.established():
                return
            time.sleep(0.1)
        raise AssertionError(
            f"{self!r}: {sorted(names)} not all Established within {timeout} s: "
            f"{self.protocols()}\n{self.log_text()}"
        )

    def neighbor_as(self, name: str) -> int | None:
        out = self.birdc("show", "protocols", "all", name).stdout
        match = re.search(r"Neighbor AS:\s+(\d+)", out)
        return int(match.group(1)) if match else None


class BgpProcess(LoggedProcess):
    """A running ``calico-bgp`` in a namespace, its stdout and stderr in ``output``."""

    def __init__(
        self, ns: NetNS, env: Mapping[str, str], args: Sequence[str], output: Path
    ) -> None:
        super().__init__(ns, [CALICO_BGP, *args], env, output)


def kernel_routes(ns: NetNS, v6: bool = False, proto: str | None = None) -> dict[str, Any]:
    """The main-table routes in ``ns`` (``ip -j route``), by destination."""
    argv = ["ip", "-j", "-6" if v6 else "-4", "route", "show"]
    if proto is not None:
        argv += ["proto", proto]
    out = ns.run(argv).stdout
    return {route["dst"]: route for route in json.loads(out or "[]")}
