"""Put a fully written temporary file in the place of an existing one, atomically.

NB: btrfs starts writing a file back when it is renamed over another file (its flush-on-rename
heuristic, like ext4's auto_da_alloc), and rename() waits while it does: 60-110 ms of CPU and
wall time for a 64 MiB upload on this kind of host, a third of the agent's time in an upload.
Exchanging the two names (renameat2 RENAME_EXCHANGE) and unlinking the old file, now under the
temporary name, starts no writeback (12-20 ms), and a reader of the path still sees the old
file or the new one, never neither. The data is written back later by the kernel's flusher,
as any other write of the sandbox's is.
"""

from __future__ import annotations

import errno
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _renameat2() -> Any:
    """glibc's renameat2 (2.28 and later) through ctypes, imported on first use only (an agent
    that never replaces a big file never pays for ctypes); None when there is none."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).renameat2
    except (ImportError, OSError, AttributeError):
        return None


def exchange(a: str, b: str) -> bool:
    """Swap the names ``a`` and ``b``; False when this kernel or file system cannot (then
    nothing changed)."""
    call = _renameat2()
    if call is None:
        return False
    if call(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    import ctypes

    code = ctypes.get_errno()
    # EINVAL/ENOSYS/EOPNOTSUPP: not supported here (gVisor, some file systems); ENOENT: the
    # target went away meanwhile. A plain rename then does what is right.
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOENT, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), b)


def replace_file(temp: str, path: str) -> None:
    """Rename ``temp`` onto ``path`` (which exists), without the flush that rename() starts
    on btrfs. Raises what ``os.rename(temp, path)`` would."""
    if exchange(temp, path):
        try:
            os.unlink(temp)  # the old file
            return
        except OSError:
            # e.g. path became a directory since the write began: swap back, and let rename
            # do (or refuse) what it would have.
            exchange(temp, path)
    os.rename(temp, path)
