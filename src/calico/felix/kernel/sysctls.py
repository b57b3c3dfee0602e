"""Kernel settings: the sysctls of felix.md §5.11, global and per workload interface.

API model
    :func:`configure_global`, :func:`configure_interface` and :func:`repair_interface` apply
    and check the settings through a :class:`SysctlWriter`. :class:`ProcSysctlWriter` writes
    ``/proc/sys`` files of the namespace Felix runs in (production); :class:`RunnerSysctlWriter`
    runs ``sysctl`` through a command runner, e.g. inside a test namespace via ``ip netns exec``.
    :func:`check_loose_rpf` is the one check of the host's reverse-path filtering (Felix's
    start-up checks and the driver both use it).

Thread safety
    None needed: the functions are stateless.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from calico.felix.kernel.commands import CommandRunner


class LooseRPFError(RuntimeError):
    """net.ipv4.conf.all.rp_filter is 2 (loose): anti-spoofing would not work (§5.11)."""


class SysctlWriter(Protocol):
    """Reads and writes sysctls named by their ``/proc/sys``-relative path (``net/ipv4/...``).

    Paths use ``/`` so interface names containing dots need no escaping.
    """

    def write(self, path: str, value: str) -> None: ...
    def read(self, path: str) -> str: ...


class ProcSysctlWriter:
    """Writes files under `root` (``/proc/sys``: the current process's network namespace)."""

    def __init__(self, root: Path = Path("/proc/sys")) -> None:
        self.root = root

    def _file(self, path: str) -> Path:
        if ".." in path.split("/"):
            raise ValueError(f"bad sysctl path {path!r}")
        return self.root / path

    def write(self, path: str, value: str) -> None:
        # os.open/os.write: a third of pathlib's cost, and a burst of 500 new VMs writes 2,500
        # of these (a fifth of the driver's time with write_text).
        fd = os.open(self._file(path), os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, f"{value}\n".encode())
        finally:
            os.close(fd)

    def read(self, path: str) -> str:
        return self._file(path).read_text().strip()


class RunnerSysctlWriter:
    """Runs ``sysctl`` through a command runner (with a NetnsRunner: inside that namespace)."""

    def __init__(self, runner: CommandRunner) -> None:
        self.runner = runner

    def write(self, path: str, value: str) -> None:
        proc = self.runner.run(["sysctl", "-q", "-w", f"{path}={value}"])
        if proc.returncode != 0:
            raise OSError(f"sysctl -w {path}={value}: {proc.stderr.strip()}")

    def read(self, path: str) -> str:
        proc = self.runner.run(["sysctl", "-n", path])
        if proc.returncode != 0:
            raise OSError(f"sysctl -n {path}: {proc.stderr.strip()}")
        return proc.stdout.strip()


def interface_sysctls(name: str, ip_version: int) -> dict[str, str]:
    """The per-workload-interface sysctls of §5.11, path -> value."""
    if ip_version == 4:
        return {
            # Strict reverse-path filtering is Felix's anti-spoofing for workloads.
            f"net/ipv4/conf/{name}/rp_filter": "1",
            # Lets workloads reach 127.0.0.1-DNATed services (e.g. the metadata proxy).
            f"net/ipv4/conf/{name}/route_localnet": "1",
            # Workloads have a default route to the interface; the host answers all ARP.
            f"net/ipv4/conf/{name}/proxy_arp": "1",
            # ... and answers at once rather than after a random delay.
            f"net/ipv4/neigh/{name}/proxy_delay": "0",
        }
    if ip_version == 6:
        # Lets the workload resolve its gateway, added as an `ip -6 neigh add proxy` entry.
        return {f"net/ipv6/conf/{name}/proxy_ndp": "1"}
    raise ValueError(f"ip_version must be 4 or 6, not {ip_version!r}")


def configure_interface(name: str, ip_version: int, writer: SysctlWriter) -> None:
    """Apply §5.11's per-interface sysctls. Raises OSError if the interface is gone."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"bad interface name {name!r}")
    for path, value in interface_sysctls(name, ip_version).items():
        writer.write(path, value)


def repair_interface(name: str, ip_version: int, writer: SysctlWriter) -> list[str]:
    """Check §5.11's per-interface sysctls and write back any another tool changed; return
    what was repaired ("path: was -> now"). Raises OSError if the interface is gone."""
    repaired = []
    for path, value in interface_sysctls(name, ip_version).items():
        found = writer.read(path)
        if found != value:
            writer.write(path, value)
            repaired.append(f"{path}: {found} -> {value}")
    return repaired


RP_FILTER_ALL = "net/ipv4/conf/all/rp_filter"
CONNTRACK_MAX = "net/netfilter/nf_conntrack_max"
LOOSE_RPF_PROBLEM = (
    "net.ipv4.conf.all.rp_filter is 2 (loose): workloads could spoof source addresses (Felix's "
    "anti-spoofing needs strict (1) or off (0)). Set it to 1, or set IgnoreLooseRPF=true to "
    "run anyway"
)


def is_loose_rpf(value: str | int | None) -> bool:
    """Whether net.ipv4.conf.all.rp_filter holds the loose setting (2)."""
    return str(value).strip() == "2"


def read_int(path: str, root: Path = Path("/proc/sys")) -> int | None:
    """An integer sysctl (``net/...`` under `root`), or None if missing or not a number."""
    try:
        return int((root / path).read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def configure_global(
    ip_version: int,
    writer: SysctlWriter,
    ignore_loose_rpf: bool = False,
    runner: CommandRunner | None = None,
) -> None:
    """Start-of-day kernel settings (§5.11). Felix deliberately leaves ip_forward alone.

    IPv4: refuse loose RPF unless `ignore_loose_rpf`; make new interfaces start with strict
    rp_filter; if `runner` is given, run a harmless ``conntrack -L`` so the kernel loads
    ``nf_conntrack_netlink`` before the first flush needs it. IPv6 needs nothing global.
    """
    if ip_version == 6:
        return
    if ip_version != 4:
        raise ValueError(f"ip_version must be 4 or 6, not {ip_version!r}")
    if is_loose_rpf(writer.read(RP_FILTER_ALL)) and not ignore_loose_rpf:
        raise LooseRPFError(LOOSE_RPF_PROBLEM)
    writer.write("net/ipv4/conf/default/rp_filter", "1")
    if runner is not None:
        runner.run(["conntrack", "-L", "-s", "169.254.45.169"])
