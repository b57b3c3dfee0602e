"""The C heap of the long-running daemons: big buffers, once freed, go back to the system.

glibc serves an allocation above its mmap threshold (128 KiB at first) from a mapping of its
own, which ``free`` unmaps. But the threshold moves: each time such a chunk is freed, glibc
raises the threshold to the chunk's size (up to 32 MiB). After the first big free, the daemons'
later buffers of megabytes (a restore's text, a save's output, a snapshot's JSON) come from the
heap instead, and stay there as fragments once freed. Setting the threshold with ``mallopt``
fixes it (and turns the moving off), so those buffers are mapped and unmapped again. At 1,000
endpoints it lowers the driver's peak from 155 to 134 MB and its steady state from 132 to
107 MB (docs/benchmarks.md, third performance round).
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # <malloc.h>
MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value


def fix_mmap_threshold(size: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at `size` bytes; False where the C library has no mallopt
    (not glibc): nothing changes there."""
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, size) == 1)
    except (OSError, AttributeError):
        return False


__all__ = ["fix_mmap_threshold"]
