"""Disk snapshots: read-only btrfs snapshots of a sandbox's writable layer, and new sandbox
disks made from them (copy-on-write, so both take milliseconds whatever the disk holds).

A sandbox's disk is its subvolume `storage/<id>` (overlay upper and work dirs, /etc files);
the image below it is read-only and shared. A snapshot is `storage/.snapshots/<snapshot id>`,
a read-only subvolume: not at the top of the pool, so the sweep that removes what no sandbox
claims never sees it. CRIU cannot checkpoint processes on this kernel (vdso), so a snapshot
holds files only; a paused sandbox keeps its memory instead.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import struct
from pathlib import Path

from hutch.runtime.container._errors import StorageError
from hutch.runtime.container._storage import (
    BTRFS_FIRST_FREE_OBJECTID,
    BTRFS_IOC_QGROUP_LIMIT,
    BTRFS_IOC_SNAP_DESTROY,
    BTRFS_QGROUP_LIMIT_MAX_RFER,
    StoragePool,
)

# _IOW(0x94, 23, struct btrfs_ioctl_vol_args_v2): {__s64 fd; __u64 transid; __u64 flags;
# __u64 unused[4]; char name[4040];} = 4096 bytes.
BTRFS_IOC_SNAP_CREATE_V2 = 0x50009417
_VOL_ARGS_V2 = struct.Struct("qQQ32s4040s")
BTRFS_SUBVOL_RDONLY = 1 << 1
SNAPSHOTS_DIR = ".snapshots"
SNAPSHOT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def snapshot_subvolume(source: Path, parent: Path, name: str, *, read_only: bool) -> Path:
    """`parent/name`, a snapshot of the subvolume `source` (one ioctl)."""
    src_fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY)
    try:
        dst_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            flags = BTRFS_SUBVOL_RDONLY if read_only else 0
            args = bytearray(_VOL_ARGS_V2.pack(src_fd, 0, flags, b"", name.encode()))
            fcntl.ioctl(dst_fd, BTRFS_IOC_SNAP_CREATE_V2, args)
        except OSError as e:
            raise StorageError(f"cannot snapshot {source} to {parent / name}: {e}") from e
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)
    return parent / name


def set_limit(subvolume: Path, limit_bytes: int) -> None:
    fd = os.open(subvolume, os.O_RDONLY | os.O_DIRECTORY)
    try:
        limits = struct.pack("6Q", 0, BTRFS_QGROUP_LIMIT_MAX_RFER, limit_bytes, 0, 0, 0)
        fcntl.ioctl(fd, BTRFS_IOC_QGROUP_LIMIT, bytearray(limits))
    except OSError as e:
        raise StorageError(f"cannot set the disk limit of {subvolume}: {e}") from e
    finally:
        os.close(fd)


def delete_subvolume(parent: Path, name: str) -> bool:
    """Delete `parent/name` (read-only or not); False if it was not there."""
    try:
        if os.stat(parent / name).st_ino != BTRFS_FIRST_FREE_OBJECTID:
            return False
    except FileNotFoundError:
        return False
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        args = bytearray(struct.pack("q4088s", 0, name.encode()))
        fcntl.ioctl(fd, BTRFS_IOC_SNAP_DESTROY, args)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return False
        raise StorageError(f"cannot delete subvolume {parent / name}: {e}") from e
    finally:
        os.close(fd)
    return True


class DiskSnapshots:
    """Read-only snapshots of sandbox disks in the storage pool."""

    def __init__(self, storage: StoragePool) -> None:
        self._storage = storage
        self.root = storage.root / SNAPSHOTS_DIR

    def path(self, snapshot_id: str) -> Path:
        _check(snapshot_id)
        return self.root / snapshot_id

    def exists(self, snapshot_id: str) -> bool:
        try:
            return os.stat(self.path(snapshot_id)).st_ino == BTRFS_FIRST_FREE_OBJECTID
        except FileNotFoundError:
            return False

    def take(self, disk: str, snapshot_id: str) -> Path:
        """Snapshot the disk (subvolume) named `disk` as `snapshot_id`.

        Raises:
            StorageError: no such disk, the id is taken, or btrfs refused.
        """
        _check(snapshot_id)
        if not self._storage.exists(disk):
            raise StorageError(f"sandbox {disk!r} has no disk to snapshot")
        self.root.mkdir(mode=0o700, exist_ok=True)
        return snapshot_subvolume(self._storage.path(disk), self.root, snapshot_id, read_only=True)

    def delete(self, snapshot_id: str) -> bool:
        return delete_subvolume(self.root, snapshot_id)

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if self.exists(p.name))


def disk_from(source: Path, storage: StoragePool, name: str, limit_bytes: int) -> Path:
    """A new writable sandbox disk `name` that starts as a copy of the subvolume `source`
    (a snapshot, or another sandbox's live disk for fork), with its own quota."""
    path = snapshot_subvolume(source, storage.root, name, read_only=False)
    try:
        set_limit(path, limit_bytes)
    except StorageError:
        delete_subvolume(storage.root, name)
        raise
    return path


def _check(snapshot_id: str) -> None:
    if not SNAPSHOT_ID_RE.match(snapshot_id):
        raise ValueError(f"invalid snapshot id {snapshot_id!r}")
