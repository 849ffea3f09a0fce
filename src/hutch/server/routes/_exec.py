"""Commands: `POST /v1/sandboxes/{id}/exec` (gathered) and `/exec/stream` (binary frames)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from hutch._wire.agent_ops import ExecRequest as AgentExecRequest
from hutch.node import AgentConnection, AgentError, AgentStream
from hutch.server._deps import ERROR_RESPONSES, FRAMES_MEDIA_TYPE, Services, Svc, require_key
from hutch.server._errors import InvalidRequest
from hutch.server._models import ExecRequest, ExecResult
from hutch.server._relay import FramesResponse, gather_exec, relay_on_own


def _agent_request(body: ExecRequest) -> AgentExecRequest:
    return {
        "op": "exec",
        "command": body.command,
        "argv": body.argv,
        "env": body.env or None,
        "cwd": body.cwd,
        "user": body.user,
        "timeout": body.timeout,
        "stdin": body.stdin is not None,
    }


def _stdin_bytes(body: ExecRequest) -> bytes | None:
    if body.stdin is None:
        return None
    try:
        return base64.b64decode(body.stdin, validate=True)
    except ValueError:  # binascii.Error, or a character outside ASCII
        raise InvalidRequest(
            "'stdin' must be base64", fields=[{"loc": ["body", "stdin"], "message": "not base64"}]
        ) from None


async def _open_exec(
    svc: Services, sandbox_id: str, body: ExecRequest, conn: AgentConnection | None = None
) -> AgentStream:
    stdin = _stdin_bytes(body)
    stream = await svc.sandboxes.open_stream(sandbox_id, _agent_request(body), conn)
    if stdin is not None:
        # NB: feed stdin from its own task: a process that echoes its input (cat) would
        # otherwise fill the output buffers while we are still writing, and both sides stall.
        task = asyncio.create_task(_feed_stdin(stream, stdin))
        svc.background.add(task)
        task.add_done_callback(svc.background.discard)
    return stream


async def _feed_stdin(stream: AgentStream, data: bytes) -> None:
    with contextlib.suppress(AgentError):
        if data:
            await stream.send_stdin(data)
        await stream.close_stdin()


def _raise_agent_error(result: dict[str, Any]) -> None:
    error = result.get("error")
    if isinstance(error, dict):
        raise AgentError(str(error.get("code", "invalid")), str(error.get("message")))


async def exec_gathered(svc: Services, sandbox_id: str, body: ExecRequest) -> ExecResult:
    """The command's whole output and exit: `POST .../exec` (also served by
    server/_exec_front.py, which calls this)."""
    stream = await _open_exec(svc, sandbox_id, body)
    gathered, result = await gather_exec(stream)
    _raise_agent_error(result)
    return gathered


async def exec_frames(svc: Services, sandbox_id: str, body: ExecRequest) -> StreamingResponse:
    """The command's frames as they come: `POST .../exec/stream`."""
    # Its own agent connection (the gathered exec above reads all as it comes: it shares).
    frames = await relay_on_own(
        svc.sandboxes.dedicated_agent(sandbox_id),
        lambda conn: _open_exec(svc, sandbox_id, body, conn),
        lambda conn: svc.sandboxes.release_agent(sandbox_id, conn),
    )
    return FramesResponse(frames, media_type=FRAMES_MEDIA_TYPE)


def build_exec_router() -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], responses=ERROR_RESPONSES)

    @router.post("/sandboxes/{sandbox_id}/exec", response_model=ExecResult)
    async def exec_command(svc: Svc, sandbox_id: str, body: ExecRequest) -> ExecResult:
        return await exec_gathered(svc, sandbox_id, body)

    @router.post(
        "/sandboxes/{sandbox_id}/exec/stream",
        response_class=StreamingResponse,
        responses={200: {"content": {FRAMES_MEDIA_TYPE: {}}, "description": "binary frames"}},
    )
    async def exec_stream(svc: Svc, sandbox_id: str, body: ExecRequest) -> StreamingResponse:
        return await exec_frames(svc, sandbox_id, body)

    return router
