"""SIGTERM drains: the server stops taking connections, lets the requests in flight finish
(for at most `DRAIN_SECONDS`), and ends its open streams so that their clients resume on the
next server: event streams and process-log streams end without their last frame, and the
SDK resumes them from the last event id or byte offset it got. Sandboxes keep running (they
never belonged to the server's process tree).

uvicorn handles the signal; this subclass tells the app as soon as it arrives (before
uvicorn waits for the connections), which is when the streams must end.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn

DRAIN_SECONDS = 10  # how long requests in flight may take to finish after a SIGTERM


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_drain: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_drain = on_drain
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drained = False

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if not self._drained and self._loop is not None:
            self._drained = True
            # NB: a signal handler interrupts the loop anywhere: schedule, do not run here.
            self._loop.call_soon_threadsafe(self._on_drain)
