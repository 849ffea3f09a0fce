"""A full disk under the home gives 507 `insufficient_storage`, never a 500 or half a change.

Two layers. `StorageGuard` (ASGI) refuses a request that would write (any method but GET,
HEAD, OPTIONS and DELETE: destroying is how space comes back) before it starts, while the
home's filesystem has less than `min_free_bytes` left; a write stopped half-way would leave
the sandboxes' btrfs pool, whose backing file is sparse on that filesystem, to fail its own
writes. And `storage_full` recognises what a full disk raises anyway (ENOSPC or EDQUOT from
the OS, SQLITE_FULL from the store) anywhere in an exception's chain, so the app's handlers
answer 507 for it too. SQLite rolls back a transaction that could not be written: the state
stays as it was.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from pathlib import Path

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hutch.server._errors import InsufficientStorage

_WRITES_ALLOWED = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
CHECK_EVERY = 1.0  # seconds a free-space reading is trusted


def storage_full(exc: BaseException) -> bool:
    """Whether a full disk is what `exc` (or an exception it came from) is about."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(current, sqlite3.OperationalError | sqlite3.DatabaseError) and (
            getattr(current, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
            or "database or disk is full" in str(current)
        ):
            return True
        text = str(current)
        if "No space left on device" in text or "Disk quota exceeded" in text:
            return True  # an OSError reported through a runtime or runc error's text
        current = current.__cause__ or current.__context__
    return False


def full_disk_error(home: Path) -> InsufficientStorage:
    return InsufficientStorage(
        f"the server's disk is full (its home {home}): nothing was changed. Free space on "
        "the host, or destroy sandboxes you no longer need, then retry"
    )


class StorageGuard:
    def __init__(self, app: ASGIApp, home: Path, min_free_bytes: int) -> None:
        self.app = app
        self._home = home
        self._min_free = min_free_bytes
        self._checked_at = 0.0
        self._full = False

    def _is_full(self) -> bool:
        now = time.monotonic()
        if now - self._checked_at >= CHECK_EVERY:
            self._checked_at = now
            try:
                st = os.statvfs(self._home)
            except OSError:
                self._full = False  # cannot tell: let the request find out
            else:
                self._full = st.f_bavail * st.f_frsize < self._min_free
        return self._full

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] not in _WRITES_ALLOWED
            and self._min_free > 0
            and self._is_full()
        ):
            error = full_disk_error(self._home)
            response = JSONResponse(error.body(), status_code=error.status)
            await response(scope, _no_receive, send)
            return
        await self.app(scope, receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
