"""Sandboxes whose create has answered while their agent still comes up.

A cold create on one host answers once its container runs (runc has exited, the agent's
process exists and its socket listens), not once the agent answered its first ping: the
agent's interpreter start (~15 ms) then overlaps the create's response and the client's next
request, most of what a create → first exec cost beyond runc and the agent
(docs/performance.md, "A create that answers before its agent does").

Until that start settles, every request on the sandbox waits for it here: each agent call
(`SandboxManager.running`) and each lifecycle step (`SandboxManager.lock_for`: a pause must
not freeze an agent halfway through its start, a destroy must not race its cleanup). A start
that fails removes the sandbox as a failed create always did; the requests that waited on it
answer 503 `sandbox_start_failed` with why, later ones 404.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any


class PendingStarts:
    """The starts still settling, one task per sandbox id (at most one at a time: the
    sandbox's lock orders its creates)."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def begin(self, sandbox_id: str, settle: Coroutine[Any, Any, None]) -> None:
        """Run `settle` (the rest of the sandbox's start) in the background; it raises what
        the waiting requests should answer if the start fails."""
        task = asyncio.create_task(settle, name=f"hutch-start-{sandbox_id}")
        self._tasks[sandbox_id] = task
        task.add_done_callback(lambda done: self._settled(sandbox_id, done))

    def _settled(self, sandbox_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(sandbox_id) is task:
            del self._tasks[sandbox_id]
        if not task.cancelled():
            task.exception()  # NB: marks it retrieved: the settle logged it, waiters got it

    def pending(self, sandbox_id: str) -> bool:
        return sandbox_id in self._tasks

    async def settled(self, sandbox_id: str, *, quiet: bool = False) -> None:
        """Once the sandbox's start (if one is in flight) has settled. Raises its failure
        unless `quiet` (a lifecycle step then finds the sandbox gone, as after any destroy)."""
        task = self._tasks.get(sandbox_id)
        if task is None:
            return
        # NB: shielded: a request that gives up (its client left) must not cancel the start.
        with contextlib.suppress(Exception) if quiet else contextlib.nullcontext():
            await asyncio.shield(task)

    async def finish(self, within: float) -> None:
        """At shutdown: let the starts in flight settle (milliseconds each; a create's
        request would have been waited for by the drain), for at most `within` seconds, then
        cut off the rest. A sandbox whose start was cut off is a running container whose
        agent the next server start connects to (or finds gone)."""
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=within)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()
