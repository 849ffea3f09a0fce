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
    _shift_one(str(root), base)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            _shift_one(os.path.join(dirpath, name), base)


def _shift_one(path: str, base: int) -> None:
    st = os.lstat(path)
    uid, gid = shifted_id(st.st_uid, base), shifted_id(st.st_gid, base)
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
