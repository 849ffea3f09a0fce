"""server/_malloc_arenas.py: a Hutch process keeps at most two glibc malloc arenas however
many of its threads allocate (each thread got an arena of its own before, and the server's
RSS grew by ~20 MB per burst of creates: bench/soak.py), and MALLOC_ARENA_MAX, if an
operator set it, wins."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hutch.server._malloc_arenas import bound_malloc_arenas

# Eight threads malloc at once, then glibc's malloc_stats() prints one "Arena N:" per arena.
_PROBE = """
import ctypes, sys, threading
from hutch.server._malloc_arenas import bound_malloc_arenas
if sys.argv[1] == "bound":
    bound_malloc_arenas()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
start, held = threading.Barrier(8), threading.Barrier(8)
def work():
    start.wait()
    block = libc.malloc(4096)
    held.wait()  # every thread holds its block while the others allocate
    libc.free(ctypes.c_void_p(block))
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc.malloc_stats()
"""


def _arenas(mode: str, **env: str) -> int:
    run_env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env
    r = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        capture_output=True,
        text=True,
        env=run_env,
        check=True,
    )
    return sum(line.startswith("Arena ") for line in r.stderr.splitlines())


def test_eight_allocating_threads_share_two_arenas() -> None:
    assert _arenas("free") > 2  # glibc's own default: an arena per thread, up to 8 per CPU
    assert _arenas("bound") <= 2


def test_an_operators_malloc_arena_max_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert bound_malloc_arenas() is False
    assert _arenas("bound", MALLOC_ARENA_MAX="4") <= 4
