"""The user namespaces that hold the sandboxes' uid ranges for idmapped mounts, made ahead and
kept.

Making one costs a helper process (`unshare --user`, `_idmapped.make_userns`): 2 ms on an
idle host, 15-30 ms on a loaded one, nearly all of what a range added to a create. A
namespace's map is a function of its range only, and it is only ever handed to
`mount_setattr` (no process lives in it), so one per range serves every sandbox that gets the
range, for as long as the server runs. Ranges are handed out lowest free first, so after a
create takes range n the next create most likely takes n+1: that one is made in the
background while the create goes on. A host that has run N sandboxes at once holds N of
these (an fd each, a few hundred bytes of kernel memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from hutch.runtime.container._idmapped import make_userns

log = logging.getLogger("hutch.runtime")


class UsernsCache:
    """Args:
    ahead: how many ranges after the one a create takes to make in the background.
    """

    def __init__(self, ahead: int = 2) -> None:
        self._ahead = ahead
        self._fds: dict[int, int] = {}  # range base -> fd of its user namespace
        self._making: dict[int, asyncio.Task[int]] = {}

    async def get(self, base: int, step: int) -> int:
        """The fd of the namespace of the range at `base` (kept here: do not close it); the
        next ranges (`base + step`, ...) start being made."""
        for later in range(1, self._ahead + 1):
            if base + later * step not in self._fds:
                self._start(base + later * step)
        fd = self._fds.get(base)
        if fd is not None:
            return fd
        # NB: shielded: a cancelled create must not cancel a namespace another create (or
        # the next one) waits for.
        return await asyncio.shield(self._start(base))

    def _start(self, base: int) -> asyncio.Task[int]:
        """The task making the namespace of the range at `base` (one at a time per range)."""
        task = self._making.get(base)
        if task is None:
            task = self._making[base] = asyncio.create_task(self._make(base))
            task.add_done_callback(_log_failure)
        return task

    async def _make(self, base: int) -> int:
        try:
            fd = await make_userns(base)
            self._fds[base] = fd
            return fd
        finally:
            self._making.pop(base, None)

    def close(self) -> None:
        for task in self._making.values():
            task.cancel()
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()


def _log_failure(task: asyncio.Task[int]) -> None:
    # A namespace made ahead that nobody waited for: its failure is only logged (the create
    # that needs it makes it again, and fails with the reason).
    if not task.cancelled() and task.exception() is not None:
        log.warning("could not make a user namespace ahead: %s", task.exception())
