"""Acting on a path inside a sandbox's rootfs while sandbox code may be changing that tree.

A name under `<rootfs>` is only as good as the moment it was read: sandbox root can swap any
directory on it for a symlink to a host path (`renameat2(RENAME_EXCHANGE)` in a loop), and a
host call given the string then acts on the host. So the host never hands such a string to the
kernel. It opens the rootfs once, resolves the rest from that fd with `openat2(RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS)` (no symlink, no `..` above the rootfs, no magic link), checks that it got
the object it meant (the mount id, for a mount), and then acts on the fd itself: a
`/proc/self/fd/N` magic link names exactly the opened object, whatever happens to names later.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
from pathlib import Path

from hutch.runtime.container._mounts import MNT_DETACH, mount_table

_SYS_OPENAT2 = 437  # the same number on every architecture (a syscall newer than 5.x)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10  # symlinks resolved as if `root_fd` were "/": never above it
_STRICT = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS

AT_EMPTY_PATH = 0x1000
AT_STATX_DONT_SYNC = 0x4000  # no round trip to a FUSE daemon (a dead one answers ENOTCONN)
STATX_MNT_ID = 0x1000
_STATX_MNT_ID_OFFSET = 144  # struct statx: stx_mnt_id follows the dev numbers
_STATX_SIZE = 256

# Errors that mean "the tree changed under us (or was made to)": look again.
_MOVED = (errno.ELOOP, errno.ENOENT, errno.ENOTDIR, errno.EXDEV, errno.EAGAIN)
UNMOUNT_ATTEMPTS = 200


class PathKeptMoving(OSError):
    """Sandbox code kept renaming the directories on the way while the host looked for it."""


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def open_beneath(root_fd: int, path: str, flags: int = os.O_PATH, resolve: int = _STRICT) -> int:
    """Open `path` relative to the directory `root_fd`, refusing any symlink on the way and
    any escape above it (or, with `resolve=RESOLVE_IN_ROOT`, following symlinks as if
    `root_fd` were the root); returns the fd (O_CLOEXEC).

    Raises:
        OSError: ELOOP for a symlink, EXDEV for an escape, ENOENT, ... (errno set).
    """
    rel = path.strip("/") or "."
    # NB: no O_NOFOLLOW: with O_PATH it would hand back the symlink itself instead of the
    # ELOOP that RESOLVE_NO_SYMLINKS gives for a trailing one.
    how = _OpenHow(flags | os.O_CLOEXEC, 0, resolve)
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    fd = int(
        libc.syscall(
            ctypes.c_long(_SYS_OPENAT2),
            ctypes.c_int(root_fd),
            ctypes.c_char_p(os.fsencode(rel)),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"open {rel!r} beneath the sandbox root: {os.strerror(err)}")
    return fd


def mount_id_of(fd: int) -> int:
    """The id (as in mountinfo's first field) of the mount the open file `fd` lies on."""
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    rc = _libc().statx(
        ctypes.c_int(fd),
        ctypes.c_char_p(b""),
        AT_EMPTY_PATH | AT_STATX_DONT_SYNC,
        STATX_MNT_ID,
        buf,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"statx: {os.strerror(err)}")
    mask = int.from_bytes(buf.raw[0:4], "little")
    if not mask & STATX_MNT_ID:
        raise OSError(errno.ENOSYS, "statx does not report mount ids on this kernel")
    return int.from_bytes(buf.raw[_STATX_MNT_ID_OFFSET : _STATX_MNT_ID_OFFSET + 8], "little")


def open_root(rootfs: Path) -> int:
    """An O_PATH fd of the rootfs directory itself (a host path no sandbox can change)."""
    return os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def unmount_in_root(rootfs: Path, mount_id: int) -> bool:
    """Unmount the mount `mount_id`, which lies under `rootfs`, without ever resolving a name
    the sandbox could redirect; False if no such mount is there (any more).

    The mount is looked up in mountinfo by id, its current path opened beneath the rootfs fd
    and its mount id checked; the unmount goes through that fd. While sandbox code keeps
    moving the directories on the way, this looks again (it can delay the unmount, never
    redirect it).

    Raises:
        PathKeptMoving: the mount never held still long enough (the sandbox may retry).
        OSError: the kernel refused the unmount.
    """
    base = str(rootfs).rstrip("/") + "/"
    root_fd = open_root(rootfs)
    try:
        for _ in range(UNMOUNT_ATTEMPTS):
            entry = next((e for e in mount_table() if e.mount_id == mount_id), None)
            if entry is None:
                return False
            if not entry.mountpoint.startswith(base):
                # Not under the rootfs, so not the sandbox's to have: never touch it.
                return False
            try:
                fd = open_beneath(root_fd, entry.mountpoint[len(base) :])
            except OSError as exc:
                if exc.errno in _MOVED:
                    continue
                raise
            try:
                if mount_id_of(fd) != mount_id:
                    continue
                _umount_fd(fd)
                return True
            finally:
                os.close(fd)
        raise PathKeptMoving(
            errno.EBUSY,
            f"mount {mount_id} under {rootfs} kept moving while it was being unmounted",
        )
    finally:
        os.close(root_fd)


def _umount_fd(fd: int) -> None:
    # Lazily: our own fd keeps the mount busy. Following the /proc/self/fd magic link (no
    # UMOUNT_NOFOLLOW) reaches exactly the mount the fd was opened on, never a name's target.
    target = f"/proc/self/fd/{fd}".encode()
    if _libc().umount2(target, MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount of the opened mount: {os.strerror(err)}")
