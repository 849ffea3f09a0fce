"""Idmapped mounts: one shared image, seen by each sandbox as owned by its own uid range.

Images and sandbox disks are stored in one canonical range (`HOST_ID_BASE` + id, see
`hutch.runtime._idmap`), which no process ever runs as. A sandbox whose ids are host
`base .. base+65535` gets an idmapped view of its image's rootfs and of its own storage
subvolume (upper, work, etc) in which canonical id `HOST_ID_BASE + x` shows as `base + x`;
the overlayfs is mounted over those two views. What the sandbox writes lands on disk in the
canonical range again, so snapshots, forks and backups do not depend on the range.

runc 1.1.5 cannot make idmapped mounts; Linux (>= 5.19 for overlayfs over idmapped layers)
can, through `open_tree(OPEN_TREE_CLONE)` + `mount_setattr(MOUNT_ATTR_IDMAP)` + `move_mount`,
given a user namespace that holds the mapping. Checked on 6.18:

- the overlayfs mount itself cannot be idmapped (`mount_setattr` → EINVAL): the layers are;
- the mapping must also map host root (0 → 0): overlayfs creates its `work/work` dir as the
  mounter, and without it mounts read-only ("failed to create directory ... errno 75").
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import signal
from pathlib import Path

from hutch.runtime._idmap import HOST_ID_BASE, ID_RANGE
from hutch.runtime.container._spawn import exit_code, spawn

_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_OPEN_TREE_CLONE = 1
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_IDMAP = 0x00100000


class _MountAttr(ctypes.Structure):
    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _check(name: str, rc: int) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return rc


def id_map(base: int) -> str:
    """The uid_map/gid_map lines of a sandbox's idmapped views: canonical ids to its range,
    and host root to itself (for overlayfs's own work files)."""
    return f"0 0 1\n{HOST_ID_BASE} {base} {ID_RANGE}\n"


async def make_userns(base: int) -> int:
    """An fd of a new user namespace holding `id_map(base)` (its only use: mount_setattr).

    NB: a helper process enters the new namespace (`unshare --user`), the maps are written
    from here (host root may write any map), the fd keeps the namespace alive after the
    helper is gone.
    """
    # `cat` waits on a pipe of ours until it is killed; posix_spawn, not asyncio's
    # subprocess, which forks the server (_spawn).
    in_r, in_w = os.pipe2(os.O_CLOEXEC)
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        pid = spawn(["unshare", "--user", "cat"], stdin=in_r, stdout=devnull, stderr=devnull)
    except BaseException:
        os.close(in_w)
        raise
    finally:
        os.close(in_r)
        os.close(devnull)
    try:
        own = os.readlink("/proc/self/ns/user")
        for _ in range(5000):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/ns/user") != own:
                    break
            await asyncio.sleep(0.001)
        else:
            raise OSError("unshare --user did not enter a new user namespace")
        _write_maps(pid, id_map(base))
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(in_w)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        await exit_code(pid)


def _write_maps(pid: int, text: str) -> None:
    for name in ("uid_map", "gid_map"):
        Path(f"/proc/{pid}/{name}").write_text(text)  # procfs: never blocks


def mount_idmapped(source: Path, target: Path, userns_fd: int) -> None:
    """Mount an idmapped view of the directory `source` on `target` (an empty directory)."""
    libc = _libc()
    tree = _check(
        "open_tree",
        libc.syscall(
            ctypes.c_long(_SYS_OPEN_TREE),
            ctypes.c_int(_AT_FDCWD),
            ctypes.c_char_p(os.fsencode(source)),
            ctypes.c_uint(_OPEN_TREE_CLONE | os.O_CLOEXEC),
        ),
    )
    try:
        attr = _MountAttr(_MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
        _check(
            "mount_setattr(MOUNT_ATTR_IDMAP)",
            libc.syscall(
                ctypes.c_long(_SYS_MOUNT_SETATTR),
                ctypes.c_int(tree),
                ctypes.c_char_p(b""),
                ctypes.c_uint(_AT_EMPTY_PATH),
                ctypes.byref(attr),
                ctypes.c_size_t(ctypes.sizeof(attr)),
            ),
        )
        _check(
            "move_mount",
            libc.syscall(
                ctypes.c_long(_SYS_MOVE_MOUNT),
                ctypes.c_int(tree),
                ctypes.c_char_p(b""),
                ctypes.c_int(_AT_FDCWD),
                ctypes.c_char_p(os.fsencode(target)),
                ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH),
            ),
        )
    finally:
        os.close(tree)
