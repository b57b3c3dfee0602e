"""The helper process that checks a BIRD configuration: `bird -p -c FILE`, tied to calico-bgp.

    python -m calico.bgp.check <calico-bgp PID> <bird binary> <file>

It asks the kernel to kill it when calico-bgp dies (`calico.common.children.die_with_parent`,
done here rather than in a preexec_fn, which is unsafe in the multi-threaded daemon), checks
that calico-bgp is still its parent, then becomes `bird -p -c FILE` (exec keeps the
parent-death signal). So no check outlives the daemon, even one killed with SIGKILL. Exit
status: BIRD's (0: the file is valid), or 125 if the parent is already gone.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

from calico.common.children import die_with_parent

PARENT_GONE = 125


def main(argv: Sequence[str]) -> int:
    if len(argv) != 3 or not argv[0].isdigit():
        print("usage: python -m calico.bgp.check <parent pid> <bird> <file>", file=sys.stderr)
        return 2
    parent, bird, path = int(argv[0]), argv[1], argv[2]
    if not die_with_parent(signal.SIGKILL, parent):
        return PARENT_GONE
    os.execv(bird, [bird, "-p", "-c", path])  # noqa: S606 (no shell: argv as given)
    return 127  # not reached: execv either replaces this process or raises


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
