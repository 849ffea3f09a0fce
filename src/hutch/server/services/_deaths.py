"""Status that never lies: a running sandbox whose PID 1 (its agent) dies goes to `error`
within a second, with the reason, instead of answering "the agent does not answer, retry"
to every later call.

User code cannot kill the agent (it lives outside user code's `work` cgroup, and as PID 1 of
its pid namespace it ignores signals from inside), but the host can: a host-wide OOM, runc or
an operator killing the container. Each second the watcher polls a pidfd per running
sandbox (one `poll()` for all of them); a dead one is checked again under the sandbox's lock,
so a stop, a pause or a destroy that was in progress wins and nothing is misreported.

Reasons: `oom_killed` (the OOM killer took a task outside `work`: the agent), `agent_exited`
(PID 1 ended otherwise), `runtime_gone` (runc no longer knows the container).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select

from hutch.runtime import Runtime
from hutch.server.services._sandboxes import SandboxManager
from hutch.server.store._sqlite import Store

log = logging.getLogger("hutch.server")

CHECK_EVERY = 0.5  # seconds: a death is reported within a second


class DeathWatch:
    def __init__(self, manager: SandboxManager, store: Store, runtime: Runtime) -> None:
        self._manager = manager
        self._store = store
        self._runtime = runtime
        self._pidfds: dict[str, tuple[int, int]] = {}  # sandbox id -> (init pid, pidfd)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="hutch-death-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _, fd in self._pidfds.values():
            os.close(fd)
        self._pidfds.clear()

    async def _loop(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("checking sandboxes' agents failed")
            await asyncio.sleep(CHECK_EVERY)

    async def check(self) -> None:
        running = set(self._manager.running_ids())
        for gone in set(self._pidfds) - running:
            os.close(self._pidfds.pop(gone)[1])
        for sandbox_id in running - set(self._pidfds):
            await self._watch(sandbox_id)
        poller = select.poll()
        by_fd = {fd: sandbox_id for sandbox_id, (_, fd) in self._pidfds.items()}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        for fd, _ in poller.poll(0):
            sandbox_id = by_fd[fd]
            os.close(self._pidfds.pop(sandbox_id)[1])
            await self._died(sandbox_id)

    async def _watch(self, sandbox_id: str) -> None:
        pid = await self._runtime.init_pid(self._manager.runtime_id(sandbox_id))
        if pid is None:
            await self._died(sandbox_id)
            return
        try:
            self._pidfds[sandbox_id] = (pid, os.pidfd_open(pid))
        except ProcessLookupError:
            await self._died(sandbox_id)

    async def _died(self, sandbox_id: str) -> None:
        rid = self._manager.runtime_id(sandbox_id)
        async with self._manager.lock_for(sandbox_id):
            record = self._store.get_sandbox(sandbox_id)
            if record is None or record.status != "running":
                return  # destroyed, stopped or paused on purpose meanwhile
            state = await self._runtime.state(rid)
            if state in ("running", "paused"):
                return  # a restart under a new pid (recovery): watched again next round
            if state == "missing":
                reason = "runtime_gone: the container no longer exists"
            elif self._runtime.agent_oom_killed(rid):
                reason = (
                    "oom_killed: the kernel's OOM killer ended the sandbox's agent (the host "
                    "ran out of memory); its disk is kept: start it again"
                )
            else:
                reason = (
                    "agent_exited: the sandbox's init ended (killed from outside); its disk "
                    "is kept: start it again"
                )
            self._store.set_sandbox_state(sandbox_id, "error", reason, record.expires_at)
            await self._manager.forget_agent(sandbox_id)
        log.warning("sandbox %s went to error: %s", sandbox_id, reason)
