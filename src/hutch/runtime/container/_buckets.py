"""S3 bucket mounts: `rclone mount` on the host, made visible inside a running sandbox.

The FUSE daemon runs on the host, as root, outside every sandbox; only the mounted files reach
the sandbox. Credentials live in an rclone config file (0600, in a 0700 directory under
`HUTCH_HOME/buckets`), never in the sandbox's rootfs, environment or mount options, and never
on rclone's command line.

How a mount gets into a running sandbox: the sandbox's overlay rootfs is a *shared* mount on
the host (see `_overlay.mount_overlay`) and runc makes the container's "/" a slave of it, so a
mount made on the host under `sandboxes/<id>/rootfs/...` propagates into the sandbox. rclone
mounts on a private staging directory; a bind of that lands on the target directory inside the
rootfs, which is opened component by component with O_NOFOLLOW (and created as sandbox root if
missing), so a symlink planted by sandbox code cannot redirect the mount onto a host path.

Host layout, per mount:

    buckets/<sandbox>/<n>/      0700, root only
        rclone.conf             the remote with its credentials (0600)
        mount.json              what was asked for, and rclone's pid (state for re-adoption)
        mnt/                    where rclone mounts (the staging mount point)
        cache/  rclone.log      rclone's VFS write cache and its log
        rc.sock                 rclone's remote control (asked for its uploads at unmount)

Writes: rclone's VFS write cache starts uploading a file `WRITE_BACK` (0.02 s) after it was
last closed, from its write-back queue, which follows renames and retries failed uploads (fsync
does not upload: rclone only syncs its local cache copy); objects written by other clients show
up within `DIR_CACHE_TIME`. An unmount (and a destroy) waits for the uploads rclone still has
to make, asking it on its remote control's socket (`_rclone_rc.py`), at most `UPLOAD_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from hutch.runtime.container._bucket_spec import (
    CHECK_TIMEOUT,
    MOUNT_TIMEOUT,
    RCLONE_NET_FLAGS,
    STOP_TIMEOUT,
    UPLOAD_TIMEOUT,
    BucketError,
    BucketMount,
    BucketMountFailed,
    BucketNotMounted,
    BucketPathBusy,
    BucketPathInvalid,
    BucketRequest,
    check_request,
    devname,
    mount_args,
    normalize_mount_path,
    overlaps,
    rclone_bin,
    rclone_config,
    request_from_config,
)
from hutch.runtime.container._mounts import MS_BIND, MountEntry, mount, mount_table, umount
from hutch.runtime.container._rclone_rc import RC_SOCKET, wait_for_uploads
from hutch.runtime.container._safepath import PathKeptMoving, unmount_in_root

log = logging.getLogger("hutch.runtime.buckets")


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for s in secrets:
        text = text.replace(s, "***")
    return text


def _pid_start(pid: int) -> str:
    """Field 22 of /proc/<pid>/stat: tells a live process from a later one with its pid.
    Empty for a zombie: a killed rclone whose new parent does not reap it is still dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return ""
    return fields[19]


def _alive(pid: int, start: str) -> bool:
    return pid > 0 and bool(start) and _pid_start(pid) == start


# -- the manager -------------------------------------------------------------------------------


class BucketMounts:
    """Bucket mounts of every sandbox under one `HUTCH_HOME`."""

    def __init__(self, home: Path) -> None:
        self._root = home / "buckets"
        self._locks: dict[str, asyncio.Lock] = {}
        self._reapers: set[asyncio.Task[int]] = set()

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    def _dir(self, sandbox_id: str) -> Path:
        return self._root / sandbox_id

    def sandbox_ids(self) -> list[str]:
        if not self._root.is_dir():
            return []
        return [p.name for p in self._root.iterdir() if p.is_dir()]

    def list(self, sandbox_id: str) -> list[BucketMount]:
        mounts = []
        base = self._dir(sandbox_id)
        if not base.is_dir():
            return []
        for slot in sorted(base.iterdir()):
            record = _read_record(slot)
            if record is not None:
                mounts.append(record)
        return sorted(mounts, key=lambda m: m.created_at)

    async def mount(self, sandbox_id: str, rootfs: Path, req: BucketRequest) -> BucketMount:
        """Mount `req.bucket` at `req.mount_path` inside the running sandbox whose rootfs (on
        the host) is `rootfs`.

        Raises:
            ValueError / BucketPathInvalid: malformed request.
            BucketPathBusy: a mount is already there.
            BucketMountFailed: rclone could not reach the bucket; nothing was mounted.
        """
        check_request(req)
        path = normalize_mount_path(req.mount_path)
        async with self._lock(sandbox_id):
            for other in self.list(sandbox_id):
                if overlaps(other.mount_path, path):
                    raise BucketPathBusy(
                        f"{path} is already a mount, or overlaps the bucket mounted at "
                        f"{other.mount_path}; unmount it first or choose another path"
                    )
            host_target = rootfs / path.lstrip("/")
            if any(Path(e.mountpoint) == host_target for e in mount_table()):
                raise BucketPathBusy(f"{path} is already a mount point; choose another path")
            slot_dir, record = await self._keep_slot(sandbox_id, path, req)
            try:
                record = await self._start_rclone(
                    slot_dir, record, root_owner(rootfs), req.credentials.secrets()
                )
                bind_into_rootfs(slot_dir / "mnt", rootfs, path)
            except BaseException:
                await asyncio.shield(self._remove_slot(rootfs, slot_dir, _read_record(slot_dir)))
                raise
            log.info("mounted bucket %s at %s in sandbox %s", req.bucket, path, sandbox_id)
            return record

    def requests(self, sandbox_id: str) -> builtins.list[BucketRequest]:
        """What each of the sandbox's mounts was asked with, credentials included, oldest
        first: what another host needs to mount them again (a sandbox moved between nodes).
        Raises ValueError for a mount whose state is not what `mount` wrote."""
        base = self._dir(sandbox_id)
        return [
            request_from_config((base / record.slot / "rclone.conf").read_text(), record)
            for record in self.list(sandbox_id)
        ]

    async def adopt(self, sandbox_id: str, requests: Sequence[BucketRequest]) -> None:
        """Keep these mounts (`requests` of another host) for the stopped sandbox: its next
        start (`restore`) runs rclone and binds them. Each bucket is reached once first.

        Raises:
            BucketMountFailed: this host cannot reach a bucket; nothing is kept.
            ValueError / BucketPathBusy: malformed or overlapping requests.
        """
        async with self._lock(sandbox_id):
            paths = [m.mount_path for m in self.list(sandbox_id)]
            kept: builtins.list[Path] = []
            try:
                for req in requests:
                    check_request(req)
                    path = normalize_mount_path(req.mount_path)
                    if any(overlaps(other, path) for other in paths):
                        raise BucketPathBusy(f"{path} overlaps another bucket mount")
                    paths.append(path)
                    kept.append((await self._keep_slot(sandbox_id, path, req))[0])
            except BaseException:
                for slot_dir in kept:
                    shutil.rmtree(slot_dir, ignore_errors=True)
                raise

    async def _keep_slot(
        self, sandbox_id: str, path: str, req: BucketRequest
    ) -> tuple[Path, BucketMount]:
        """A new slot for `req` at `path`: its rclone config and record, once the bucket
        answered (rclone not started; nothing is left of it on failure)."""
        slot_dir = self._dir(sandbox_id) / f"{int(time.time() * 1000):x}-{os.urandom(3).hex()}"
        _mkdir_private(self._root)
        _mkdir_private(self._dir(sandbox_id))
        _mkdir_private(slot_dir)
        try:
            conf = slot_dir / "rclone.conf"
            fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(rclone_config(req))
            (slot_dir / "mnt").mkdir(mode=0o700)
            await _check_bucket(conf, req)
            record = BucketMount(
                slot=slot_dir.name,
                mount_path=path,
                bucket=req.bucket,
                endpoint=req.endpoint,
                prefix=req.prefix.strip("/") if req.prefix else None,
                read_only=req.read_only,
                pid=0,  # no rclone yet: `mount` starts it, or `restore` at the next start
                pid_start="",
                created_at=time.time(),
            )
            _write_record(slot_dir, record)
        except BaseException:
            shutil.rmtree(slot_dir, ignore_errors=True)
            raise
        return slot_dir, record

    async def _start_rclone(
        self, slot_dir: Path, record: BucketMount, owner: int, secrets: tuple[str, ...] = ()
    ) -> BucketMount:
        staging = slot_dir / "mnt"
        log_path = slot_dir / "rclone.log"
        log_path.unlink(missing_ok=True)
        # A dead rclone's socket: its successor could not listen there.
        (slot_dir / RC_SOCKET).unlink(missing_ok=True)
        proc = await asyncio.create_subprocess_exec(
            *mount_args(rclone_bin(), record, slot_dir, owner),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # outlives a server crash; re-adopted from mount.json
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            cwd=slot_dir,  # where its remote control's socket is (a relative name)
        )
        record = _replace(record, pid=proc.pid, pid_start=_pid_start(proc.pid))
        _write_record(slot_dir, record)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while time.monotonic() < deadline:
            if _is_fuse_mount(staging):
                # The server does not wait on rclone: reap it in the background (holding a
                # strong reference: asyncio keeps only weak ones to tasks).
                task = asyncio.get_running_loop().create_task(proc.wait())
                self._reapers.add(task)
                task.add_done_callback(self._reapers.discard)
                return record
            if proc.returncode is not None:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        reason = _scrub(_tail(log_path), secrets) or f"rclone exited with {proc.returncode}"
        raise BucketMountFailed(f"rclone mount of bucket {record.bucket!r} failed: {reason}")

    async def unmount(self, sandbox_id: str, rootfs: Path, mount_path: str) -> None:
        """Unmount the bucket at `mount_path` (uploading pending writes first).

        Raises:
            BucketNotMounted: no bucket is mounted there.
        """
        path = normalize_mount_path(mount_path)
        async with self._lock(sandbox_id):
            for record in self.list(sandbox_id):
                if record.mount_path == path:
                    await self._remove_slot(rootfs, self._dir(sandbox_id) / record.slot, record)
                    return
        raise BucketNotMounted(f"no bucket is mounted at {path}; list mounts with `hutch info`")

    async def remove_all(self, sandbox_id: str, rootfs: Path) -> None:
        """Unmount every bucket of a sandbox and remove its bucket state (destroy and sweep)."""
        base = self._dir(sandbox_id)
        async with self._lock(sandbox_id):
            if base.is_dir():
                for slot_dir in sorted(base.iterdir()):
                    await self._remove_slot(rootfs, slot_dir, _read_record(slot_dir))
                shutil.rmtree(base, ignore_errors=True)
        self._locks.pop(sandbox_id, None)

    async def _remove_slot(self, rootfs: Path, slot_dir: Path, record: BucketMount | None) -> None:
        if record is not None:
            # Found by source, not by path: sandbox code may have renamed a parent directory.
            # Unmounted by mount id through an fd opened beneath the rootfs: a name, even
            # read a moment ago, may lead through a planted symlink to a host mount.
            # The unmount propagates into the sandbox's mount namespace too.
            _unmount_binds(rootfs, record)
        await _stop_rclone(slot_dir, record)
        shutil.rmtree(slot_dir, ignore_errors=True)

    async def restore(self, sandbox_id: str, rootfs: Path) -> None:
        """After a server restart (or a sandbox restart): re-adopt live rclone processes,
        start those that died, and bind again what is missing inside the sandbox."""
        async with self._lock(sandbox_id):
            for record in self.list(sandbox_id):
                slot_dir = self._dir(sandbox_id) / record.slot
                try:
                    if not (
                        _alive(record.pid, record.pid_start) and _is_fuse_mount(slot_dir / "mnt")
                    ):
                        # Binds of a dead FUSE connection only answer ENOTCONN: replace them.
                        _unmount_binds(rootfs, record)
                        await _stop_rclone(slot_dir, record)
                        await self._start_rclone(slot_dir, record, root_owner(rootfs))
                        log.info("restarted rclone for %s in %s", record.mount_path, sandbox_id)
                    if not _mounts_of(rootfs, record):
                        bind_into_rootfs(slot_dir / "mnt", rootfs, record.mount_path)
                except (BucketError, OSError) as exc:
                    log.error(
                        "could not restore bucket mount %s of sandbox %s: %s",
                        record.mount_path,
                        sandbox_id,
                        exc,
                    )


# -- helpers -----------------------------------------------------------------------------------


async def _check_bucket(conf: Path, req: BucketRequest) -> None:
    """List the bucket once, so bad credentials, an unknown bucket or an unreachable endpoint
    fail the request instead of giving a mount whose every access errors."""
    proc = await asyncio.create_subprocess_exec(
        rclone_bin(),
        "lsf",
        "--config",
        str(conf),
        "--max-depth",
        "1",
        "--retries",
        "1",
        *RCLONE_NET_FLAGS,
        f"hutch:{req.bucket}",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), CHECK_TIMEOUT)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise BucketMountFailed(
            f"endpoint {req.endpoint} did not answer within {CHECK_TIMEOUT:g}s; check the URL"
        ) from None
    if proc.returncode != 0:
        lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
        detail = _scrub(
            lines[-1] if lines else f"rclone exited with {proc.returncode}",
            req.credentials.secrets(),
        )
        raise BucketMountFailed(
            f"cannot access bucket {req.bucket!r} at {req.endpoint}: {detail}; check the "
            "bucket name, the endpoint and the credentials"
        )


async def _stop_rclone(slot_dir: Path, record: BucketMount | None) -> None:
    staging = slot_dir / "mnt"
    if record is not None and _alive(record.pid, record.pid_start):
        # NB: SIGTERM cancels the uploads under way (and the slot's cache, where rclone would
        # find them again, goes with the slot): first wait until it has none to make.
        if not await wait_for_uploads(slot_dir, UPLOAD_TIMEOUT):
            log.warning("bucket %s: stopping rclone with uploads unfinished", slot_dir)
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while _alive(record.pid, record.pid_start) and time.monotonic() < deadline:  # noqa: ASYNC110 - not our child after a restart: poll
            await asyncio.sleep(0.05)
        if _alive(record.pid, record.pid_start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGKILL)
    while _is_mount_point(staging):
        if not umount(staging):
            break


def root_owner(rootfs: Path) -> int:
    """The host uid of the sandbox's root: its rootfs's owner (its uid range's first id)."""
    return os.stat(rootfs).st_uid


def bind_into_rootfs(source: Path, rootfs: Path, path: str) -> None:
    """Bind `source` onto `path` inside the sandbox rootfs, never following a symlink."""
    with _open_target(rootfs, path) as fd:
        mount(str(source), Path(f"/proc/self/fd/{fd}"), "none", MS_BIND, "")


@contextlib.contextmanager
def _open_target(rootfs: Path, path: str) -> Iterator[int]:
    """An O_PATH fd of the directory `path` under `rootfs`, walking one component at a time
    with O_NOFOLLOW and creating missing ones as sandbox root."""
    flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(rootfs, flags)
    owner = os.fstat(fd).st_uid  # sandbox root, whichever uid range it has
    try:
        for part in path.strip("/").split("/"):
            try:
                nxt = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError:
                real = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=real)
                        os.chown(part, owner, owner, dir_fd=real, follow_symlinks=False)
                finally:
                    os.close(real)
                nxt = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise BucketPathInvalid(
                        f"mount_path {path!r}: {part!r} is a symlink or not a directory inside "
                        "the sandbox; use a plain directory path"
                    ) from None
                raise
            os.close(fd)
            fd = nxt
        yield fd
    finally:
        os.close(fd)


def _mounts_of(rootfs: Path, record: BucketMount) -> list[MountEntry]:
    """Where `record`'s bucket is bound under `rootfs`, deepest/latest first."""
    base = str(rootfs).rstrip("/") + "/"
    source = devname(record)
    found = [e for e in mount_table() if e.source == source and e.mountpoint.startswith(base)]
    return list(reversed(found))


def _unmount_binds(rootfs: Path, record: BucketMount) -> None:
    for entry in _mounts_of(rootfs, record):
        try:
            unmount_in_root(rootfs, entry.mount_id)
        except PathKeptMoving:
            raise BucketPathBusy(
                f"the bucket at {record.mount_path} kept moving while it was being unmounted "
                "(something in the sandbox keeps renaming its directories); stop that and "
                "unmount again"
            ) from None


def _is_mount_point(path: Path) -> bool:
    p = str(path)
    return any(e.mountpoint == p for e in mount_table())


def _is_fuse_mount(path: Path) -> bool:
    p = str(path)
    return any(e.mountpoint == p and e.fstype.startswith("fuse") for e in mount_table())


def _mkdir_private(path: Path) -> None:
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def _write_record(slot_dir: Path, record: BucketMount) -> None:
    tmp = slot_dir / "mount.json.tmp"
    tmp.write_text(json.dumps(asdict(record)))
    os.replace(tmp, slot_dir / "mount.json")


def _read_record(slot_dir: Path) -> BucketMount | None:
    try:
        data = json.loads((slot_dir / "mount.json").read_text())
        return BucketMount(**data)
    except (OSError, ValueError, TypeError):
        return None


def _replace(record: BucketMount, **changes: object) -> BucketMount:
    data: Mapping[str, object] = {**asdict(record), **changes}
    return BucketMount(**data)  # type: ignore[arg-type]


def _tail(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""
