"""Flushing conntrack flows of an IP a workload lost (felix.md §9 item 18), with `conntrack`."""

from __future__ import annotations

import ipaddress
import logging
from typing import Final

from calico.felix.kernel.commands import CommandRunner

_log = logging.getLogger(__name__)

CONNTRACK_DIRECTIONS: Final = ("--orig-src", "--orig-dst", "--reply-src", "--reply-dst")
CONNTRACK_ATTEMPTS: Final = 3


def flush_conntrack(runner: CommandRunner, ip: str, ip_version: int | None = None) -> bool:
    """Delete every conntrack flow to or from `ip` (both directions, orig and reply).

    Returns False if some deletion still failed after CONNTRACK_ATTEMPTS tries; that is only
    logged (§5.11): stale flows are a nuisance, not a reason to stop programming.
    """
    version = ip_version or ipaddress.ip_address(ip).version
    family = f"ipv{version}"
    ok = True
    for direction in CONNTRACK_DIRECTIONS:
        argv = ["conntrack", "--family", family, "--delete", direction, ip]
        ok = _run_conntrack(runner, argv) and ok
    return ok


def _run_conntrack(runner: CommandRunner, argv: list[str]) -> bool:
    for attempt in range(1, CONNTRACK_ATTEMPTS + 1):
        proc = runner.run(argv)
        if proc.returncode == 0:
            return True
        # Exit 1 with "0 flow entries" just means there was nothing to delete.
        if proc.returncode == 1 and "0 flow entries" in proc.stderr:
            return True
        _log.warning("%s failed (attempt %d): %s", argv, attempt, proc.stderr.strip())
    return False
