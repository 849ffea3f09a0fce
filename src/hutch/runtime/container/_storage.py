"""The btrfs storage pool: one subvolume with a quota per sandbox.

This kernel has no project quotas (XFS `pquota` is refused), but btrfs qgroups work: the pool is a
sparse file formatted btrfs, loop-mounted at `HUTCH_HOME/storage`, with quotas on. Each sandbox's
overlay upper and work dirs live in its own subvolume whose qgroup limit is the sandbox's disk
limit, so filling the writable layer ends in EDQUOT inside the sandbox, never on the host disk.

Per-sandbox operations are single ioctls (tens of microseconds), not `btrfs` CLI processes; only
the once-per-boot setup shells out to `mkfs.btrfs` and `mount`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from pathlib import Path

from hutch.runtime.container._errors import StorageError
from hutch.runtime.container._ioctl import ioctl_unlocked
from hutch.runtime.container._mounts import mount_fstype, mount_source
from hutch.runtime.container._spawn import run_tool

# <linux/btrfs.h>: _IOW/_IOR/_IOWR(0x94, nr, struct).
_VOL_ARGS = struct.Struct("q4088s")  # struct btrfs_ioctl_vol_args {__s64 fd; char name[4088];}
BTRFS_IOC_SUBVOL_CREATE = 0x5000940E
BTRFS_IOC_SNAP_DESTROY = 0x5000940F
BTRFS_IOC_QUOTA_CTL = 0xC0109428
BTRFS_IOC_QGROUP_LIMIT = 0x8030942B
BTRFS_QUOTA_CTL_ENABLE = 1
BTRFS_QGROUP_LIMIT_MAX_RFER = 1 << 0
BTRFS_IOC_FS_INFO = 0x8400941F  # struct btrfs_ioctl_fs_info_args (1024 bytes)
BTRFS_IOC_INO_LOOKUP = 0xD0009412  # struct btrfs_ioctl_ino_lookup_args (4096 bytes)
# The root directory of every subvolume has this inode number.
BTRFS_FIRST_FREE_OBJECTID = 256

IMAGE_NAME = "storage.btrfs"
MOUNT_NAME = "storage"


def _vol_args(name: str) -> bytearray:
    return bytearray(_VOL_ARGS.pack(0, name.encode()))


class StoragePool:
    """Subvolumes with a size limit, in a loop-mounted btrfs file under `home`."""

    def __init__(self, home: Path, size_gb: int) -> None:
        self.image = home / IMAGE_NAME
        self.root = home / MOUNT_NAME
        self.size_bytes = size_gb << 30

    def is_mounted(self) -> bool:
        return mount_fstype(self.root) == "btrfs"

    async def ensure(self) -> None:
        """Create, grow and mount the pool as needed, with quotas on. Idempotent."""
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        if not self.image.exists():
            tmp = self.image.with_suffix(".tmp")
            _set_file_size(tmp, self.size_bytes)  # sparse: costs nothing until written
            # Metadata DUP buys nothing on a file that lives on a single disk anyway.
            await _run(
                "mkfs.btrfs", "-q", "-f", "-L", "hutch", "-m", "single", "-d", "single", str(tmp)
            )
            tmp.rename(self.image)
        if not self.is_mounted():
            await _run(
                "mount", "-t", "btrfs", "-o", "loop,noatime", str(self.image), str(self.root)
            )
        if self.image.stat().st_size < self.size_bytes:
            await self._grow()
        os.chmod(self.root, 0o755)  # the sandboxes' roots traverse it to their etc files
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            # A no-op when quotas are already on.
            fcntl.ioctl(
                fd, BTRFS_IOC_QUOTA_CTL, bytearray(struct.pack("QQ", BTRFS_QUOTA_CTL_ENABLE, 0))
            )
        finally:
            os.close(fd)

    async def _grow(self) -> None:
        _set_file_size(self.image, self.size_bytes)
        device = _loop_device_of(self.root)
        await _run("losetup", "--set-capacity", device)
        await _run("btrfs", "filesystem", "resize", "max", str(self.root))

    def path(self, name: str) -> Path:
        return self.root / name

    def exists(self, name: str) -> bool:
        try:
            return os.stat(self.root / name).st_ino == BTRFS_FIRST_FREE_OBJECTID
        except FileNotFoundError:
            return False

    def create(self, name: str, limit_bytes: int) -> Path:
        """A new subvolume whose referenced data and metadata may not exceed `limit_bytes`."""
        root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            ioctl_unlocked(root_fd, BTRFS_IOC_SUBVOL_CREATE, _vol_args(name))
        except OSError as e:
            raise StorageError(f"cannot create subvolume {name!r} in {self.root}: {e}") from e
        finally:
            os.close(root_fd)
        path = self.root / name
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            # qgroupid 0: the qgroup of the subvolume `fd` is in.
            limits = struct.pack("6Q", 0, BTRFS_QGROUP_LIMIT_MAX_RFER, limit_bytes, 0, 0, 0)
            fcntl.ioctl(fd, BTRFS_IOC_QGROUP_LIMIT, bytearray(limits))
        except OSError as e:
            self.delete(name)
            raise StorageError(f"cannot set the disk limit of {path}: {e}") from e
        finally:
            os.close(fd)
        return path

    def qgroup_dir(self, name: str) -> Path | None:
        """Where sysfs shows the qgroup of subvolume `name` (its limit and usage), or None
        (no such subvolume, or a kernel older than 5.9 without qgroups in sysfs)."""
        fd = os.open(self.root / name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            info = bytearray(1024)
            fcntl.ioctl(fd, BTRFS_IOC_FS_INFO, info, True)
            lookup = bytearray(struct.pack("QQ", 0, BTRFS_FIRST_FREE_OBJECTID).ljust(4096, b"\0"))
            ioctl_unlocked(fd, BTRFS_IOC_INO_LOOKUP, lookup)
        except OSError:
            return None
        finally:
            os.close(fd)
        fsid = info[16:32].hex()
        uuid = f"{fsid[:8]}-{fsid[8:12]}-{fsid[12:16]}-{fsid[16:20]}-{fsid[20:]}"
        (tree_id,) = struct.unpack_from("Q", lookup)
        path = Path(f"/sys/fs/btrfs/{uuid}/qgroups/0_{tree_id}")
        return path if path.is_dir() else None

    def delete(self, name: str) -> bool:
        """Delete a subvolume and everything in it; False if there was none.

        The space is reclaimed (and, on Linux >= 6.x, its qgroup removed) by the btrfs cleaner
        thread shortly after.
        """
        if not self.exists(name):
            return False
        root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            ioctl_unlocked(root_fd, BTRFS_IOC_SNAP_DESTROY, _vol_args(name))
        except OSError as e:
            if e.errno == errno.ENOENT:
                return False
            raise StorageError(f"cannot delete subvolume {self.root / name}: {e}") from e
        finally:
            os.close(root_fd)
        return True

    def names(self) -> list[str]:
        """Names of the subvolumes at the top of the pool."""
        if not self.is_mounted():
            return []
        # NB: stat, not the dirent's inode: readdir reports a subvolume by its tree id.
        with os.scandir(self.root) as it:
            return sorted(
                e.name for e in it if e.is_dir(follow_symlinks=False) and self.exists(e.name)
            )


def _set_file_size(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def _loop_device_of(mountpoint: Path) -> str:
    source = mount_source(mountpoint)
    if source is None or not source.startswith("/dev/loop"):
        raise StorageError(f"{mountpoint} is not loop-mounted (source: {source})")
    return source


async def _run(*argv: str) -> None:
    out = await run_tool(argv, capture_stdout=True)
    if out.exit_code != 0:
        text = (out.stdout + out.stderr).decode(errors="replace").strip()
        raise StorageError(f"{' '.join(argv)} failed (exit {out.exit_code}): {text}")
