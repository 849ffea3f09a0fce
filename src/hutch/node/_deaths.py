"""Which of a host's running sandboxes lost their init (the agent, PID 1), and the OOM kills
in their user code: what the API's death watch (server/services/_deaths.py) asks each host
for every half second, in-process on one host or over the node API on a node.

One pidfd per watched container (a `poll()` for all of them); a container whose init has
ended is reported only when runc says it no longer runs (a restart under a new pid is not a
death), with the reason: `runtime_gone`, `oom_killed` or `agent_exited`.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable, Collection

from hutch.runtime import OomKill, OomWatch, Runtime

RUNTIME_GONE = "runtime_gone: the container no longer exists"
OOM_KILLED = (
    "oom_killed: the kernel's OOM killer ended the sandbox's agent (the host ran out of "
    "memory); its disk is kept: start it again"
)
AGENT_EXITED = (
    "agent_exited: the sandbox's init ended (killed from outside); its disk is kept: start it again"
)


# A watched container that no call has asked about for this long is forgotten (its pidfd
# closed). Not at once: on a node, every API replica asks with its own view of the running
# sandboxes, and forgetting what one did not name made the next one open it again.
FORGET_AFTER = 10.0


class InitWatch:
    """Pidfds of the inits of containers, by runtime id. Concurrent calls share them (a node
    answers every replica's death watch): one pidfd per container, whoever opened it."""

    def __init__(self, runtime: Runtime, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._runtime = runtime
        self._pidfds: dict[str, int] = {}
        self._asked: dict[str, float] = {}  # runtime id -> when a call last named it
        self._clock = clock
        self._ooms = OomWatch(runtime.cgroups.of)

    def close(self) -> None:
        for fd in self._pidfds.values():
            os.close(fd)
        self._pidfds.clear()
        self._ooms.close()

    def watched(self) -> int:
        """How many pidfds are open."""
        return len(self._pidfds)

    def _forget(self, rid: str) -> None:
        fd = self._pidfds.pop(rid, None)
        if fd is not None:
            os.close(fd)

    async def dead(self, runtime_ids: Collection[str]) -> dict[str, str]:
        """runtime id -> why, for those of `runtime_ids` whose init has ended and which no
        longer run. The others are watched from now on (and those no call has named for
        `FORGET_AFTER` seconds are forgotten)."""
        wanted = set(runtime_ids)
        now = self._clock()
        self._asked.update(dict.fromkeys(wanted, now))
        for rid, when in list(self._asked.items()):
            if now - when > FORGET_AFTER:
                del self._asked[rid]
                self._forget(rid)
        ended = []
        for rid in wanted - set(self._pidfds):
            pid = await self._runtime.init_pid(rid)
            if rid in self._pidfds:
                continue  # NB: opened by a concurrent call while this one waited
            try:
                if pid is None:
                    raise ProcessLookupError
                self._pidfds[rid] = os.pidfd_open(pid)
            except ProcessLookupError:
                ended.append(rid)
        poller = select.poll()
        by_fd = {fd: rid for rid, fd in self._pidfds.items() if rid in wanted}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        for fd, _ in poller.poll(0):
            ended.append(by_fd[fd])
            self._forget(by_fd[fd])
        reasons = {}
        for rid in ended:
            state = await self._runtime.state(rid)
            if state in ("running", "paused"):
                continue  # restarted under a new pid (a start, a recovery): watched next time
            if self._runtime.halted(rid):
                # NB: stopped or destroyed on purpose, maybe by another API replica right now
                # (its lock is not ours): that step records it; reporting it here failed the
                # stop with a 409 and the sandbox in `error: agent_exited`.
                continue
            if state == "missing":
                reasons[rid] = RUNTIME_GONE
            elif self._runtime.agent_oom_killed(rid):
                reasons[rid] = OOM_KILLED
            else:
                reasons[rid] = AGENT_EXITED
        return reasons

    def oom_kills(self, runtime_ids: Collection[str]) -> list[OomKill]:
        """The OOM kills in the `work` cgroups of these containers since the last call."""
        return self._ooms.check(runtime_ids)
