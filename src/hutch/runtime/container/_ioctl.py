"""ioctl(2) with a large argument, without holding the GIL.

`fcntl.ioctl` copies a buffer argument of up to 1024 bytes and releases the GIL around the
call; a longer one (btrfs's vol_args, 4096 bytes) it passes in place and calls ioctl with
the GIL held. A btrfs snapshot commits a transaction (milliseconds, tens of them under load),
so every other thread, the server's event loop among them, stopped for the whole commit: a
fork's snapshot, made in a thread so that the child's create could go on meanwhile, froze
that create (and every other request) instead. ctypes releases the GIL around the call.
"""

from __future__ import annotations

import ctypes
import functools
import os


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    # NB: CDLL keeps the function it looked up, so these hold for every later call.
    libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
    libc.ioctl.restype = ctypes.c_int
    return libc


def ioctl_unlocked(fd: int, request: int, arg: bytearray) -> None:
    """ioctl(fd, request, arg) with the GIL released; `arg` is read and written in place.

    Raises:
        OSError: the ioctl failed (its errno).
    """
    buffer = (ctypes.c_char * len(arg)).from_buffer(arg)
    if _libc().ioctl(fd, request, buffer) == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
