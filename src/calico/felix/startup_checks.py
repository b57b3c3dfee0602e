"""Checks of the host before Felix starts: required commands and kernel settings.

Reads only; never changes the host.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

REQUIRED_COMMANDS = ("iptables-restore", "iptables-save", "ipset")
RECOMMENDED_CONNTRACK_MAX = 1_000_000
CONNTRACK_MAX = "/proc/sys/net/netfilter/nf_conntrack_max"
RP_FILTER_ALL = "/proc/sys/net/ipv4/conf/all/rp_filter"
LOOSE_RPF = 2


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def check_host(
    ignore_loose_rpf: bool,
    which: Callable[[str], str | None] = shutil.which,
    read_int: Callable[[str], int | None] = _read_int,
) -> tuple[list[str], list[str]]:
    """(errors that stop Felix, warnings) for this host."""
    errors: list[str] = []
    warnings: list[str] = []
    for command in REQUIRED_COMMANDS:
        if which(command) is None:
            errors.append(
                f"required command {command!r} not found on PATH (install iptables and ipset)"
            )
    conntrack_max = read_int(CONNTRACK_MAX)
    if conntrack_max is not None and conntrack_max < RECOMMENDED_CONNTRACK_MAX:
        warnings.append(
            f"net.netfilter.nf_conntrack_max is {conntrack_max}, below the recommended "
            f"{RECOMMENDED_CONNTRACK_MAX}; raise it with 'sysctl -w net.netfilter."
            f"nf_conntrack_max={RECOMMENDED_CONNTRACK_MAX}' and add that setting to "
            "/etc/sysctl.conf"
        )
    if read_int(RP_FILTER_ALL) == LOOSE_RPF and not ignore_loose_rpf:
        errors.append(
            "net.ipv4.conf.all.rp_filter is 2 (loose): workloads could spoof source addresses. "
            "Set it to 1, or set IgnoreLooseRPF=true to run anyway"
        )
    return errors, warnings
