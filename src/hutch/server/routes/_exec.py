"""Commands: `POST /v1/sandboxes/{id}/exec` (gathered) and `/exec/stream` (binary frames)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from hutch.node import AgentError, AgentStream
from hutch.server._deps import ERROR_RESPONSES, FRAMES_MEDIA_TYPE, Services, Svc, require_key
from hutch.server._errors import InvalidRequest
from hutch.server._models import ExecRequest, ExecResult
from hutch.server._relay import gather_exec, relay_frames


def _agent_request(body: ExecRequest) -> dict[str, Any]:
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
    except binascii.Error:
        raise InvalidRequest(
            "'stdin' must be base64", fields=[{"loc": ["body", "stdin"], "message": "not base64"}]
        ) from None


async def _open_exec(svc: Services, sandbox_id: str, body: ExecRequest) -> AgentStream:
    stdin = _stdin_bytes(body)
    stream = await svc.sandboxes.open_stream(sandbox_id, _agent_request(body))
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


def build_exec_router() -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], responses=ERROR_RESPONSES)

    @router.post("/sandboxes/{sandbox_id}/exec", response_model=ExecResult)
    async def exec_command(svc: Svc, sandbox_id: str, body: ExecRequest) -> ExecResult:
        stream = await _open_exec(svc, sandbox_id, body)
        gathered, result = await gather_exec(stream)
        _raise_agent_error(result)
        return gathered

    @router.post(
        "/sandboxes/{sandbox_id}/exec/stream",
        response_class=StreamingResponse,
        responses={200: {"content": {FRAMES_MEDIA_TYPE: {}}, "description": "binary frames"}},
    )
    async def exec_stream(svc: Svc, sandbox_id: str, body: ExecRequest) -> StreamingResponse:
        stream = await _open_exec(svc, sandbox_id, body)
        return StreamingResponse(relay_frames(stream), media_type=FRAMES_MEDIA_TYPE)

    return router
