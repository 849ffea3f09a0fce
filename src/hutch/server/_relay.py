"""Relaying an agent stream to an HTTP client as binary frames."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from hutch._wire import Frame, Kind, encode_frame_parts, encode_json_frame
from hutch.node import AgentError, AgentStream
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
