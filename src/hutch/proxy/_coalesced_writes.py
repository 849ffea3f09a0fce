"""A transport wrapper that sends the small writes of one turn of the event loop together.

NB: uvicorn writes a response's head and its body apart (two send() calls), and the client
then often reads them apart too. For the API's many small answers (an exec of `true` is a
head and one body piece) that is a syscall and a wake-up more on each side: the server's
writes were a sixth of its profile under 8 exec clients. Writes made in one turn are held and
go out as one write at the end of the turn; a write that would make the
held bytes SEND_AT_ONCE or more goes out at once with what is held, so big bodies are neither
copied nor delayed and the real transport's flow control still sees every byte.
"""

from __future__ import annotations

import asyncio
from typing import Any

SEND_AT_ONCE = 64 * 1024


class CoalescedWrites:
    """Wraps ``transport``; everything but writing and closing is the transport's own."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.raw = transport
        self._loop = loop
        self._held: list[bytes | bytearray | memoryview] = []
        self._held_bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        size = len(data)
        if self._held_bytes + size >= SEND_AT_ONCE:
            self._flush()  # what is held goes first, then this, uncopied
            self.raw.write(data)
            return
        if not self._held:
            self._loop.call_soon(self._flush)
        self._held.append(data)
        self._held_bytes += size

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        held = self._held
        if not held:
            return
        self._held = []
        self._held_bytes = 0
        if self.raw.is_closing():
            return
        # NB: joined, not writelines: uvloop's writelines makes one write() per buffer. The
        # held bytes are few (under SEND_AT_ONCE), so the copy costs less than a syscall.
        self.raw.write(held[0] if len(held) == 1 else b"".join(held))

    def get_write_buffer_size(self) -> int:
        return self.raw.get_write_buffer_size() + self._held_bytes

    def write_eof(self) -> None:
        self._flush()
        self.raw.write_eof()

    def close(self) -> None:
        self._flush()
        self.raw.close()

    def abort(self) -> None:
        self._held = []
        self._held_bytes = 0
        self.raw.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)
