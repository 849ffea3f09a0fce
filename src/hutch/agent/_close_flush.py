"""Under gVisor: make the host let go of the files the sandbox has closed (bucket uploads).

rclone uploads a bucket's file after the *host's* last close of it. Under gVisor the host
file is opened by the gofer (runsc's file server), and when the sentry drops a closed file it
does not tell the gofer at once: this runsc's lisafs client queues the Close of the file's
gofer handles and sends the queue when it holds 100 of them, or at once together with the
close of a deleted regular file (pkg/lisafs/client.go `CloseFD`, gofer `destroyLocked`).
Until then the host file stays open and nothing is uploaded: a file written into a bucket
waited for about a hundred more file closes in the sandbox, or its unmount.

A flush is that second case done on purpose: create a file on the root mount (the gofer
connection that also serves the buckets, which are host mounts under the rootfs), unlink it,
close it. Its close goes to the gofer at once and takes every queued close with it. Nothing
the sandbox still holds open is closed (a file the sandbox holds is not queued).

Only under gVisor (``HUTCH_AGENT_CLOSE_FLUSH`` names the file: runc's host kernel closes at
once). While the host says a writable bucket is mounted (op ``flush_closes``), a thread of the
agent flushes every ``every`` seconds and as soon as a process the agent reaped or an op it ran
may have closed a file. The thread, not the loop: a flush waits for the gofer, whose close
of a bucket file waits for rclone (FUSE flush), and a stuck rclone must not stop the agent.
"""

from __future__ import annotations

import threading
import time

from ._gofer_close import MIN_GAP, flush
from ._loop import report
from ._requests import InvalidRequest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from hutch._wire.agent_calls import FlushClosesResult

    from ._server import Agent

MAX_EVERY = 60.0


class CloseFlusher:
    """The flushing thread: started by the first ``enable``, idle while disabled."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._every: float | None = None  # None: disabled
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed = False  # reported once, not at every tick
        self.flushes = 0

    @property
    def every(self) -> float | None:
        return self._every

    def enable(self, every: float | None) -> None:
        """Flush every `every` seconds and on `poke` (None or 0: stop)."""
        changed = (every or None) != self._every
        self._every = every or None
        if self._every is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="close-flush", daemon=True)
            self._thread.start()
        elif changed:
            self._wake.set()  # the thread waits again, for the new period

    def poke(self) -> None:
        """Something in the sandbox may have closed a file: flush soon (when enabled)."""
        if self._every is not None:
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(self._every)
            self._wake.clear()
            if self._every is None:
                continue
            try:
                flush(self._path)
                self.flushes += 1
                self._failed = False
            except OSError as e:
                if not self._failed:
                    report(f"cannot flush closed files to the host ({self._path}: {e})")
                self._failed = True
            time.sleep(MIN_GAP)


def flush_closes_op(agent: Agent, request: dict[str, Any]) -> FlushClosesResult:
    every = request.get("every")
    if isinstance(every, bool) or not isinstance(every, int | float):
        raise InvalidRequest("every", "must be a number of seconds (0: stop flushing)")
    if not 0 <= every <= MAX_EVERY:
        raise InvalidRequest("every", f"must be between 0 and {MAX_EVERY:g} seconds")
    flusher = agent.close_flusher
    if flusher is None:
        if not every or agent.close_flush_path is None:  # runc: nothing to do
            return {"ok": True, "flushing": False, "flushes": 0}
        flusher = agent.close_flusher = CloseFlusher(agent.close_flush_path)
    flusher.enable(float(every))
    return {"ok": True, "flushing": flusher.every is not None, "flushes": flusher.flushes}
