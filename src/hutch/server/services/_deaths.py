"""Status that never lies: a running sandbox whose PID 1 (its agent) dies goes to `error`
within a second, with the reason, instead of answering "the agent does not answer, retry"
to every later call.

User code cannot kill the agent (it lives outside user code's `work` cgroup, and as PID 1 of
its pid namespace it ignores signals from inside), but the host can: a host-wide OOM, runc or
an operator killing the container. Every half second the watcher asks the host which running
sandboxes lost their init (`SandboxHost.dead`: pidfds on that host, in-process on one host, a
node API call per node in a cluster); a dead one is checked again under the sandbox's lock,
so a stop, a pause or a destroy that was in progress wins and nothing is misreported.

Reasons: `oom_killed` (the OOM killer took a task outside `work`: the agent), `agent_exited`
(PID 1 ended otherwise), `runtime_gone` (runc no longer knows the container).

In a cluster one replica watches: the one holding the store's lock DEATHS_LOCK (a PostgreSQL
advisory lock, as the reconciler's; on SQLite the one server always holds it). Every replica
watching read every sandbox's row and asked every node twice a second each, and an OOM kill,
which a node reports once, went to whichever replica asked first. When the watching replica
ends, its session's lock goes with it and another takes it at its next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from hutch.node import SandboxHost
from hutch.server.services._sandboxes import SandboxManager
from hutch.server.store._sqlite import Store

log = logging.getLogger("hutch.server")

CHECK_EVERY = 0.5  # seconds: a death is reported within a second
# OOM kills in `work` (the sandbox lives on) are looked for every 4th round: that reads a
# cgroup file per sandbox, and with 674 idle sandboxes it was a third of the server's CPU.
OOM_ROUNDS = 4
DEATHS_LOCK = "hutch:deaths"


class DeathWatch:
    def __init__(self, manager: SandboxManager, store: Store, host: SandboxHost) -> None:
        self._manager = manager
        self._store = store
        self._host = host
        self._task: asyncio.Task[None] | None = None
        self._rounds = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="hutch-death-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._host.close_watch()
        self._store.release_lock(DEATHS_LOCK)

    async def _loop(self) -> None:
        while True:
            try:
                # NB: in a thread: taking the lock may wait on a database that is down.
                if await asyncio.to_thread(self._store.hold_lock, DEATHS_LOCK):
                    await self.check()
            except Exception:
                log.exception("checking sandboxes' agents failed")
            await asyncio.sleep(CHECK_EVERY)

    async def check(self) -> None:
        # NB: one read of the store per round, twice a second: the ids and states of the
        # running and paused sandboxes only. With hundreds of idle sandboxes every row was
        # most of an idle server's CPU; building every record was still 15 ms per 1,000.
        watched = self._store.watched_sandboxes()
        if self._rounds % OOM_ROUNDS == 0:
            await self._report_oom_kills([sandbox_id for sandbox_id, _ in watched])
        self._rounds += 1
        running = [sandbox_id for sandbox_id, status in watched if status == "running"]
        for sandbox_id, reason in (await self._host.dead(running)).items():
            await self._died(sandbox_id, reason)

    async def _report_oom_kills(self, watched: list[str]) -> None:
        """An `oom_killed` event per process the OOM killer ended in a sandbox's `work`
        (user code over the memory limit; the sandbox lives on)."""
        for sandbox_id, kill in await self._host.oom_kills(watched):
            self._manager.events.emit(
                sandbox_id,
                "oom_killed",
                host_pid=kill.host_pid,
                command=kill.command,
                count=kill.count,
            )

    async def _died(self, sandbox_id: str, reason: str) -> None:
        async with self._manager.lock_for(sandbox_id):
            record = self._store.get_sandbox(sandbox_id)
            if record is None or record.status != "running":
                return  # destroyed, stopped or paused on purpose meanwhile
            state = (await self._host.states([sandbox_id])).get(sandbox_id)
            if state in ("running", "paused", "pausing"):
                return  # a restart under a new pid (recovery): watched again next round
            if not self._store.transition(
                sandbox_id, ("running",), "error", reason, record.expires_at
            ):
                return  # another API replica stopped, paused or destroyed it meanwhile
            self._manager.events.emit(sandbox_id, "error", reason=reason)
            await self._manager.forget_agent(sandbox_id)
        log.warning("sandbox %s went to error: %s", sandbox_id, reason)
