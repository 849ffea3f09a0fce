"""The lifecycle of a sandbox after its create: pause, resume, stop, start, its lifetime, idle
sleep and wake-on-demand, snapshots and fork. One service object (`Lifecycle`) that the /v1
routes, the reconciler and other front doors (the E2B-compatible API) call.

States (`SandboxRecord.status`, with `status_reason` saying why):

    running  --pause-->  paused   (cgroup freezer: processes frozen, memory kept)
    running  --stop--->  stopped  (processes ended; disk, address and settings kept)
    paused   --stop--->  stopped
    paused/stopped --resume/start/any request--> running
    anything --destroy--> gone;   a start that fails --> stopped with the reason, 503

Lifetime: `expires_at` = now + `timeout` at create, `set_timeout` and after an explicit
pause/stop is undone; an explicit pause or stop clears it (the caller asked to keep the
sandbox). Idle sleeps keep it running: a forgotten sandbox still ends. At expiry `on_timeout`
applies (destroy, stop or pause).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hutch.node import AgentError
from hutch.runtime import ImageNotFound, ImageStore, Runtime, SandboxRuntimeError
from hutch.server._durations import format_duration
from hutch.server._errors import (
    ImageNotFoundError,
    InvalidRequest,
    SandboxStartFailed,
    SandboxStateConflict,
    SnapshotExists,
    SnapshotNotFound,
)
from hutch.server._models import SandboxCreate
from hutch.server.services._keys import now_iso
from hutch.server.services._sandboxes import SandboxManager, entrypoint_request
from hutch.server.store._sqlite import SandboxRecord, SnapshotRecord, Store

log = logging.getLogger("hutch.server")

MAX_FORK = 50


@dataclass
class LifecyclePolicy:
    """Server-wide lifecycle settings (from ServerConfig).

    Attributes:
        default_timeout: lifetime of a sandbox created without `timeout` (seconds; None: none).
    """

    default_timeout: float | None = 3600.0


@dataclass
class _Activity:
    last: dict[str, float] = field(default_factory=dict)

    def touch(self, sandbox_id: str) -> None:
        self.last[sandbox_id] = time.monotonic()

    def idle_for(self, sandbox_id: str, now: float) -> float:
        # A sandbox never seen since the server started counts from then.
        return now - self.last.setdefault(sandbox_id, now)


class Lifecycle:
    """Pause, resume, stop, start, set_timeout, wake, snapshot, fork: one typed service."""

    def __init__(
        self,
        manager: SandboxManager,
        store: Store,
        runtime: Runtime,
        images: ImageStore,
        *,
        policy: LifecyclePolicy,
        agent_timeout: float,
    ) -> None:
        self._manager = manager
        self._store = store
        self._runtime = runtime
        self._images = images
        self.policy = policy
        self._agent_timeout = agent_timeout
        self.activity = _Activity()
        self._wakes: dict[str, asyncio.Future[SandboxRecord]] = {}
        # Called with the sandbox id after its container went away or came back (stop/start):
        # caches of its address and connections drop what they hold.
        self.on_stop: list[Callable[[str], None]] = []
        manager.waker = self.wake
        manager.on_use = self.activity.touch

    # -- create ---------------------------------------------------------------------------

    def with_defaults(self, request: SandboxCreate) -> SandboxCreate:
        """The request with the server's default lifetime when it gives none."""
        if request.timeout is None and self.policy.default_timeout:
            return request.model_copy(update={"timeout": self.policy.default_timeout})
        return request

    async def create(self, request: SandboxCreate) -> SandboxRecord:
        """Create a sandbox (from a snapshot if `request.snapshot`)."""
        request = self.with_defaults(request)
        if request.snapshot is not None:
            request, disk = self._from_snapshot(request)
            record = await self._manager.create(request, disk_from=disk)
        else:
            record = await self._manager.create(request)
        self.activity.touch(record.id)
        return record

    async def get_or_create(
        self, sandbox_id: str, request: SandboxCreate
    ) -> tuple[SandboxRecord, bool]:
        request = self.with_defaults(request)
        disk = None
        if request.snapshot is not None:
            request, disk = self._from_snapshot(request)
        record, created = await self._manager.get_or_create(sandbox_id, request, disk_from=disk)
        self.activity.touch(record.id)
        return record, created

    def _from_snapshot(self, request: SandboxCreate) -> tuple[SandboxCreate, Path]:
        """The snapshot's image, env and limits (its disk needs them), with the request's
        lifetime, idle policy, labels and secrets."""
        assert request.snapshot is not None
        snap = self.get_snapshot(request.snapshot)
        spec = SandboxRecord.from_spec_json(snap.spec)
        update = {
            "image": snap.image_id,
            "env": {**spec.env, **request.env},
            "cpu": spec.cpu,
            "memory_mb": spec.memory_mb,
            "disk_mb": max(spec.disk_mb, request.disk_mb),
            "pids_limit": spec.pids_limit,
            "runtime": spec.runtime,
            "snapshot": None,
        }
        if not self._runtime.snapshots.exists(snap.id):
            raise SnapshotNotFound(f"snapshot {snap.id} has lost its data; delete it")
        try:
            self._images.get(snap.image_id)
        except ImageNotFound:
            raise ImageNotFoundError(
                f"snapshot {snap.id} was taken on image {snap.image!r}, which is gone from "
                "this server"
            ) from None
        return request.model_copy(update=update), self._runtime.snapshots.path(snap.id)

    # -- pause / resume ---------------------------------------------------------------------

    async def pause(self, sandbox_id: str, *, reason: str = "paused by request") -> SandboxRecord:
        """Freeze every process (cgroup freezer); memory is kept. Paused already: a no-op.

        Raises:
            SandboxNotFound: no such sandbox.
            SandboxStateConflict: it is stopped (or in error): nothing runs to freeze.
        """
        return await self._pause(sandbox_id, reason=reason, explicit=True)

    async def _pause(
        self,
        sandbox_id: str,
        *,
        reason: str,
        explicit: bool,
        unless: Callable[[SandboxRecord], bool] | None = None,
    ) -> SandboxRecord:
        self._manager.get(sandbox_id)
        async with self._manager.lock_for(sandbox_id):
            record = self._manager.get(sandbox_id)
            if record.status == "paused" or (unless is not None and unless(record)):
                return record
            if record.status != "running":
                raise _conflict(record, "pause", "only a running sandbox can be paused")
            await self._runtime.pause(self._manager.runtime_id(sandbox_id))
            expires = None if explicit else record.expires_at
            self._store.set_sandbox_state(sandbox_id, "paused", reason, expires)
        log.info("paused sandbox %s (%s)", sandbox_id, reason)
        return self._manager.get(sandbox_id)

    async def resume(self, sandbox_id: str) -> SandboxRecord:
        """Run a paused or stopped sandbox again; running already: a no-op.

        Raises:
            SandboxNotFound: no such sandbox.
            SandboxStartFailed: a stopped sandbox could not be started (503; its disk is kept).
            SandboxStateConflict: it is in error.
        """
        return await self.wake(sandbox_id)

    # `start` is the same operation: the state decides what it takes.
    start = resume

    async def wake(self, sandbox_id: str) -> SandboxRecord:
        """Wake a sleeping sandbox; concurrent callers share one wake and all wait for it."""
        record = self._manager.get(sandbox_id)
        self.activity.touch(sandbox_id)
        if record.status == "running":
            return record
        pending = self._wakes.get(sandbox_id)
        if pending is None:
            pending = asyncio.ensure_future(self._wake(sandbox_id))
            self._wakes[sandbox_id] = pending
            pending.add_done_callback(lambda _: self._wakes.pop(sandbox_id, None))
        # Shielded: one caller giving up must not cancel the wake the others wait for.
        return await asyncio.shield(pending)

    async def _wake(self, sandbox_id: str) -> SandboxRecord:
        async with self._manager.lock_for(sandbox_id):
            record = self._manager.get(sandbox_id)
            expires = record.expires_at
            if expires is None and record.timeout:
                expires = time.time() + record.timeout
            if record.status == "paused":
                started = time.perf_counter()
                await self._runtime.resume(self._manager.runtime_id(sandbox_id))
                log.info("resumed sandbox %s in %.1f ms", sandbox_id, _ms(started))
            elif record.status in ("stopped", "error"):
                # NB: a sandbox in error (its agent died: services/_deaths.py) keeps its disk
                # too. Only an explicit start or resume gets here for it: requests wake only
                # sleeping sandboxes (SandboxManager.running, preview_hit).
                await self._boot(record)
            elif record.status != "running":
                raise _conflict(record, "start", "destroy it and create a new one")
            self._store.set_sandbox_state(sandbox_id, "running", None, expires)
        self.activity.touch(sandbox_id)
        return self._manager.get(sandbox_id)

    def preview_hit(self, sandbox_id: str) -> asyncio.Future[SandboxRecord] | None:
        """A preview request: activity, and the wake to wait for if the sandbox sleeps."""
        self.activity.touch(sandbox_id)
        record = self._store.get_sandbox(sandbox_id)
        if record is None or record.status not in ("paused", "stopped"):
            return None
        woken = asyncio.ensure_future(self.wake(sandbox_id))
        # Retrieved here too: a keep-alive request may not wait on it.
        woken.add_done_callback(lambda f: f.cancelled() or f.exception())
        return woken

    # -- stop / start -----------------------------------------------------------------------

    async def stop(self, sandbox_id: str, *, reason: str = "stopped by request") -> SandboxRecord:
        """End every process; keep the disk. Stopped already: a no-op.

        Raises:
            SandboxNotFound: no such sandbox.
            SandboxStateConflict: it is in error or still being created.
        """
        return await self._stop(sandbox_id, reason=reason, explicit=True)

    async def _stop(
        self,
        sandbox_id: str,
        *,
        reason: str,
        explicit: bool,
        unless: Callable[[SandboxRecord], bool] | None = None,
    ) -> SandboxRecord:
        self._manager.get(sandbox_id)
        async with self._manager.lock_for(sandbox_id):
            record = self._manager.get(sandbox_id)
            if record.status == "stopped" or (unless is not None and unless(record)):
                return record
            if record.status not in ("running", "paused"):
                raise _conflict(record, "stop", "destroy it instead")
            await self._halt(sandbox_id)
            expires = None if explicit else record.expires_at
            self._store.set_sandbox_state(sandbox_id, "stopped", reason, expires)
        log.info("stopped sandbox %s (%s)", sandbox_id, reason)
        return self._manager.get(sandbox_id)

    async def _halt(self, sandbox_id: str) -> None:
        await self._manager.forget_agent(sandbox_id)
        for hook in self.on_stop:
            hook(sandbox_id)
        await self._runtime.stop(self._manager.runtime_id(sandbox_id))

    async def _boot(self, record: SandboxRecord) -> None:
        """Run a stopped sandbox's agent again on its disk (and its entrypoint, if it had
        one). On failure it stays stopped, with the reason, and the caller gets a 503."""
        sandbox_id = record.id
        rid = self._manager.runtime_id(sandbox_id)
        started = time.perf_counter()
        try:
            image = self._images.get(record.image_id)
            socket_path = await self._runtime.start_existing(self._manager.spec_for(record, image))
            conn = await self._manager.connect_agent(sandbox_id, socket_path)
            await asyncio.wait_for(conn.call("ping"), self._agent_timeout)
            if self._manager.egress is not None:
                await self._manager.egress.register(sandbox_id, rid)
            await self._runtime.buckets.restore(rid, self._runtime.rootfs(rid))
            if record.start_entrypoint:
                await asyncio.wait_for(
                    conn.call("process_start", **entrypoint_request(image)), self._agent_timeout
                )
        except (ImageNotFound, SandboxRuntimeError, AgentError, OSError, TimeoutError) as exc:
            await self._manager.forget_agent(sandbox_id)
            with contextlib.suppress(Exception):
                await self._runtime.stop(rid)
            self._store.set_sandbox_state(
                sandbox_id, "stopped", f"the last start failed: {exc}", record.expires_at
            )
            raise SandboxStartFailed(
                f"sandbox {sandbox_id} could not start ({exc}); its disk is kept: retry, or "
                "destroy it"
            ) from exc
        log.info("started sandbox %s in %.1f ms", sandbox_id, _ms(started))

    # -- lifetime ---------------------------------------------------------------------------

    async def set_timeout(self, sandbox_id: str, seconds: float) -> SandboxRecord:
        """End the sandbox's lifetime `seconds` from now (0: no limit); `on_timeout` says
        what happens then. Also the lifetime given again after each explicit pause/stop."""
        async with self._manager.lock_for(sandbox_id):
            record = self._manager.get(sandbox_id)
            record.timeout = seconds or None
            self._store.update_sandbox_spec(record)
            expires = time.time() + seconds if seconds else None
            self._store.set_sandbox_state(sandbox_id, record.status, record.status_reason, expires)
        return self._manager.get(sandbox_id)

    async def expire(self, record: SandboxRecord) -> None:
        """The sandbox's lifetime is over: destroy, stop or pause it (`on_timeout`)."""
        why = f"its timeout of {format_duration(record.timeout or 0)} ran out"
        if record.on_timeout == "destroy":
            log.info("sandbox %s: %s; destroying it", record.id, why)
            await self._manager.destroy(record.id)
        elif record.on_timeout == "stop" or record.status == "stopped":
            await self._stop(record.id, reason=why, explicit=True)
        else:
            await self._pause(record.id, reason=why, explicit=True)
            # Paused by its timeout: it stays so until woken (which gives it its lifetime again).

    async def sleep_if_idle(self, record: SandboxRecord, now: float) -> bool:
        """Pause or stop (`on_idle`) a running sandbox idle for `sleep_after`; True if it
        went to sleep. Idle: no request, no preview traffic, no open stream or terminal."""
        if self._busy(record, now):
            return False
        assert record.sleep_after is not None
        reason = f"idle for {format_duration(record.sleep_after)}"
        # Checked again under the sandbox's lock, right before the freeze: a request that
        # came in meanwhile (it counts as activity before it reaches the agent) wins.
        if record.on_idle == "stop":
            after = await self._stop(
                record.id, reason=reason, explicit=False, unless=self._busy_now
            )
        else:
            after = await self._pause(
                record.id, reason=reason, explicit=False, unless=self._busy_now
            )
        return after.status != "running"

    def _busy_now(self, record: SandboxRecord) -> bool:
        return self._busy(record, time.monotonic())

    def _busy(self, record: SandboxRecord, now: float) -> bool:
        """Whether a running sandbox is not (yet) to sleep for idleness."""
        if record.status != "running" or record.keep_alive or not record.sleep_after:
            return True
        if self._manager.has_open_streams(record.id):
            self.activity.touch(record.id)
            return True
        return self.activity.idle_for(record.id, now) < record.sleep_after

    # -- after a server restart -------------------------------------------------------------

    async def recover(self) -> None:
        """Make paused and stopped records true after a kill -9 or a host reboot: a paused
        sandbox whose container is gone lost its memory and is stopped now."""
        containers = await self._runtime.list_sandboxes()
        for record in self._store.list_sandboxes():
            rid = self._manager.runtime_id(record.id)
            state = containers.get(rid)
            if record.status == "paused" and state not in ("paused", "pausing"):
                if state == "running":
                    self._store.set_sandbox_state(record.id, "running", None, record.expires_at)
                    continue
                with contextlib.suppress(Exception):
                    await self._runtime.stop(rid)
                self._store.set_sandbox_state(
                    record.id,
                    "stopped",
                    "its container was lost while paused (host restart): memory is gone, "
                    "the disk is kept",
                    record.expires_at,
                )
            elif record.status == "stopped" and state is not None:
                await self._runtime.stop(rid)  # a stop cut short by the crash

    # -- snapshots and fork -----------------------------------------------------------------

    async def snapshot(self, sandbox_id: str, name: str | None = None) -> SnapshotRecord:
        """Capture the sandbox's disk and settings (a btrfs snapshot; memory is not kept).

        Raises:
            SandboxNotFound: no such sandbox.
            SnapshotExists: `name` is taken.
        """
        if name is not None and self._store.get_snapshot(name) is not None:
            raise SnapshotExists(f"a snapshot named {name!r} exists; choose another name")
        async with self._manager.lock_for(sandbox_id):
            record = self._manager.get(sandbox_id)
            snapshot_id = "snap-" + secrets.token_hex(6)
            await asyncio.to_thread(
                self._runtime.snapshots.take, self._manager.runtime_id(sandbox_id), snapshot_id
            )
            snap = SnapshotRecord(
                id=snapshot_id,
                name=name,
                sandbox_id=sandbox_id,
                image=record.image,
                image_id=record.image_id,
                created_at=now_iso(),
                spec=record.spec_json(),
            )
            if not self._store.insert_snapshot(snap):
                self._runtime.snapshots.delete(snapshot_id)
                raise SnapshotExists(f"a snapshot named {name!r} exists; choose another name")
        self.activity.touch(sandbox_id)
        return snap

    def get_snapshot(self, snapshot_id: str) -> SnapshotRecord:
        snap = self._store.get_snapshot(snapshot_id)
        if snap is None:
            raise SnapshotNotFound(
                f"no snapshot {snapshot_id!r}; list them with GET /v1/snapshots (`hutch "
                "snapshot ls`)"
            )
        return snap

    def list_snapshots(self, sandbox_id: str | None = None) -> list[SnapshotRecord]:
        return [
            s
            for s in self._store.list_snapshots()
            if sandbox_id is None or s.sandbox_id == sandbox_id
        ]

    async def delete_snapshot(self, snapshot_id: str) -> None:
        snap = self.get_snapshot(snapshot_id)
        await asyncio.to_thread(self._runtime.snapshots.delete, snap.id)
        self._store.delete_snapshot(snap.id)

    async def fork(self, sandbox_id: str, count: int = 1) -> list[SandboxRecord]:
        """`count` new running sandboxes whose disks start as this one's is now, with its
        settings (image, env, limits, labels, lifetime and idle policy; not its secrets).

        Raises:
            InvalidRequest: count is out of range.
        """
        if not 1 <= count <= MAX_FORK:
            raise InvalidRequest(f"count must be 1-{MAX_FORK}, not {count}", code="invalid_request")
        # NB: one snapshot for all: every fork starts from the same moment of the disk.
        snap = await self.snapshot(sandbox_id)
        try:
            source = self._manager.get(sandbox_id)
            request = SandboxCreate(
                snapshot=snap.id,
                labels=source.labels,
                timeout=source.timeout or 0,
                sleep_after=source.sleep_after,
                keep_alive=source.keep_alive,
                on_idle=source.on_idle,  # type: ignore[arg-type]
                on_timeout=source.on_timeout,  # type: ignore[arg-type]
            )
            return list(await asyncio.gather(*(self.create(request) for _ in range(count))))
        finally:
            await self.delete_snapshot(snap.id)


def _conflict(record: SandboxRecord, action: str, hint: str) -> SandboxStateConflict:
    reason = f" ({record.status_reason})" if record.status_reason else ""
    return SandboxStateConflict(
        f"cannot {action} sandbox {record.id}: it is {record.status}{reason}; {hint}"
    )


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1e3
