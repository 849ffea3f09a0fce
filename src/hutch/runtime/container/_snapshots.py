"""Disk snapshots: read-only btrfs snapshots of a sandbox's writable layer, and new sandbox
disks made from them (copy-on-write, so both take milliseconds whatever the disk holds).

A sandbox's disk is its subvolume `storage/<id>` (overlay upper and work dirs, /etc files);
the image below it is read-only and shared. A snapshot is `storage/.snapshots/<snapshot id>`,
a read-only subvolume: not at the top of the pool, so the sweep that removes what no sandbox
claims never sees it. CRIU cannot checkpoint processes on this kernel (vdso), so a snapshot
holds files only; a paused sandbox keeps its memory instead.

A btrfs snapshot commits a transaction (~7 ms here, more under load; a new empty subvolume
needs none). So each snapshot keeps a spare: `storage/.spares/<snapshot id>`, a writable copy
made when the snapshot is taken and again after each use. A create from the snapshot renames
the spare into place (no commit) and so costs what a create from the image costs; without a
spare (taken by a concurrent create) it makes its own copy.

A fork keeps no snapshot at all: each child gets a copy of the source's disk in the spares
dir (`fork_later`), which its create takes over. One commit snapshots the live disk; the other
children's copies are snapshots of that one (so all start from the same moment), made in the
same thread while the creates queue for their turn. The creates start at once and wait for
their own copy only where they need the disk. Copies whose create never came are swept at
the next start, as any spare without its snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import re
import secrets
import struct
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from hutch.runtime.container._errors import StorageError
from hutch.runtime.container._ioctl import ioctl_unlocked
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
# _IOR(0x94, 60, struct btrfs_ioctl_get_subvol_info_args) = 504 bytes; its `otime` (a
# btrfs_ioctl_timespec: __u64 sec, __u32 nsec, padded to 16) is at offset 392.
BTRFS_IOC_GET_SUBVOL_INFO = 0x81F8943C
_SUBVOL_INFO_SIZE = 504
_SUBVOL_OTIME = struct.Struct("=QI")
_SUBVOL_OTIME_AT = 392
SNAPSHOTS_DIR = ".snapshots"
SPARES_DIR = ".spares"
# The suffix of a fork's copy made read-only to be sent to another node (`sendable`).
SENT = "sent"

log = logging.getLogger("hutch.runtime")
SNAPSHOT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def snapshot_subvolume(source: Path, parent: Path, name: str, *, read_only: bool) -> Path:
    """`parent/name`, a snapshot of the subvolume `source` (one ioctl)."""
    return open_snapshot(source, parent, name, read_only=read_only).make()


class PendingSnapshot:
    """A snapshot whose ioctl is ready to run: its directories open, its argument packed.
    `make` in a thread then runs nothing but the ioctl (see `DiskSnapshots.fork_later`)."""

    def __init__(self, source: Path, src_fd: int, dst_fd: int, args: bytearray, path: Path) -> None:
        self.source, self.path = source, path
        self._src_fd, self._dst_fd, self._args = src_fd, dst_fd, args

    def make(self) -> Path:
        """Run the snapshot (its commit) and close the directories; once only."""
        try:
            # NB: not fcntl.ioctl, which holds the GIL through the commit (_ioctl.py).
            ioctl_unlocked(self._dst_fd, BTRFS_IOC_SNAP_CREATE_V2, self._args)
        except OSError as e:
            raise StorageError(f"cannot snapshot {self.source} to {self.path}: {e}") from e
        finally:
            self.close()
        return self.path

    def close(self) -> None:
        for fd in (self._src_fd, self._dst_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def open_snapshot(source: Path, parent: Path, name: str, *, read_only: bool) -> PendingSnapshot:
    """A snapshot of the subvolume `source` as `parent/name`, ready to `make`.

    Raises:
        StorageError: `source` or `parent` cannot be opened.
    """
    try:
        src_fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise StorageError(f"cannot snapshot {source} to {parent / name}: {e}") from e
    try:
        dst_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        os.close(src_fd)
        raise StorageError(f"cannot snapshot {source} to {parent / name}: {e}") from e
    flags = BTRFS_SUBVOL_RDONLY if read_only else 0
    args = bytearray(_VOL_ARGS_V2.pack(src_fd, 0, flags, b"", name.encode()))
    return PendingSnapshot(source, src_fd, dst_fd, args, parent / name)


def subvolume_made_at(path: Path) -> float:
    """When the subvolume `path` was made (its root's otime, in seconds since the epoch).

    NB: not the inode times of its top directory: a snapshot copies its source's.
    """
    info = bytearray(_SUBVOL_INFO_SIZE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.ioctl(fd, BTRFS_IOC_GET_SUBVOL_INFO, info)
        finally:
            os.close(fd)
    except OSError as e:
        raise StorageError(f"cannot read the subvolume info of {path}: {e}") from e
    sec: int
    nsec: int
    sec, nsec = _SUBVOL_OTIME.unpack_from(info, _SUBVOL_OTIME_AT)
    return sec + nsec / 1e9


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
        ioctl_unlocked(fd, BTRFS_IOC_SNAP_DESTROY, args)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return False
        raise StorageError(f"cannot delete subvolume {parent / name}: {e}") from e
    finally:
        os.close(fd)
    return True


class DiskSnapshots:
    """Read-only snapshots of sandbox disks in the storage pool, and their spares."""

    def __init__(self, storage: StoragePool) -> None:
        self._storage = storage
        self.root = storage.root / SNAPSHOTS_DIR
        self.spares = storage.root / SPARES_DIR
        # Claims, refills and deletes of spares; never held across a commit.
        self._lock = threading.Lock()
        self._refilling: set[str] = set()
        self._refills: set[asyncio.Future[None]] = set()
        # Fork copies still being made (`fork_later`); only touched on the event loop.
        self._committing: dict[str, asyncio.Future[None]] = {}

    def path(self, snapshot_id: str) -> Path:
        _check(snapshot_id)
        return self.root / snapshot_id

    def exists(self, snapshot_id: str) -> bool:
        """Whether the read-only snapshot is there (what a backup or a move sends)."""
        return _is_subvolume(self.path(snapshot_id))

    def available(self, snapshot_id: str) -> bool:
        """Whether a create can start from it (its snapshot, or a fork's copy, made or still
        being made)."""
        return (
            snapshot_id in self._committing
            or self.exists(snapshot_id)
            or _is_subvolume(self.spares / snapshot_id)
        )

    def fork_later(self, disk: str, copy_ids: Sequence[str]) -> None:
        """`fork(disk, copy_ids)` in a thread: returns once it has started. Each copy's create
        waits for its copy (`settle`) only when it needs the disk (its server steps, the row
        and the cold-start slot, run meanwhile). Must run on the event loop.

        Raises:
            StorageError: no such disk, or an id is taken (checked before anything starts).
        """
        self._check_fork(disk, copy_ids)
        if taken := [i for i in copy_ids if i in self._committing]:
            raise StorageError(f"snapshot {taken[0]!r} exists")
        loop = asyncio.get_running_loop()
        copies = {copy_id: loop.create_future() for copy_id in copy_ids}
        self._committing.update(copies)

        def made(copy_id: str, error: BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed (the server stops)
                loop.call_soon_threadsafe(_resolve, copies[copy_id], error)

        # NB: everything but the commit's ioctl is done here, on the loop (microseconds):
        # each syscall the thread made before it released the GIL and then waited for the
        # loop to give it back, which delayed the commit the first child waits for.
        try:
            first = self._open_fork(disk, copy_ids)
        except Exception as e:  # each create raises it, as if the thread had failed
            for copy in copies.values():
                _resolve(copy, e)
            return
        try:
            loop.run_in_executor(None, self._fork_from, first, tuple(copy_ids), made)
        except RuntimeError as e:  # no thread to be had (the loop's executor shut down)
            first.close()
            for copy in copies.values():
                _resolve(copy, e)
            raise

    def fork(
        self,
        disk: str,
        copy_ids: Sequence[str],
        made: Callable[[str, BaseException | None], None] = lambda _id, _error: None,
    ) -> None:
        """Writable copies of the disk (subvolume) named `disk` as it is now, one per id, in
        the spares dir: each for the one create that takes it over (`new_disk(path(id))`).
        All are alike even while the sandbox writes: the last id's copy is a snapshot of the
        disk and every other a snapshot of that copy. `made(id, error)` is called as each is
        made (or not); this never raises, a copy that failed has its error there.
        """
        try:
            self._check_fork(disk, copy_ids)
            first = self._open_fork(disk, copy_ids)
        except Exception as e:  # each create raises it
            for copy_id in copy_ids:
                made(copy_id, e)
            return
        self._fork_from(first, copy_ids, made)

    def _open_fork(self, disk: str, copy_ids: Sequence[str]) -> PendingSnapshot:
        """The first copy of `fork`, ready to make: the last id's, of the disk itself.

        Raises:
            StorageError: the spares dir cannot be made, or the disk or it opened.
        """
        try:
            self.spares.mkdir(mode=0o700, exist_ok=True)
        except OSError as e:  # a file in its place: NotADirectoryError, a 500 to the caller
            raise StorageError(f"cannot make the fork copies' dir {self.spares}: {e}") from e
        return open_snapshot(self._storage.path(disk), self.spares, copy_ids[-1], read_only=False)

    def _fork_from(
        self,
        first: PendingSnapshot,
        copy_ids: Sequence[str],
        made: Callable[[str, BaseException | None], None],
    ) -> None:
        # NB: the last id's copy is the source of the others, so its create, which comes
        # last in the queue, waits for them all; the first creates wait for one commit more.
        try:
            first.make()
        except Exception as e:  # each create raises it
            for copy_id in copy_ids:
                made(copy_id, e)
            return
        for copy_id in copy_ids[:-1]:
            try:
                snapshot_subvolume(first.path, self.spares, copy_id, read_only=False)
            except Exception as e:
                made(copy_id, e)
            else:
                made(copy_id, None)
        made(copy_ids[-1], None)

    def _check_fork(self, disk: str, copy_ids: Sequence[str]) -> None:
        for copy_id in copy_ids:
            _check(copy_id)
        if not copy_ids or len(set(copy_ids)) != len(copy_ids):
            raise ValueError(f"fork copy ids must be distinct and at least one: {copy_ids}")
        if not self._storage.exists(disk):
            raise StorageError(f"sandbox {disk!r} has no disk to fork")
        for copy_id in copy_ids:
            if self.exists(copy_id) or _is_subvolume(self.spares / copy_id):
                raise StorageError(f"snapshot {copy_id!r} exists")

    def committing(self, source: Path | None) -> bool:
        """Whether `source` is a fork's copy still being made (see `fork_later`)."""
        return source is not None and source.parent == self.root and source.name in self._committing

    async def settle(self, source: Path) -> None:
        """Wait until the fork's snapshot `source` is committed, if it is being; raises what
        the commit raised. A cancelled wait leaves the commit running (it is a thread)."""
        committing = self._committing.get(source.name) if source.parent == self.root else None
        if committing is None:
            return
        try:
            await asyncio.shield(committing)
        finally:
            if committing.done():
                self._committing.pop(source.name, None)

    async def sendable(self, snapshot_id: str) -> Path:
        """A read-only subvolume `btrfs send` can stream: the snapshot, or for a fork's copy
        (writable, in the spares dir: `fork_later`) a read-only snapshot of it made now (one
        commit), `<id>.sent` beside it: `delete` removes both, and one a crash leaves is
        swept at the next start, as a spare half made is. A fork's children that do not fit
        on the source's node get their copy this way (server/services/_cluster_host.py).

        Raises:
            StorageError: no such snapshot or copy, or btrfs refused.
        """
        path = self.path(snapshot_id)
        await self.settle(path)
        if self.exists(snapshot_id):
            return path
        sealed = self.spares / f"{snapshot_id}.{SENT}"
        if _is_subvolume(sealed):
            return sealed
        if not _is_subvolume(self.spares / snapshot_id):
            raise StorageError(f"no snapshot {snapshot_id} on this host")
        try:
            await asyncio.to_thread(
                snapshot_subvolume, self.spares / snapshot_id, self.spares, sealed.name,
                read_only=True,
            )  # fmt: skip
        except StorageError:
            if not _is_subvolume(sealed):  # not made by a concurrent call either
                raise
        return sealed

    def take(self, disk: str, snapshot_id: str, *, spare: bool = False) -> Path:
        """Snapshot the disk (subvolume) named `disk` as `snapshot_id`; with `spare`, also
        its spare (for creates).

        Raises:
            StorageError: no such disk, the id is taken, or btrfs refused.
        """
        _check(snapshot_id)
        if not self._storage.exists(disk):
            raise StorageError(f"sandbox {disk!r} has no disk to snapshot")
        self.spares.mkdir(mode=0o700, exist_ok=True)
        self.root.mkdir(mode=0o700, exist_ok=True)
        path = snapshot_subvolume(self._storage.path(disk), self.root, snapshot_id, read_only=True)
        if spare:
            try:
                self.refill(snapshot_id)
            except (StorageError, OSError) as e:  # a create without it copies the snapshot
                log.warning("no spare for snapshot %s: %s", snapshot_id, e)
        return path

    def new_disk(self, source: Path, name: str, limit_bytes: int) -> Path:
        """A new writable sandbox disk `name` that starts as `source` is (a snapshot's path,
        or a live disk), with its own quota: a snapshot's spare when there is one."""
        claimed = self.claim_spare(source, name, limit_bytes)
        return claimed or disk_from(source, self._storage, name, limit_bytes)

    def claim_spare(self, source: Path, name: str, limit_bytes: int) -> Path | None:
        """`new_disk` if the snapshot `source` has a spare ready (a rename: no commit, so
        it may run on the event loop); None, and nothing made, if not."""
        path = self._storage.path(name)
        with self._lock:
            spare = self.spares / source.name
            if source.parent != self.root or not _is_subvolume(spare):
                return None
            os.rename(spare, path)
        try:
            set_limit(path, limit_bytes)
        except StorageError:
            delete_subvolume(self._storage.root, name)
            raise
        return path

    def refill(self, snapshot_id: str) -> None:
        """Make the snapshot's spare if it has none (and is not single-use)."""
        with self._lock:
            if (
                snapshot_id in self._refilling
                or not self.exists(snapshot_id)
                or _is_subvolume(self.spares / snapshot_id)
            ):
                return
            self._refilling.add(snapshot_id)
        # Made under another name and renamed: a claim never sees half a spare, and the
        # commit runs outside the lock, so claims and deletes do not wait for it.
        making = f"{snapshot_id}.{secrets.token_hex(4)}"
        try:
            snapshot_subvolume(self.path(snapshot_id), self.spares, making, read_only=False)
            with self._lock:
                if self.exists(snapshot_id) and not _is_subvolume(self.spares / snapshot_id):
                    os.rename(self.spares / making, self.spares / snapshot_id)
        finally:
            delete_subvolume(self.spares, making)  # unused: the snapshot went meanwhile
            with self._lock:
                self._refilling.discard(snapshot_id)

    def refill_later(self, source: Path | None) -> None:
        """After a create from `source`: a new spare for the next, in a thread. Once that
        create has its container: a btrfs commit holds back every write to the pool, the
        overlay mount's and the /etc files' too."""
        # NB: a fork's copy has no snapshot to refill from: no thread for nothing while
        # the child's agent starts.
        if source is None or source.parent != self.root or not self.exists(source.name):
            return
        done = asyncio.get_running_loop().run_in_executor(None, self.refill, source.name)
        self._refills.add(done)
        done.add_done_callback(self._refilled)

    def _refilled(self, done: asyncio.Future[None]) -> None:
        self._refills.discard(done)
        if not done.cancelled() and done.exception() is not None:
            log.warning("could not refill a snapshot's spare: %s", done.exception())

    def delete(self, snapshot_id: str) -> bool:
        _check(snapshot_id)
        with self._lock:
            spare = delete_subvolume(self.spares, snapshot_id)
            sealed = delete_subvolume(self.spares, f"{snapshot_id}.{SENT}")
            return delete_subvolume(self.root, snapshot_id) or spare or sealed

    def sweep_spares(self) -> list[str]:
        """Remove spares whose snapshot is gone (a fork's, at a crash), spares half made and
        fork copies made to be sent. Only where no create or snapshot runs yet
        (`Runtime.setup`)."""
        if not self.spares.is_dir():
            return []
        stale = []
        for entry in self.spares.iterdir():
            snapshot_id, _, making = entry.name.partition(".")
            if making or not SNAPSHOT_ID_RE.match(snapshot_id) or not self.exists(snapshot_id):
                stale.append(entry.name)
        for name in stale:
            delete_subvolume(self.spares, name)
        return stale

    def made_at(self, snapshot_id: str) -> float:
        """When the snapshot was taken or received here (seconds since the epoch).

        Raises:
            StorageError: no such snapshot.
        """
        return subvolume_made_at(self.path(snapshot_id))

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


def _resolve(copy: asyncio.Future[None], error: BaseException | None) -> None:
    if copy.done():
        return
    if error is None:
        copy.set_result(None)
    else:
        copy.set_exception(error)


def _is_subvolume(path: Path) -> bool:
    try:
        return os.stat(path).st_ino == BTRFS_FIRST_FREE_OBJECTID
    except (FileNotFoundError, NotADirectoryError):  # the latter: a file where a dir should be
        return False


def _check(snapshot_id: str) -> None:
    if not SNAPSHOT_ID_RE.match(snapshot_id):
        raise ValueError(f"invalid snapshot id {snapshot_id!r}")
