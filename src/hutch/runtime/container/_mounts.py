"""mount(2)/umount2(2) and the mount table, without spawning `mount` processes."""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8


@dataclass(frozen=True, slots=True)
class MountEntry:
    mountpoint: str
    fstype: str
    source: str
    mount_id: int = 0  # mountinfo's first field; statx(STATX_MNT_ID) reports the same


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def mount(source: str, target: Path, fstype: str, flags: int, data: str) -> None:
    rc = _libc().mount(
        source.encode(), os.fsencode(target), fstype.encode(), ctypes.c_ulong(flags), data.encode()
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype} on {target}: {os.strerror(err)}")


def umount(target: Path) -> bool:
    """Unmount `target` (lazily if busy); False if nothing was mounted there.

    Only for paths no sandbox can change (its bundle dir, a bucket's staging dir, a stopped
    sandbox's rootfs): UMOUNT_NOFOLLOW guards the last component only. A mount inside a
    running sandbox's rootfs goes through `_safepath.unmount_in_root`.
    """
    libc = _libc()
    path = os.fsencode(target)
    if libc.umount2(path, UMOUNT_NOFOLLOW) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOENT):  # not a mount point / no such path
        return False
    if err == errno.EBUSY and libc.umount2(path, UMOUNT_NOFOLLOW | MNT_DETACH) == 0:
        return True
    err = ctypes.get_errno()
    raise OSError(err, f"umount {target}: {os.strerror(err)}")


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m[1], 8)), field)


def _escape(path: str) -> str:
    """`path` as mountinfo writes it (the inverse of `_unescape`)."""
    for char in "\\ \t\n":
        path = path.replace(char, f"\\{ord(char):03o}")
    return path


def _entry(line: str) -> MountEntry:
    fields = line.split()
    sep = fields.index("-", 6)
    return MountEntry(
        mountpoint=_unescape(fields[4]),
        fstype=fields[sep + 1],
        source=_unescape(fields[sep + 2]),
        mount_id=int(fields[0]),
    )


def _mountinfo_lines(needle: str = "") -> list[str]:
    """The lines of this process's mountinfo (in mount order) that contain `needle`."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return [line for line in f if needle in line]


def mount_table() -> list[MountEntry]:
    """This process's mounts, in mount order."""
    return [_entry(line) for line in _mountinfo_lines()]


def _top_mount_at(path: Path) -> MountEntry | None:
    target = str(path)
    found = None
    for entry in mount_table():
        if entry.mountpoint == target:
            found = entry  # the last one is on top
    return found


def mount_fstype(path: Path) -> str | None:
    entry = _top_mount_at(path)
    return entry.fstype if entry else None


def mount_source(path: Path) -> str | None:
    entry = _top_mount_at(path)
    return entry.source if entry else None


def mounts_under(prefix: Path) -> list[Path]:
    """Mount points strictly below `prefix`, deepest first (the order to unmount them in)."""
    base = str(prefix).rstrip("/") + "/"
    # NB: only the lines that name `base` are parsed: a host with a thousand sandboxes has
    # thousands of lines, and a destroy parsed all of them twice (py-spy: a quarter of the
    # server's busy time in a create-destroy loop on a host of ~1,000 mounts).
    entries = map(_entry, _mountinfo_lines(_escape(base)))
    points = {e.mountpoint for e in entries if e.mountpoint.startswith(base)}
    return [Path(p) for p in sorted(points, key=lambda p: p.count("/"), reverse=True)]


def unmount_all_under(prefix: Path) -> None:
    """Unmount everything below `prefix`, deepest first (one mount table read)."""
    for mountpoint in mounts_under(prefix):
        umount(mountpoint)
