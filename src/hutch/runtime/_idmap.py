"""The sandbox user-namespace id mapping, and shifting a root filesystem into it.

Every sandbox runs in a user namespace where its uid/gid 0..ID_RANGE-1 are host ids
HOST_ID_BASE..HOST_ID_BASE+ID_RANGE-1. A rootfs owned by host root would show up as `nobody` inside
and sandbox root could not write `/etc`, so images are stored with their ownership shifted into that
range once, when they are stored (what Docker's userns-remap does).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

HOST_ID_BASE = 1_000_000_000
ID_RANGE = 65536
# The overflow id: what `nobody` is in the sandbox, and where ids outside the range go.
OVERFLOW_ID = 65534

_CAPS_XATTR = "security.capability"


def shifted_id(sandbox_id: int, base: int = HOST_ID_BASE) -> int:
    """The host id that a sandbox uid/gid appears as on the host."""
    if 0 <= sandbox_id < ID_RANGE:
        return base + sandbox_id
    return base + OVERFLOW_ID


def shift_ownership(root: Path, base: int = HOST_ID_BASE) -> None:
    """Shift the owner of every entry under `root` (and `root` itself) by `base`.

    Symlinks are never followed: the entry itself is changed. Ids outside `0..ID_RANGE-1` become
    the sandbox's `nobody`. The tree must hold unshifted ids (as seen inside the sandbox); shifting
    twice moves everything to `nobody`.
    """
    _remap_ownership(root, lambda sandbox_id: shifted_id(sandbox_id, base))


def unshift_ownership(root: Path) -> None:
    """Undo `shift_ownership`: sandbox-range ids back to 0..ID_RANGE-1 (others: nobody)."""
    _remap_ownership(root, _unshifted)


def _unshifted(host_id: int) -> int:
    if HOST_ID_BASE <= host_id < HOST_ID_BASE + ID_RANGE:
        return host_id - HOST_ID_BASE
    return OVERFLOW_ID


def _remap_ownership(root: Path, remap: Callable[[int], int]) -> None:
    """Give every entry under `root` (and `root`) the owner and group `remap` maps its ids to."""
    _remap_one(str(root), remap)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            _remap_one(os.path.join(dirpath, name), remap)


def _remap_one(path: str, remap: Callable[[int], int]) -> None:
    st = os.lstat(path)
    uid, gid = remap(st.st_uid), remap(st.st_gid)
    if (uid, gid) == (st.st_uid, st.st_gid):
        return
    is_link = stat.S_ISLNK(st.st_mode)
    # NB: the kernel drops setuid/setgid bits and file capabilities on chown; both must survive
    # (`ping`, `sudo`, ...), so save them first and put them back after.
    caps = None if is_link else _get_caps(path)
    os.lchown(path, uid, gid)
    if is_link:
        return
    if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        os.chmod(path, stat.S_IMODE(st.st_mode))
    if caps is not None:
        os.setxattr(path, _CAPS_XATTR, caps, follow_symlinks=False)


def _get_caps(path: str) -> bytes | None:
    try:
        return os.getxattr(path, _CAPS_XATTR, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP):
            return None
        raise
