"""Idmapped mounts that show a shifted tree (host ids HOST_ID_BASE..) as ids 0.. again.

Images and writable layers are stored shifted into the sandbox range (see `runtime._idmap`),
which runc's user namespace maps back to 0... This runsc cannot run a sandbox in an OCI user
namespace ("error converting mounts: operation not permitted"), so for gVisor the overlay's
layers are idmapped instead: the lower and upper dirs are each cloned (`open_tree`) with an
idmap of HOST_ID_BASE.. → 0.. (`mount_setattr` with MOUNT_ATTR_IDMAP) and the overlay is
mounted over those. Inside, root owns what it owns under runc; on disk everything stays in
the shifted range, so a gVisor sandbox's disk is the same as a runc sandbox's (snapshots and
forks move between the runtimes). An overlay mount itself cannot be idmapped (EINVAL), its
layers can.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

from hutch.runtime._idmap import HOST_ID_BASE, ID_RANGE
from hutch.runtime.container._errors import SandboxStartError

_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442
_OPEN_TREE_CLONE = 1
_OPEN_TREE_CLOEXEC = os.O_CLOEXEC
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_MOUNT_ATTR_IDMAP = 0x00100000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4


class _MountAttr(ctypes.Structure):
    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise SandboxStartError(f"{what} failed: {os.strerror(errno)}")
    return result


class UnshiftingIdmap:
    """One user namespace whose ids HOST_ID_BASE.. are 0.. outside, held open by an fd and
    used for every idmapped mount of one runtime (made on first use)."""

    def __init__(self, base: int = HOST_ID_BASE, size: int = ID_RANGE) -> None:
        self._mapping = f"{base} 0 {size}\n"
        self._fd: int | None = None

    def _userns_fd(self) -> int:
        if self._fd is None:
            self._fd = _make_userns(self._mapping)
        return self._fd

    def mount(self, source: Path, target: Path) -> None:
        """Mount a clone of `source` on `target`, its ids shifted down by the base."""
        libc = _libc()
        tree = _check(
            libc.syscall(
                _SYS_OPEN_TREE,
                _AT_FDCWD,
                os.fsencode(source),
                _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC,
            ),
            f"open_tree({source})",
        )
        try:
            attr = _MountAttr(_MOUNT_ATTR_IDMAP, 0, 0, self._userns_fd())
            _check(
                libc.syscall(
                    _SYS_MOUNT_SETATTR, tree, b"", _AT_EMPTY_PATH, ctypes.byref(attr),
                    ctypes.sizeof(attr),
                ),
                f"idmapping {source}",
            )  # fmt: skip
            _check(
                libc.syscall(
                    _SYS_MOVE_MOUNT, tree, b"", _AT_FDCWD, os.fsencode(target),
                    _MOVE_MOUNT_F_EMPTY_PATH,
                ),
                f"mounting {source} on {target}",
            )  # fmt: skip
        finally:
            os.close(tree)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _make_userns(mapping: str) -> int:
    """A user namespace with `mapping` as uid and gid map; returns an fd holding it.

    A helper (`unshare --user`, not a fork of this threaded server) waits on stdin while
    we write its maps and open its ns file; then it exits, and the fd keeps the namespace.
    """
    helper = subprocess.Popen(
        ["unshare", "--user", "--", "sh", "-c", "echo ready; read -r _"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    assert helper.stdin is not None and helper.stdout is not None
    try:
        if helper.stdout.readline() != b"ready\n":
            raise SandboxStartError("cannot create a user namespace for idmapped mounts")
        for name in ("uid_map", "gid_map"):
            Path(f"/proc/{helper.pid}/{name}").write_text(mapping)
        return os.open(f"/proc/{helper.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        helper.stdin.close()
        helper.stdout.close()
        helper.wait()
