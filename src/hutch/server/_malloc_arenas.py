"""glibc's malloc arenas of a Hutch process (API server, node daemon), bounded to two.

glibc gives each thread that contends for malloc an arena of its own (up to eight per CPU),
and an arena returns freed memory to the system only from its top. The server's threads (the
store's, `asyncio.to_thread`'s workers, the network attach's thread per netns) grew arenas
under each burst of creates that never shrank back: `bench/soak.py`'s server grew +12 to +29
MB of RSS per lifetime on this host (its 20 MB limit failed 5 runs of 6, on this code and
the code before it alike), and +0.2 / -1.1 MB with two arenas. Python objects come from
pymalloc under the GIL, so threads hardly contend for malloc: two arenas cost nothing seen.
It is what MALLOC_ARENA_MAX=2 does (an operator's own setting of it wins), set here so that
every way of starting Hutch has it. It must run before a second thread allocates.
"""

from __future__ import annotations

import os

_M_ARENA_MAX = -8  # glibc's malloc.h
ARENAS = 2


def bound_malloc_arenas(count: int = ARENAS) -> bool:
    """Whether the bound was set (not: not glibc, or MALLOC_ARENA_MAX already chose)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # a C library without mallopt (musl)
        return False
    return bool(mallopt(_M_ARENA_MAX, count))
