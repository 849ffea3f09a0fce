"""Relaying an agent stream to an HTTP client as binary frames."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from hutch._wire import Frame, Kind, encode_frame_parts, encode_json_frame
from hutch.node import AgentConnection, AgentError, AgentStream
from hutch.server._models import ExecResult


async def gather_exec(stream: AgentStream) -> tuple[ExecResult, dict[str, Any]]:
    """An exec's frames (a command, or a session's command) gathered into its `ExecResult`,
    with the agent's RESULT as sent: the caller maps an ``error`` in it. A lost agent raises
    `AgentError`."""
    out: list[bytes] = []
    err: list[bytes] = []
    result: dict[str, Any] = {}
    async for frame in stream:
        if frame.kind is Kind.DATA:
            (out if frame.channel == 1 else err).append(frame.payload)
        elif frame.kind is Kind.RESULT:
            result = frame.json()
    gathered = ExecResult(
        exit_code=int(result.get("exit_code", -1)),
        stdout=b"".join(out).decode("utf-8", "replace"),
        stderr=b"".join(err).decode("utf-8", "replace"),
        duration=float(result.get("duration", 0.0)),
        timed_out=bool(result.get("timed_out", False)),
        oom_killed=bool(result.get("oom_killed", False)),
    )
    return gathered, result


# Frames already received are sent together, up to this much: one write and one chunk for
# the client to read instead of two per frame (an exec of `true` was 8 writes). A payload this
# big goes out on its own, uncopied.
BATCH_BYTES = 64 * 1024


class FinalPiece(bytes):
    """The last piece of a relayed body (it holds the RESULT): `FramesResponse` sends it with
    the body's end in one write."""


class FramesResponse(StreamingResponse):
    """A streamed body of frames whose final piece goes out together with the end of the
    chunked body: one write and one wake-up of the client less per stream. The head waits
    for the first piece, so that an exec of `true` is one write in all. Any other iterable
    body is sent as StreamingResponse sends it.

    A client that leaves ends the body (the generator is closed: the exec is cancelled), as
    with StreamingResponse, but through one plain task waiting for the disconnect instead of
    Starlette's anyio task group (a task group, a cancel scope and two tasks per response
    under uvicorn's ASGI 2.3: ~5% of the server's CPU per exec)."""

    _ending = False  # the body's last message is being sent: a disconnect no longer matters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        if scope["type"] != "http" or task is None:
            await super().__call__(scope, receive, send)
            return
        left = False

        async def cancel_on_disconnect() -> None:
            nonlocal left
            while (await receive())["type"] != "http.disconnect":
                pass
            # NB: uvicorn also says "disconnect" once the response is complete; only a client
            # gone before the end cancels the body.
            if not self._ending:
                left = True
                task.cancel()

        watcher = asyncio.get_running_loop().create_task(cancel_on_disconnect())
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            # NB: a cancel() made while this task waits inside stream_response is delivered
            # there, never later: the watcher is cancelled below before this task waits again.
            if not left:
                raise
            task.uncancel()
        finally:
            watcher.cancel()
        if self.background is not None:
            await self.background()

    async def stream_response(self, send: Send) -> None:
        # NB: the head waits for the first piece (an exec's "started" event comes at once), so
        # both are sent in one turn of the loop and leave in one write
        # (proxy/_coalesced_writes): an exec of `true` is then one write to the client and
        # one read for it, instead of two of each.
        start = {"type": "http.response.start", "status": self.status_code}
        started = False
        body = self.body_iterator
        async for chunk in body:
            if not started:
                await send({**start, "headers": self.raw_headers})
                started = True
            final = isinstance(chunk, FinalPiece)
            self._ending = final
            await send({"type": "http.response.body", "body": chunk, "more_body": not final})
            if final:
                # NB: close the generator now: its `finally` gives back the agent connection.
                aclose = getattr(body, "aclose", None)
                if aclose is not None:
                    await aclose()
                return
        if not started:
            await send({**start, "headers": self.raw_headers})
        self._ending = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def relay_frames(
    stream: AgentStream, first: Frame | None = None
) -> AsyncGenerator[bytes, None]:
    """The frames of ``stream`` (after ``first``, if the caller already read it) as the body of
    a streamed response, on stream id 0, ending after the RESULT.

    Frames that are already waiting are batched into one piece; a frame is never held back
    for one that has not arrived (live output stays live).

    A lost agent ends the body with an error RESULT. A client that leaves mid-stream cancels
    the op (kills the exec, interrupts the code) rather than orphan it.
    """
    done = False
    batch: list[bytes] = []
    size = 0

    def add(frame: Frame) -> list[bytes]:
        """Batch the frame's parts; returns what must be sent now (in order)."""
        nonlocal done, batch, size
        done = done or frame.kind is Kind.RESULT
        ready: list[bytes] = []
        for part in encode_frame_parts(frame.kind, 0, frame.payload, frame.channel, frame.offset):
            if len(part) >= BATCH_BYTES:
                if batch:
                    ready.append(b"".join(batch))
                ready.append(part)
                batch, size = [], 0
            elif part:
                batch.append(part)
                size += len(part)
        if batch and (done or size >= BATCH_BYTES or stream.buffered() == 0):
            ready.append(b"".join(batch))
            batch, size = [], 0
        if done and ready and len(ready[-1]) < BATCH_BYTES:
            ready[-1] = FinalPiece(ready[-1])
        return ready

    try:
        if first is not None:
            for piece in add(first):
                yield piece
        if not done:
            async for frame in stream:
                for piece in add(frame):
                    yield piece
        if batch:
            yield b"".join(batch)
    except AgentError as exc:
        done = True
        error = {"error": {"code": "sandbox_unavailable", "message": str(exc)}}
        yield FinalPiece(b"".join([*batch, encode_json_frame(Kind.RESULT, 0, error)]))
    finally:
        if not done:
            with contextlib.suppress(Exception):
                await stream.cancel()


async def relay_on_own(
    connecting: Awaitable[AgentConnection],
    open_on: Callable[[AgentConnection], Awaitable[AgentStream]],
    release: Callable[[AgentConnection], Awaitable[None]] | None = None,
) -> AsyncGenerator[bytes, None]:
    """The frames of the stream `open_on` opens on a new connection of its own: the
    connection closes when the body ends, or at once if the stream does not open. Its own,
    so that a client that stops reading stalls only this stream, never the shared connection
    every other request to the sandbox uses.

    NB: a drain does not close it: like every in-flight request, a command being streamed
    may finish during the server's graceful shutdown.

    With ``release``, a connection whose stream was answered to the end is handed to it
    (the gateway keeps it for the next stream) instead of closed."""
    conn = await connecting
    try:
        stream = await open_on(conn)
    except BaseException:
        await conn.close()
        raise
    return _relay_then_close(conn, stream, release)


async def _relay_then_close(
    conn: AgentConnection,
    stream: AgentStream,
    release: Callable[[AgentConnection], Awaitable[None]] | None,
) -> AsyncGenerator[bytes, None]:
    frames = relay_frames(stream)
    try:
        async for piece in frames:
            yield piece
    finally:
        await frames.aclose()
        if release is not None and stream.answered:
            await release(conn)
        else:
            await conn.close()
