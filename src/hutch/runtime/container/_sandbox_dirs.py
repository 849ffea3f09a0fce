"""A sandbox's directories and files on the host: where its bundle and storage live (the
layout in _runtime's docstring), making its writable layer, and the /etc files bind-mounted
into it. What `Runtime` keeps for each sandbox, apart from starting and stopping it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hutch.runtime._idmap import HOST_ID_BASE
from hutch.runtime.container import _workcgroup as workcgroup
from hutch.runtime.container._host_files import (
    etc_hosts,
    listen_unix,
    make_dir,
    pin_hosts,
    read_text_or_empty,
    resolv_conf,
    rewrite_in_place,
)
from hutch.runtime.container._snapshots import DiskSnapshots
from hutch.runtime.container._spec import SandboxSpec
from hutch.runtime.container._storage import StoragePool
from hutch.runtime.container._timing import timed


@dataclass(frozen=True, slots=True)
class SandboxPaths:
    bundle: Path
    rootfs: Path
    config: Path
    socket: Path
    runc_log: Path
    agent_log: Path
    storage: Path
    upper: Path
    work: Path
    etc: Path
    halted: Path  # stopped or destroyed on purpose: its init's end is no death

    @classmethod
    def of(cls, bundle: Path, storage: Path) -> SandboxPaths:
        """The paths of a sandbox whose bundle dir and subvolume are these."""
        return cls(
            bundle=bundle,
            rootfs=bundle / "rootfs",
            config=bundle / "config.json",
            socket=bundle / "agent.sock",
            runc_log=bundle / "runc.log",
            agent_log=bundle / "agent.log",
            storage=storage,
            upper=storage / "upper",
            work=storage / "work",
            etc=storage / "etc",
            halted=bundle / "halted",
        )


@dataclass
class StartFds:
    """What `runc run` is handed: the agent's listening socket (its fd 3) and the fds of the
    sandbox's `work` cgroup; closed once runc has its own copies, or the start failed."""

    listener: socket.socket
    work_fds: list[int]

    def close(self) -> None:
        self.listener.close()
        fds, self.work_fds = self.work_fds, []
        for fd in fds:
            os.close(fd)


def start_fds(
    spec: SandboxSpec, paths: SandboxPaths, cgroup: str, memsw: bool, timings: dict[str, float]
) -> StartFds:
    """The agent's socket (in the bundle dir, made already) and the `work` cgroup (made, with
    its limits). Neither needs the sandbox's disk: a fork's create makes them while its
    disk's copy commits."""
    with timed(timings, "socket"):
        listener = listen_unix(paths.socket)
    try:
        with timed(timings, "work_cgroup"):
            work = workcgroup.work_limits_of(spec.limits, memsw)
            return StartFds(listener, workcgroup.prepare(cgroup, work))
    except BaseException:
        listener.close()
        raise


@contextlib.contextmanager
def halting(paths: SandboxPaths) -> Iterator[None]:
    """Mark the sandbox as ended on purpose before its container is: the death watch of every
    process on this home (another API replica's too, which cannot see this one's locks) then
    does not report its init's end as `agent_exited` while this stop or destroy runs. A stop
    that fails takes the mark back."""
    with contextlib.suppress(FileNotFoundError):
        paths.halted.touch()
    try:
        yield
    except BaseException:
        paths.halted.unlink(missing_ok=True)
        raise


async def make_storage(
    spec: SandboxSpec,
    paths: SandboxPaths,
    pool: StoragePool,
    snapshots: DiskSnapshots,
    resolv: Path,
) -> None:
    """The new sandbox's disk: an empty one, or a copy of `spec.disk_from`."""
    if spec.disk_from is None:
        prepare_storage(spec, paths, pool, resolv)
        return
    await snapshots.settle(spec.disk_from)  # a fork's snapshot may still be committing
    if not copy_storage(spec, paths, snapshots, resolv, spare_only=True):
        # NB: a btrfs snapshot commits a transaction: not on the event loop. A cancelled
        # create rolls back once the copy is done, not before (it would outlive that).
        copying = asyncio.ensure_future(
            asyncio.to_thread(copy_storage, spec, paths, snapshots, resolv)
        )
        try:
            await asyncio.shield(copying)
        finally:
            await asyncio.wait([copying])


def copy_storage(
    spec: SandboxSpec,
    paths: SandboxPaths,
    snapshots: DiskSnapshots,
    resolv: Path,
    *,
    spare_only: bool = False,
) -> bool:
    """Make the sandbox's subvolume as `spec.disk_from` is (a snapshot, or a live disk).
    `spare_only`: only if a snapshot's spare is ready (no btrfs commit); False if not."""
    assert spec.disk_from is not None
    limit = spec.limits.disk_mb << 20
    if spare_only:
        if snapshots.claim_spare(spec.disk_from, spec.id, limit) is None:
            return False
    else:
        snapshots.new_disk(spec.disk_from, spec.id, limit)
    # The copy has the upper/work/etc dirs of its source already.
    write_etc_files(spec, paths, resolv, overwrite=True)
    return True


def prepare_storage(
    spec: SandboxSpec, paths: SandboxPaths, pool: StoragePool, resolv: Path
) -> None:
    """Make the sandbox's subvolume with its overlay dirs."""
    subvolume = pool.create(spec.id, spec.limits.disk_mb << 20)
    os.chmod(subvolume, 0o755)  # created under the umask; the sandbox's root traverses it
    lower = os.stat(spec.image.rootfs)
    # The overlay's root takes the upper dir's owner and mode: make them the image's.
    make_dir(paths.upper, stat.S_IMODE(lower.st_mode), owner=(lower.st_uid, lower.st_gid))
    make_dir(paths.work, 0o700, owner=(HOST_ID_BASE, HOST_ID_BASE))
    if not (spec.image.rootfs / "workspace").is_dir():
        make_dir(paths.upper / "workspace", 0o755, owner=(HOST_ID_BASE, HOST_ID_BASE))
    write_etc_files(spec, paths, resolv, overwrite=True)


def write_etc_files(
    spec: SandboxSpec, paths: SandboxPaths, resolv: Path, *, overwrite: bool
) -> None:
    """/etc/hosts, hostname and resolv.conf; `overwrite=False` keeps the sandbox's edits."""
    files = {
        "hosts": etc_hosts(spec.hostname, spec.network.hosts),
        "hostname": f"{spec.hostname}\n",
        "resolv.conf": resolv_conf(read_text_or_empty(resolv), spec.network),
    }
    make_dir(paths.etc, 0o755)
    for name, text in files.items():
        path = paths.etc / name
        if not overwrite and path.exists():
            if name == "hosts":  # the sandbox's edits kept, the allowed names as now
                rewrite_in_place(path, pin_hosts(path.read_text(), spec.network.hosts))
            continue  # the sandbox may have edited it
        path.write_text(text)
        # Root inside may edit them (as in Docker); they count against its disk quota.
        os.chown(path, HOST_ID_BASE, HOST_ID_BASE)
        os.chmod(path, 0o644)


def agent_stderr(paths: SandboxPaths, debug_agent: bool) -> int:
    """The fd the agent's stderr goes to: agent.log with `debug_agent`, else /dev/null."""
    if debug_agent:
        return os.open(
            paths.agent_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
        )
    return os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
