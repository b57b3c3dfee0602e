"""Children that die with their parent (issue 19): no daemon of the project may leave a child
acting on stale state after the parent crashed, or two of them after a restart.

Each child process the project starts asks the kernel, as its first act, for a signal when its
parent dies (``prctl(PR_SET_PDEATHSIG)``), then checks that its parent is still the one that
started it (the parent may have died between the fork and the prctl). Done in the child itself,
not in a ``preexec_fn``, which is unsafe in a multi-threaded parent. Two limits the callers
handle: the signal is tied to the parent *thread* that forked the child (both daemons start
their children from their main thread), and the kernel clears it when the child changes its
user or group (why dnsmasq runs under a keeper: docs/dhcp.md). tests/unit/test_children_rule.py
holds every daemon to this: a process started and left running anywhere but the test lab must
be a known child whose program asks for the signal.
"""

from __future__ import annotations

import ctypes
import os

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def set_parent_death_signal(signum: int) -> bool:
    """Ask the kernel to send `signum` to this process when its parent dies; False if the
    platform does not allow it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def die_with_parent(signum: int, parent_pid: int) -> bool:
    """Tie this process's life to `parent_pid`'s: True if the parent is still alive (from now
    on its death sends `signum` here, where the platform allows it); False if it has already
    gone, and the caller must exit at once."""
    set_parent_death_signal(signum)
    return os.getppid() == parent_pid
