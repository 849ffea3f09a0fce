"""Cold-start admission: how many sandboxes may be starting on this host at once.

A cold start (runc, mounts, the agent's interpreter coming up) is mostly CPU. Fifty at once
on two cores all crawl, and every one misses its deadlines (the agent's 10 s ping, the
client's 60 s request); a few at a time each finish in about a second. So at most `slots`
starts run together and the rest wait their turn, first come first served, for at most
`wait` seconds: past that the create answers 503 `create_busy` with `Retry-After`, having
made nothing, and the SDK tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import AsyncIterator

from hutch.server._cold_start_settings import DEFAULT_COLD_START_WAIT
from hutch.server._errors import CreateBusy

DEFAULT_WAIT = DEFAULT_COLD_START_WAIT  # HUTCH_COLD_START_WAIT (server/_cold_start_settings.py)


def slots_for_this_host() -> int:
    """One start per CPU this process may use, and never fewer than two: a start also
    waits on disk and on the agent's socket, so two overlap well even on one CPU."""
    return max(2, len(os.sched_getaffinity(0)))


class ColdStartGate:
    """At most `slots` cold starts at once; the others wait in arrival order."""

    def __init__(self, slots: int | None = None, *, wait: float = DEFAULT_WAIT) -> None:
        self.slots = slots if slots is not None else slots_for_this_host()
        self.wait = wait
        self._free = asyncio.Semaphore(self.slots)
        self.waiting = 0
        self.running = 0
        # Set when the server begins to shut down: a create still waiting would outlive the
        # drain and be cut off (a 500); it answers create_busy at once instead.
        self.closing = asyncio.Event()
        # A recent start's duration: how long a waiting create is told to stay away.
        self._last_start = 1.0

    async def _acquire(self) -> None:
        """A free slot, or TimeoutError after `wait` or CreateBusy once the server closes."""
        if self.closing.is_set():
            raise self._closing_error()
        acquire = asyncio.ensure_future(self._free.acquire())
        closing = asyncio.ensure_future(self.closing.wait())
        try:
            await asyncio.wait({acquire, closing}, timeout=self.wait, return_when="FIRST_COMPLETED")
        finally:
            closing.cancel()
            if not acquire.done():
                acquire.cancel()
        if acquire.done() and not acquire.cancelled():
            return
        if self.closing.is_set():
            raise self._closing_error()
        raise TimeoutError

    def _closing_error(self) -> CreateBusy:
        return CreateBusy(
            "this server is shutting down and starts no more sandboxes; nothing was made: "
            "retry in a moment (on its next start, or another replica)",
            retry_after=1,
        )

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        self.waiting += 1
        try:
            await self._acquire()
        except TimeoutError:
            ahead = self.waiting
            retry = max(1, math.ceil(self._last_start * ahead / self.slots))
            raise CreateBusy(
                f"{self.running} sandboxes are starting and {ahead} more wait to; this create "
                f"waited {self.wait:g} s for its turn and nothing was made: retry in "
                f"{retry} s",
                retry_after=retry,
            ) from None
        finally:
            self.waiting -= 1
        self.running += 1
        started = time.monotonic()
        try:
            yield
        finally:
            self.running -= 1
            self._last_start = time.monotonic() - started
            self._free.release()
