"""Checks of the host before Felix starts: required commands and kernel settings.

Reads only; never changes the host. The kernel settings are read through
`calico.felix.kernel.sysctls`, which the dataplane driver checks the same way.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

from calico.felix.kernel import sysctls
from calico.felix.kernel.sysctls import CONNTRACK_MAX, RP_FILTER_ALL

REQUIRED_COMMANDS = ("iptables-restore", "iptables-save", "ipset")
RECOMMENDED_CONNTRACK_MAX = 1_000_000
__all__ = ["CONNTRACK_MAX", "RP_FILTER_ALL", "check_host"]


def check_host(
    ignore_loose_rpf: bool,
    which: Callable[[str], str | None] = shutil.which,
    read_int: Callable[[str], int | None] = sysctls.read_int,
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
    if sysctls.is_loose_rpf(read_int(RP_FILTER_ALL)) and not ignore_loose_rpf:
        errors.append(sysctls.LOOSE_RPF_PROBLEM)
    return errors, warnings
