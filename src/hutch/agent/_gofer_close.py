"""The create-unlink-close that makes gVisor's sentry send the closes it has queued to the
gofer (see _close_flush), apart from the flushing thread so the agent's loop can do one too
without importing the op's module."""

from __future__ import annotations

import os

# Pokes come after every op and reaped process: a sandbox that runs hundreds a second would
# flush back to back (~0.5 ms each under ptrace). At most one flush per gap; a poke during
# it is kept (the event stays set) and served right after.
MIN_GAP = 0.05

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def flush(path: str) -> None:
    """Create, unlink and close `path`: sends every close the sentry has queued.

    Raises:
        OSError: the file could not be made (read-only root, a directory planted there).
    """
    try:
        fd = os.open(path, _FLAGS, 0o600)
    except FileExistsError:  # left by an agent killed mid-flush, or planted: take its place
        os.unlink(path)
        fd = os.open(path, _FLAGS, 0o600)
    try:
        os.unlink(path)
    finally:
        os.close(fd)
