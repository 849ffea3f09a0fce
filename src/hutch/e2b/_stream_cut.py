"""Cutting an envd stream when its sandbox went away mid-request, as E2B's proxy does.

E2B's clients tell "the sandbox was killed" from other failures by the connection ending
mid-stream (then they probe the sandbox's health): the JavaScript SDK only that way. So an
envd stream that would end with Hutch's "lost the connection to sandbox" Connect error is
cut instead: that end-of-stream message and the end of the body are never sent, and the
server closes the connection when the app returns, with a TCP reset where the front offers
one (RESET_ON_CLOSE): over HTTP/1.1 that is what E2B's proxy's HTTP/2 stream reset looks like
to a client. A plain close mid-chunk is a protocol error to the Python SDK's HTTP client
(pyqwest), which e2b 2.45 does not take for a dropped connection, so it never probed the
sandbox and blamed the sandbox's timeout instead of saying it was killed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from starlette.requests import Request
from starlette.types import Message, Scope, Send

from hutch.e2b._errors import LOST_CONNECTION
from hutch.proxy import RESET_ON_CLOSE

T = TypeVar("T")
_END_STREAM = 0x02  # Connect's envelope flag of the last message of a stream
_LOST = LOST_CONNECTION.encode()


def cut_when_sandbox_lost(scope: Scope, send: Send) -> Send:
    """`send`, except that a stream's end reporting a lost sandbox cuts the response."""
    cut = False
    reset = scope.get(RESET_ON_CLOSE)

    async def guarded(message: Message) -> None:
        nonlocal cut
        if cut:
            return
        if message["type"] == "http.response.body":
            body = bytes(message.get("body", b""))
            if body[:1] == bytes([_END_STREAM]) and _LOST in body:
                cut = True
                if callable(reset):
                    reset()
                return
        await send(message)

    return guarded


class ClientLeft(Exception):
    """The client disconnected before the answer started."""


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result; if the client disconnects first, `work` is cancelled and
    `ClientLeft` raised (a run waiting for its kernel must not start for nobody)."""
    task = asyncio.ensure_future(work)

    async def left() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(left())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    raise ClientLeft


async def with_keepalives(source: AsyncIterator[T], every: float) -> AsyncIterator[T | None]:
    """`source`'s items, and None after every `every` s without one: a stream that writes
    now and then notices a client that left (the write fails) during a silent run."""
    it = source.__aiter__()
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(it.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=every)
            if not done:
                yield None
                continue
            task, pending = pending, None
            try:
                item = task.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
