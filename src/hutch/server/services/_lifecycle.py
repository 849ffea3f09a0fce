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
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from hutch._wire.sandbox_events import SandboxEventType
from hutch.node import AgentError, SandboxHost
from hutch.runtime import ImageNotFound, ImageStore, SandboxRuntimeError
from hutch.server._durations import format_duration
from hutch.server._errors import (
    ImageNotFoundError,
    QuotaExceeded,
    SandboxStartFailed,
    SandboxStateConflict,
    SnapshotExists,
    SnapshotNotFound,
)
from hutch.server._models import SandboxCreate
from hutch.server.services._activity import Activity
from hutch.server.services._caller import visible
from hutch.server.services._forks import fork_sandbox, settings_of
from hutch.server.services._keys import now_iso
from hutch.server.services._quotas import StartedElsewhere
from hutch.server.services._sandbox_create import entrypoint_request
from hutch.server.services._sandboxes import SandboxManager
from hutch.server.store._records import SnapshotAdmission
from hutch.server.store._sqlite import SandboxRecord, SnapshotRecord, Store

log = logging.getLogger("hutch.server")

# How long a start waits for another replica's start of the same sandbox (its boot is bounded
# by the agent timeouts; this only keeps a caller from waiting forever).
START_WAIT_SECONDS = 120.0


@dataclass
class LifecyclePolicy:
    """Server-wide lifecycle settings (from ServerConfig).

    Attributes:
        default_timeout: lifetime of a sandbox created without `timeout` (seconds; None: none).
        shared_activity: record each sandbox's use in the store too (API replicas sharing a
            database: services/_activity.py).
    """

    default_timeout: float | None = 3600.0
    shared_activity: bool = False


class Lifecycle:
    """Pause, resume, stop, start, set_timeout, wake, snapshot, fork: one typed service."""

    def __init__(
        self,
        manager: SandboxManager,
        store: Store,
        host: SandboxHost,
        images: ImageStore,
        *,
        policy: LifecyclePolicy,
        agent_timeout: float,
    ) -> None:
        self._manager = manager
        self._store = store
        self._host = host
        self._images = images
        self.policy = policy
        self._agent_timeout = agent_timeout
        self.activity = Activity(store if policy.shared_activity else None)
        self._wakes: dict[str, asyncio.Future[SandboxRecord]] = {}
        # Called with the sandbox id after its container went away or came back (stop/start):
        # caches of its address and connections drop what they hold.
        self.on_stop: list[Callable[[str], None]] = []
        # Called with the sandbox id right before it is frozen, and after it runs again: the
        # native preview proxy sends a sleeping sandbox's requests to Hutch (which wakes it).
        self.on_sleep: list[Callable[[str], None]] = []
        self.on_wake: list[Callable[[str], None]] = []
        manager.waker = self.wake
        manager.on_use = self.activity.touch
        # Team quotas (services/_quotas.py): the longest lifetime the caller's team allows,
        # and the check before a snapshot is kept for a team.
        self.lifetime_cap: Callable[[], float | None] | None = None
        self.snapshot_quota: Callable[[str], SnapshotAdmission] | None = None
        self.lifetime_quota: Callable[[str, float], None] | None = None
        self.start_admission: Callable[[SandboxRecord], AbstractAsyncContextManager[None]] = (
            lambda _: contextlib.nullcontext()
        )

    # -- create ---------------------------------------------------------------------------

    def with_defaults(self, request: SandboxCreate) -> SandboxCreate:
        """The request with the server's default lifetime when it gives none."""
        if request.timeout is None:
            cap = self.lifetime_cap() if self.lifetime_cap is not None else None
            default = self.policy.default_timeout
            if cap is not None:
                default = min(default, cap) if default else cap
            if default:
                return request.model_copy(update={"timeout": default})
        return request

    async def create(self, request: SandboxCreate) -> SandboxRecord:
        """Create a sandbox (from a snapshot if `request.snapshot`)."""
        request = self.with_defaults(request)
        if request.snapshot is not None:
            request, snapshot = await self._from_snapshot(request)
            record = await self._manager.create(request, snapshot=snapshot)
        else:
            record = await self._manager.create(request)
        self.activity.touch(record.id)
        return record

    async def get_or_create(
        self, sandbox_id: str, request: SandboxCreate
    ) -> tuple[SandboxRecord, bool]:
        request = self.with_defaults(request)
        snapshot = None
        if request.snapshot is not None:
            request, snapshot = await self._from_snapshot(request)
        record, created = await self._manager.get_or_create(sandbox_id, request, snapshot=snapshot)
        self.activity.touch(record.id)
        return record, created

    async def _from_snapshot(self, request: SandboxCreate) -> tuple[SandboxCreate, str]:
        """The snapshot's image, env and limits (its disk needs them), with the request's
        lifetime, idle policy, labels and secrets."""
        assert request.snapshot is not None
        snap = self.get_snapshot(request.snapshot)
        spec = SandboxRecord.from_spec_json(snap.spec)
        if not await self._host.has_snapshot(snap.id):
            raise SnapshotNotFound(f"snapshot {snap.id} has lost its data; delete it")
        try:
            self._images.get(snap.image_id)
        except ImageNotFound:
            raise ImageNotFoundError(
                f"snapshot {snap.id} was taken on image {snap.image!r}, which is gone from "
                "this server"
            ) from None
        return settings_of(request, spec, snap.image_id), snap.id

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
            for hook in self.on_sleep:
                hook(sandbox_id)
            await self._host.pause(sandbox_id)
            expires = None if explicit else record.expires_at
            self._commit(record, "paused", reason, expires)
            self._manager.events.emit(sandbox_id, "paused", reason=reason)
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
        record = await self._manager.fetch(sandbox_id)
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
            event: SandboxEventType | None
            if record.status == "paused":
                started = time.perf_counter()
                await self._host.resume(sandbox_id)
                log.info("resumed sandbox %s in %.1f ms", sandbox_id, _ms(started))
                event = "resumed"
            elif record.status in ("stopped", "error"):
                # NB: a sandbox in error (its agent died: services/_deaths.py) keeps its disk
                # too. Only an explicit start or resume gets here for it: requests wake only
                # sleeping sandboxes (SandboxManager.running, preview_hit).
                # It holds cpu and memory again: admitted under its team's quota until its
                # row says running (the commit is inside, so no replica sees it counted twice
                # or not at all).
                try:
                    async with self.start_admission(record):
                        await self._boot(record)
                        self._commit(record, "running", None, expires)
                except StartedElsewhere:
                    return await self._started_elsewhere(sandbox_id)
                event = "started"
            elif record.status != "running":
                raise _conflict(record, "start", "destroy it and create a new one")
            else:
                event = None  # running already
            if event != "started":
                self._commit(record, "running", None, expires)
            if event is not None:
                self._manager.events.emit(sandbox_id, event)
        self.activity.touch(sandbox_id)
        for hook in self.on_wake:
            hook(sandbox_id)
        return self._manager.get(sandbox_id)

    async def _started_elsewhere(self, sandbox_id: str) -> SandboxRecord:
        """Wait for another replica's start of the sandbox (its row says running), rather
        than boot it a second time; its failure is this caller's too."""
        deadline = time.monotonic() + START_WAIT_SECONDS
        while time.monotonic() < deadline:
            record = self._manager.get(sandbox_id)
            if record.status == "running":
                return record
            if record.start_claimed_at is None and record.status != "running":
                reason = f" ({record.status_reason})" if record.status_reason else ""
                raise SandboxStartFailed(
                    f"sandbox {sandbox_id} was being started by another request, which did "
                    f"not start it: it is {record.status}{reason}; retry, or destroy it"
                )
            await asyncio.sleep(0.1)
        raise SandboxStartFailed(
            f"sandbox {sandbox_id} is being started by another request that has not finished "
            f"in {START_WAIT_SECONDS:g} s; retry"
        )

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
            self._commit(record, "stopped", reason, expires)
            self._manager.events.emit(sandbox_id, "stopped", reason=reason)
        log.info("stopped sandbox %s (%s)", sandbox_id, reason)
        return self._manager.get(sandbox_id)

    def _commit(
        self, seen: SandboxRecord, status: str, reason: str | None, expires: float | None
    ) -> None:
        """Record a step taken from the state `seen`, only if no other API replica changed
        the sandbox meanwhile (a conditional UPDATE; the in-process lock orders only this
        replica's steps). If one did, its step stands and this one is reported as a conflict.
        """
        if not self._store.transition(seen.id, (seen.status,), status, reason, expires):
            raise _conflict(
                self._manager.get(seen.id),  # SandboxNotFound if it was destroyed meanwhile
                {"paused": "pause", "stopped": "stop"}.get(status, "start"),
                "another request changed it at the same time; look at its state and retry",
            )

    async def _halt(self, sandbox_id: str) -> None:
        await self._manager.forget_agent(sandbox_id)
        for hook in self.on_stop:
            hook(sandbox_id)
        await self._host.stop(sandbox_id)

    async def _boot(self, record: SandboxRecord) -> None:
        """Run a stopped sandbox's agent again on its disk (and its entrypoint, if it had
        one). On failure it stays stopped, with the reason, and the caller gets a 503."""
        sandbox_id = record.id
        rid = self._manager.runtime_id(sandbox_id)
        started = time.perf_counter()
        try:
            image = self._images.get(record.image_id)
            await self._host.start_existing(sandbox_id, self._manager.spec_for(record, image))
            conn = await self._manager.connect_agent(sandbox_id)
            await asyncio.wait_for(conn.call("ping"), self._agent_timeout)
            if self._manager.egress is not None:
                await self._manager.egress.register(sandbox_id, rid)
            await self._host.restore_buckets(sandbox_id)
            if record.start_entrypoint:
                await asyncio.wait_for(
                    conn.call("process_start", **entrypoint_request(image)), self._agent_timeout
                )
        except (ImageNotFound, SandboxRuntimeError, AgentError, OSError, TimeoutError) as exc:
            await self._manager.forget_agent(sandbox_id)
            with contextlib.suppress(Exception):
                await self._host.stop(sandbox_id)
            reason = f"the last start failed: {exc}"
            self._store.set_sandbox_state(sandbox_id, "stopped", reason, record.expires_at)
            self._manager.events.emit(sandbox_id, "stopped", reason=reason)
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
            if self.lifetime_quota is not None:
                self.lifetime_quota(record.team, seconds)
            record.timeout = seconds or None
            self._store.update_sandbox_spec(record)
            expires = time.time() + seconds if seconds else None
            self._store.set_sandbox_state(sandbox_id, record.status, record.status_reason, expires)
        return self._manager.get(sandbox_id)

    async def end_lifetime_now(self, sandbox_id: str) -> SandboxRecord:
        """Its time is up now (E2B's timeout 0): `expires_at` is this instant, so anyone who
        reads the record afterwards sees it due, and the reconciler's next pass applies
        `on_timeout`."""
        async with self._manager.lock_for(sandbox_id):
            record = self._manager.get(sandbox_id)
            self._store.set_sandbox_state(
                sandbox_id, record.status, record.status_reason, time.time()
            )
        return self._manager.get(sandbox_id)

    async def abandon_create(self, sandbox_id: str) -> None:
        """End a create whose replica died before it finished (services/_reconciler.py)."""
        await self._manager.destroy(sandbox_id)

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

    def keep_streams_awake(self) -> None:
        """Count every sandbox with a stream open through this replica as in use now: the
        replica that decides who sleeps (the reconciler's lock holder) knows only its own
        streams, and sees the others' through the use each replica writes (`Activity`).
        Without this a long command streamed through one replica had its sandbox put to
        sleep by another once `sleep_after` had passed since the command's request."""
        for sandbox_id in self._manager.streaming_sandboxes():
            self.activity.touch(sandbox_id)

    def _busy_now(self, record: SandboxRecord) -> bool:
        return self._busy(record, time.monotonic())

    def _busy(self, record: SandboxRecord, now: float) -> bool:
        """Whether a running sandbox is not (yet) to sleep for idleness."""
        if record.status != "running" or record.keep_alive or not record.sleep_after:
            return True
        if self._manager.has_open_streams(record.id):
            self.activity.touch(record.id)
            return True
        return self.activity.idle_for(record, now) < record.sleep_after

    # -- after a server restart -------------------------------------------------------------

    async def recover(self) -> None:
        """Make paused and stopped records true after a kill -9 or a host reboot: a paused
        sandbox whose container is gone lost its memory and is stopped now."""
        records = self._store.list_sandboxes()
        containers = await self._host.states([r.id for r in records])
        for record in records:
            state = containers.get(record.id)
            if record.status == "paused" and state not in ("paused", "pausing"):
                if state == "running":
                    self._store.set_sandbox_state(record.id, "running", None, record.expires_at)
                    continue
                with contextlib.suppress(Exception):
                    await self._host.stop(record.id)
                reason = (
                    "its container was lost while paused (host restart): memory is gone, "
                    "the disk is kept"
                )
                self._store.set_sandbox_state(record.id, "stopped", reason, record.expires_at)
                self._manager.events.emit(record.id, "stopped", reason=reason)
            elif record.status == "stopped" and state is not None:
                await self._host.stop(record.id)  # a stop cut short by the crash

    # -- snapshots and fork -----------------------------------------------------------------

    async def snapshot(self, sandbox_id: str, name: str | None = None) -> SnapshotRecord:
        """Capture the sandbox's disk and settings (a btrfs snapshot; memory is not kept).

        Raises:
            SandboxNotFound: no such sandbox.
            SnapshotExists: `name` is taken.
            QuotaExceeded: the team is at its snapshots quota.
        """
        if name is not None and self._store.get_snapshot(name) is not None:
            raise SnapshotExists(f"a snapshot named {name!r} exists; choose another name")
        async with self._manager.lock_for(sandbox_id):
            record = self._manager.get(sandbox_id)
            admit = None
            if self.snapshot_quota is not None:
                admit = self.snapshot_quota(record.team)
                # Early, before the disk work; the insert below checks again for every replica.
                admit(sum(1 for s in self._store.list_snapshots() if s.team == record.team))
            snapshot_id = "snap-" + secrets.token_hex(6)
            # A spare: creates from it then start without a btrfs commit of their own.
            await self._host.take_snapshot(sandbox_id, snapshot_id, spare=True)
            snap = SnapshotRecord(
                id=snapshot_id,
                name=name,
                sandbox_id=sandbox_id,
                image=record.image,
                image_id=record.image_id,
                created_at=now_iso(),
                spec=record.spec_json(),
                team=record.team,
            )
            try:
                inserted = self._store.insert_snapshot(snap, admit)
            except QuotaExceeded:  # another replica's snapshot took the last one meanwhile
                await self._host.delete_snapshot(snapshot_id)
                raise
            if not inserted:
                await self._host.delete_snapshot(snapshot_id)
                raise SnapshotExists(f"a snapshot named {name!r} exists; choose another name")
        self.activity.touch(sandbox_id)
        return snap

    def get_snapshot(self, snapshot_id: str) -> SnapshotRecord:
        snap = self._store.get_snapshot(snapshot_id)
        if snap is None or not visible(snap.team):
            raise SnapshotNotFound(
                f"no snapshot {snapshot_id!r}; list them with GET /v1/snapshots (`hutch "
                "snapshot ls`)"
            )
        return snap

    def list_snapshots(self, sandbox_id: str | None = None) -> list[SnapshotRecord]:
        return [
            s
            for s in self._store.list_snapshots()
            if visible(s.team) and (sandbox_id is None or s.sandbox_id == sandbox_id)
        ]

    async def delete_snapshot(self, snapshot_id: str) -> None:
        snap = self.get_snapshot(snapshot_id)
        await self._host.delete_snapshot(snap.id)
        self._store.delete_snapshot(snap.id)

    async def fork(self, sandbox_id: str, count: int = 1) -> list[SandboxRecord]:
        """`count` new running sandboxes whose disks start as this one's is now, with its
        settings (image, env, limits, labels, lifetime and idle policy; not its secrets).
        No snapshot is kept (services/_forks.py).

        Raises:
            InvalidRequest: count is out of range.
        """
        made = await fork_sandbox(self._manager, self._host, sandbox_id, count)
        for record in made:
            self.activity.touch(record.id)
        self.activity.touch(sandbox_id)
        return made


def _conflict(record: SandboxRecord, action: str, hint: str) -> SandboxStateConflict:
    reason = f" ({record.status_reason})" if record.status_reason else ""
    return SandboxStateConflict(
        f"cannot {action} sandbox {record.id}: it is {record.status}{reason}; {hint}"
    )


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1e3
