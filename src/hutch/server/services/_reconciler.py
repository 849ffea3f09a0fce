"""The lifecycle loop: once a second, end sandboxes whose lifetime is over (`on_timeout`) and
put idle ones to sleep (`sleep_after`, `on_idle`). One broken sandbox never stops the loop.

With several API replicas on one database, one of them reconciles at a time: the one holding
the store's lock RECONCILER_LOCK (a PostgreSQL advisory lock, held while that replica lives;
when it dies another takes it at its next pass). On SQLite the lock is always this server's.
On a cluster it also removes the fork copies a replica that died mid-fork left
(services/_fork_leftovers.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from hutch.server._errors import ApiError
from hutch.server.services._fork_leftovers import ForkLeftovers
from hutch.server.services._lifecycle import Lifecycle
from hutch.server.services._sandbox_create import create_abandoned
from hutch.server.store._off_loop import off_loop
from hutch.server.store._sqlite import Store

log = logging.getLogger("hutch.server")

INTERVAL = 1.0
RECONCILER_LOCK = "hutch:reconciler"


class Reconciler:
    def __init__(
        self,
        lifecycle: Lifecycle,
        store: Store,
        *,
        interval: float = INTERVAL,
        fork_leftovers: ForkLeftovers | None = None,
    ) -> None:
        self._lifecycle = lifecycle
        self._store = store
        self._interval = interval
        self._fork_leftovers = fork_leftovers
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="hutch-reconciler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._store.release_lock(RECONCILER_LOCK)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.tick()

    async def tick(self) -> None:
        """One pass over every sandbox, if this replica is the one that reconciles; every
        replica first marks the sandboxes its open streams use."""
        self._lifecycle.keep_streams_awake()
        try:
            # NB: in a thread: taking the lock may mean connecting to a database that is
            # down (up to its connect timeout), once a second; the loop must not wait for it.
            leading = await asyncio.to_thread(self._store.hold_lock, RECONCILER_LOCK)
        except Exception as exc:
            log.error("reconciler: cannot reach the store: %s", exc)
            return
        if not leading:
            return
        wall, mono = time.time(), time.monotonic()
        if self._fork_leftovers is not None:
            try:
                await self._fork_leftovers.tick(wall, mono)
            except Exception:
                log.exception("reconciler: fork copies left by a replica not removed")
        # NB: off the event loop: every row, once a second (15 ms for 1,000 sandboxes on
        # SQLite, more across the network), would stall every request on this replica.
        for record in await off_loop(self._store, self._store.list_sandboxes):
            if record.status == "creating":
                if create_abandoned(record, wall):
                    # Its replica died mid-create (a replica's start leaves young ones be).
                    log.info("removing abandoned half-created sandbox %s", record.id)
                    with contextlib.suppress(ApiError, OSError, RuntimeError):
                        await self._lifecycle.abandon_create(record.id)
                continue
            try:
                if record.expires_at is not None and record.expires_at <= wall:
                    await self._lifecycle.expire(record)
                else:
                    await self._lifecycle.sleep_if_idle(record, mono)
            except (ApiError, OSError, RuntimeError) as exc:
                # NB: ApiError includes "already gone" races with a concurrent destroy.
                log.error("lifecycle step for sandbox %s failed: %s", record.id, exc)
            except Exception:
                log.exception("lifecycle step for sandbox %s failed", record.id)
