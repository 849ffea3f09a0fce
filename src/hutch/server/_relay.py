"""Relaying an agent stream to an HTTP client as binary frames."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from hutch._wire import Frame, Kind, encode_frame_parts, encode_json_frame
from hutch.server._agent_client import AgentError, AgentStream


async def relay_frames(stream: AgentStream, first: Frame | None = None) -> AsyncIterator[bytes]:
    """The frames of ``stream`` (after ``first``, if the caller already read it) as the body of
    a streamed response, on stream id 0, ending after the RESULT.

    A lost agent ends the body with an error RESULT. A client that leaves mid-stream cancels
    the op (kills the exec, interrupts the code) rather than orphan it.
    """
    done = False

    def encode(frame: Frame) -> tuple[bytes, ...]:
        nonlocal done
        done = done or frame.kind is Kind.RESULT
        return encode_frame_parts(frame.kind, 0, frame.payload, frame.channel, frame.offset)

    try:
        if first is not None:
            for part in encode(first):
                yield part
        if not done:
            async for frame in stream:
                for part in encode(frame):
                    yield part
    except AgentError as exc:
        done = True
        error = {"error": {"code": "sandbox_unavailable", "message": str(exc)}}
        yield encode_json_frame(Kind.RESULT, 0, error)
    finally:
        if not done:
            with contextlib.suppress(Exception):
                await stream.cancel()
