"""`FramesResponse` (server/_relay.py) as an ASGI server drives it: a client that leaves ends
the body (its generator is closed, which cancels the exec), a response that was sent whole is
never cut by the "disconnect" uvicorn reports after it, and a cancel from outside (a server
shutting down) still cancels."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from hutch.server._relay import FinalPiece, FramesResponse

SCOPE: dict[str, Any] = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}}


class Client:
    """The ASGI server's side: records what was sent; `receive` answers "disconnect" once
    `leave` is set (uvicorn's receive once the client is gone or the response complete)."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.leave = asyncio.Event()

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    async def receive(self) -> dict[str, Any]:
        await self.leave.wait()
        return {"type": "http.disconnect"}


async def test_a_client_that_leaves_mid_body_closes_the_body() -> None:
    client = Client()
    closed = asyncio.Event()

    async def body() -> AsyncGenerator[bytes, None]:
        try:
            yield b"started"
            client.leave.set()
            await asyncio.Event().wait()  # a silent command
            yield b"never"
        finally:
            closed.set()  # relay_frames cancels the exec here

    async with asyncio.timeout(10):
        await FramesResponse(body())(SCOPE, client.receive, client.send)
    assert closed.is_set()
    assert [m.get("body") for m in client.sent] == [None, b"started"]
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_the_disconnect_after_a_whole_response_does_not_cut_its_cleanup() -> None:
    client = Client()
    released = asyncio.Event()

    async def body() -> AsyncGenerator[bytes, None]:
        try:
            yield FinalPiece(b"result")
        finally:
            client.leave.set()  # uvicorn: the response is complete, receive() says so
            for _ in range(5):
                await asyncio.sleep(0)  # the agent connection given back, over a few turns
            released.set()

    async with asyncio.timeout(10):
        await FramesResponse(body())(SCOPE, client.receive, client.send)
    assert released.is_set()
    assert client.sent[-1] == {"type": "http.response.body", "body": b"result", "more_body": False}


async def test_a_cancel_from_outside_still_cancels() -> None:
    client = Client()
    running = asyncio.Event()

    async def body() -> AsyncGenerator[bytes, None]:
        yield b"started"
        running.set()
        await asyncio.Event().wait()
        yield b"never"

    task = asyncio.create_task(FramesResponse(body())(SCOPE, client.receive, client.send))
    await running.wait()
    task.cancel()
    async with asyncio.timeout(10):
        await asyncio.wait([task])
    assert task.cancelled()
