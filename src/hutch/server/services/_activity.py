"""When each sandbox was last used (a request, preview traffic, an open stream): what idle
sleep (`sleep_after`) is measured against.

One server keeps it in memory. API replicas sharing a database each see only their own
requests, while one of them (the reconciler's lock holder) decides who is idle: so each
replica also writes the time of use to the store (`sandboxes.active_at`), at most once every
WRITE_EVERY seconds per sandbox, and a sandbox is idle only if it is idle for every replica.
"""

from __future__ import annotations

import logging
import time

from hutch.server.store._off_loop import in_background
from hutch.server.store._records import SandboxRecord, Store

log = logging.getLogger("hutch.server")

WRITE_EVERY = 1.0  # seconds: how stale another replica's view of a sandbox's use may be


class Activity:
    def __init__(self, store: Store | None = None) -> None:
        """`store`: share activity with other API replicas through it (None: one server)."""
        self._store = store
        self._last: dict[str, float] = {}  # sandbox id -> monotonic time of last use
        self._written: dict[str, float] = {}  # sandbox id -> monotonic time of last write

    def touch(self, sandbox_id: str) -> None:
        now = time.monotonic()
        self._last[sandbox_id] = now
        if self._store is None or now - self._written.get(sandbox_id, float("-inf")) < WRITE_EVERY:
            return
        self._written[sandbox_id] = now
        # Advisory: a request never fails for it, nor waits on the database's round trip.
        in_background(
            self._store,
            f"record activity of sandbox {sandbox_id}",
            self._store.set_active_at,
            sandbox_id,
            time.time(),
        )

    def idle_for(self, record: SandboxRecord, now: float) -> float:
        """Seconds since `record` was last used, through any replica (`now`: monotonic)."""
        # A sandbox never seen since the server started counts from then.
        idle = now - self._last.setdefault(record.id, now)
        if self._store is not None and record.active_at is not None:
            idle = min(idle, time.time() - record.active_at)
        return idle
