"""The API's transport wrapper (proxy/_coalesced_writes.py): the small writes of one turn of the
loop leave as one write, in order; big ones are neither copied nor delayed; closing sends what
is held and aborting drops it."""

from __future__ import annotations

import asyncio
from typing import Any

from hutch.proxy._coalesced_writes import SEND_AT_ONCE, CoalescedWrites


class RecordingTransport(asyncio.Transport):
    """A transport that keeps each write it is given (what the socket would have sent)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[Any] = []
        self.closed = False
        self.aborted = False

    def write(self, data: Any) -> None:
        self.writes.append(data)

    def writelines(self, list_of_data: Any) -> None:
        self.writes.extend(list_of_data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 7


async def test_small_writes_of_one_turn_leave_as_one_write() -> None:
    raw = RecordingTransport()
    wrapped = CoalescedWrites(raw, asyncio.get_running_loop())
    wrapped.write(b"HTTP/1.1 200 OK\r\n\r\n")
    wrapped.write(b"5\r\nhello\r\n")
    wrapped.write(b"0\r\n\r\n")
    assert raw.writes == []
    assert wrapped.get_write_buffer_size() == 7 + 19 + 10 + 5
    await asyncio.sleep(0)
    assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\n5\r\nhello\r\n0\r\n\r\n"]
    wrapped.write(b"next")
    await asyncio.sleep(0)
    assert raw.writes[1:] == [b"next"]


async def test_a_big_write_goes_at_once_after_what_is_held_and_uncopied() -> None:
    raw = RecordingTransport()
    wrapped = CoalescedWrites(raw, asyncio.get_running_loop())
    big = memoryview(bytes(SEND_AT_ONCE))
    wrapped.write(b"head")
    wrapped.write(big)
    assert raw.writes[0] == b"head" and raw.writes[1] is big
    await asyncio.sleep(0)
    assert len(raw.writes) == 2


async def test_close_sends_what_is_held_and_abort_drops_it() -> None:
    raw = RecordingTransport()
    wrapped = CoalescedWrites(raw, asyncio.get_running_loop())
    wrapped.write(b"bye")
    wrapped.close()
    assert raw.writes == [b"bye"] and raw.closed
    raw = RecordingTransport()
    wrapped = CoalescedWrites(raw, asyncio.get_running_loop())
    wrapped.write(b"dropped")
    wrapped.abort()
    await asyncio.sleep(0)
    assert raw.writes == [] and raw.aborted
    # Anything else is the transport's own.
    assert wrapped.get_extra_info("peername", "none") == "none"
