"""The code interpreter's routes: code contexts and runs, streamed as frames.

The agent owns the contexts (each is an interpreter process inside the sandbox); these routes
forward to it. ``POST .../code/run/stream`` answers with binary frames: DATA for stdout (1)
and stderr (2), EVENTs ``{"event": "context"|"result"|"error", ...}``, one RESULT. An error
found before the code starts (unknown language or context, an image without the runtime) is
an HTTP error instead, so clients see the usual ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, Depends, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from hutch._wire import Kind
from hutch._wire.agent_calls import CodeRunRequest as AgentCodeRun
from hutch._wire.frames import Frame
from hutch.node import (
    AgentStream,
    parse_result,
)
from hutch.server._deps import ERROR_RESPONSES, FRAMES_MEDIA_TYPE, Svc, require_key
from hutch.server._errors import (
    InvalidRequest,
    SandboxUnavailable,
)
from hutch.server._relay import FramesResponse, relay_frames

LANGUAGES = ("python", "javascript", "typescript", "bash")


class CodeContextCreate(BaseModel):
    language: str = Field("python", description="python, javascript or typescript")
    cwd: str | None = Field(None, description="working directory (relative: under /workspace)")
    env: dict[str, str] = Field(default_factory=dict)


class CodeContextInfo(BaseModel):
    id: str
    language: str
    cwd: str | None = None
    state: str = Field(description="starting, ready or dead")
    busy: bool = False


class CodeContextList(BaseModel):
    contexts: list[CodeContextInfo]
    pool: dict[str, str] = Field(
        default_factory=dict, description="warm spare interpreters: language -> state"
    )


class CodeRunRequest(BaseModel):
    code: str
    context_id: str | None = Field(None, description="None: the language's default context")
    language: str | None = Field(None, description="for the default context; default python")
    timeout: float | None = Field(None, gt=0, description="seconds; interrupts the run")


def _check_language(language: str | None) -> None:
    if language is not None and language.lower() not in (*LANGUAGES, "py", "js", "ts", "sh"):
        raise InvalidRequest(
            f"unknown language {language!r}; supported: {', '.join(LANGUAGES)}",
            code="unknown_language",
        )


def build_code_router() -> APIRouter:
    router = APIRouter(
        prefix="/v1/sandboxes/{sandbox_id}/code",
        dependencies=[Depends(require_key)],
        responses=ERROR_RESPONSES,
    )

    @router.post("/contexts", status_code=201, response_model=CodeContextInfo)
    async def create_code_context(
        svc: Svc, sandbox_id: str, body: CodeContextCreate | None = None
    ) -> CodeContextInfo:
        body = body or CodeContextCreate.model_validate({})
        _check_language(body.language)
        result = await svc.sandboxes.agent_call(sandbox_id)(
            "code_context_create",
            language=body.language,
            cwd=body.cwd,
            env=body.env,
        )
        return CodeContextInfo.model_validate(result)

    @router.get("/contexts", response_model=CodeContextList)
    async def list_code_contexts(svc: Svc, sandbox_id: str) -> CodeContextList:
        result = await svc.sandboxes.agent_call(sandbox_id)("code_context_list")
        return CodeContextList.model_validate(result)

    @router.delete("/contexts/{context_id}", status_code=204)
    async def delete_code_context(svc: Svc, sandbox_id: str, context_id: str) -> Response:
        await svc.sandboxes.agent_call(sandbox_id)("code_context_delete", id=context_id)
        return Response(status_code=204)

    @router.post("/contexts/{context_id}/restart", response_model=CodeContextInfo)
    async def restart_code_context(svc: Svc, sandbox_id: str, context_id: str) -> CodeContextInfo:
        result = await svc.sandboxes.agent_call(sandbox_id)("code_context_restart", id=context_id)
        return CodeContextInfo.model_validate(result)

    @router.post(
        "/run/stream",
        response_class=StreamingResponse,
        responses={200: {"content": {FRAMES_MEDIA_TYPE: {}}, "description": "binary frames"}},
    )
    async def run_code_stream(svc: Svc, sandbox_id: str, body: CodeRunRequest) -> StreamingResponse:
        _check_language(body.language)
        request: AgentCodeRun = {
            "op": "code_run",
            "code": body.code,
            "context_id": body.context_id,
            "language": body.language,
            "timeout": body.timeout,
        }
        stream = await svc.sandboxes.open_stream(sandbox_id, request)
        first = await _first_frame(stream, sandbox_id)
        return FramesResponse(relay_frames(stream, first), media_type=FRAMES_MEDIA_TYPE)

    return router


async def _first_frame(stream: AgentStream, sandbox_id: str) -> Frame:
    """Wait for the run to start (the context is ready) or fail, as an HTTP error."""
    try:
        async for frame in stream:
            if frame.kind is Kind.RESULT:
                parse_result(frame)  # raises the agent's error
            return frame
    except BaseException:  # an agent's error, or the client left while the context was starting
        with contextlib.suppress(Exception):
            await stream.aclose()
        raise
    raise SandboxUnavailable(f"sandbox {sandbox_id}'s agent ended the run without an answer")
