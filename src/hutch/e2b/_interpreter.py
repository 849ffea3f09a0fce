"""The code interpreter's HTTP API (E2B's port 49999): ``POST /execute`` streams NDJSON,
``/contexts`` creates, lists, deletes and restarts contexts; on Hutch's code contexts."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from hutch._wire import Frame, Kind
from hutch.e2b._charts import e2b_chart
from hutch.e2b._errors import E2bError, from_api_error
from hutch.e2b._identity import E2B_HOME, SANDBOX_HEADER, in_home
from hutch.node import AgentError, AgentStream, parse_result
from hutch.server.routes import ApiError, as_api_error

CHART_MIME = "application/vnd.hutch.chart+json"
# MIME type -> the field of E2B's result line.
MIME_FIELDS = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
}
LANGUAGE_ALIASES = {"js": "javascript", "ts": "typescript", "py": "python"}


class ExecuteBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    code: str
    context_id: str | None = None
    language: str | None = None
    env_vars: dict[str, str] | None = None


class ContextBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    language: str | None = None
    cwd: str | None = None


def result_line(event: dict[str, Any]) -> dict[str, Any]:
    """A Hutch result event (MIME bundle) as E2B's ``result`` line."""
    line: dict[str, Any] = {"type": "result", "is_main_result": bool(event.get("is_main_result"))}
    extra: dict[str, Any] = {}
    for mime, value in (event.get("data") or {}).items():
        if mime == CHART_MIME and isinstance(value, dict):
            line["chart"] = e2b_chart(value)
        elif mime in MIME_FIELDS:
            line[MIME_FIELDS[mime]] = value
        else:
            extra[mime] = value
    if extra:
        line["extra"] = extra
    return line


def error_line(event: dict[str, Any]) -> dict[str, Any]:
    traceback = event.get("traceback") or []
    text = "\n".join(traceback) if isinstance(traceback, list) else str(traceback)
    return {
        "type": "error",
        "name": str(event.get("name") or "Error"),
        "value": str(event.get("value") or ""),
        "traceback": text,
    }


def _language(raw: str | None) -> str | None:
    return LANGUAGE_ALIASES.get(raw.lower(), raw.lower()) if raw else None


async def _body(request: Request, model: type[BaseModel]) -> Any:
    raw = await request.body()
    try:
        return model.model_validate(json.loads(raw) if raw.strip() else {})
    except (ValueError, ValidationError) as exc:
        raise E2bError(400, f"invalid request body: {exc}") from None


async def _call(request: Request, op: str, **args: Any) -> dict[str, Any]:
    svc = request.scope["hutch.services"]
    sandbox_id = request.headers[SANDBOX_HEADER]
    # Agent errors go up: the app's handler maps them through Hutch's one table.
    result: dict[str, Any] = await svc.sandboxes.call(sandbox_id, op, **args)
    return result


def _context(info: dict[str, Any]) -> dict[str, Any]:
    return {"id": info["id"], "language": info["language"], "cwd": info.get("cwd") or "/"}


async def create_context(request: Request) -> Response:
    body: ContextBody = await _body(request, ContextBody)
    info = await _call(
        request,
        "code_context_create",
        language=_language(body.language),
        cwd=in_home(body.cwd) if body.cwd else E2B_HOME,
        env=None,
    )
    return JSONResponse(_context(info))


async def list_contexts(request: Request) -> Response:
    listed = await _call(request, "code_context_list")
    return JSONResponse([_context(c) for c in listed.get("contexts", [])])


async def delete_context(request: Request) -> Response:
    await _call(request, "code_context_delete", id=request.path_params["context_id"])
    return Response(status_code=204)


async def restart_context(request: Request) -> Response:
    await _call(request, "code_context_restart", id=request.path_params["context_id"])
    return Response(status_code=204)


async def execute(request: Request) -> Response:
    body: ExecuteBody = await _body(request, ExecuteBody)
    if body.context_id and body.language:
        raise E2bError(400, "give a context_id or a language, not both")
    if body.env_vars:
        # NB: a kernel's environment is its own for its life; Hutch has no per-run one.
        raise E2bError(
            400,
            "per-run env_vars are not supported by this server: give envs when the sandbox is "
            "created (Sandbox.create(envs=...)), or set os.environ in the code",
        )
    svc = request.scope["hutch.services"]
    sandbox_id = request.headers[SANDBOX_HEADER]
    stream: AgentStream = await svc.sandboxes.open_stream(
        sandbox_id,
        {
            "op": "code_run",
            "code": body.code,
            "context_id": body.context_id,
            "language": _language(body.language),
            "timeout": None,
        },
    )
    # The first frame before the 200: an unknown context is a 404, not a broken stream
    # (parse_result raises the agent's error, which the app's handler maps).
    first = await stream.__anext__()
    while first.kind is Kind.EOF:  # an early error RESULT comes after the EOFs
        first = await stream.__anext__()
    if first.kind is Kind.RESULT:
        parse_result(first)

    async def frames() -> AsyncIterator[Frame]:
        yield first
        async for frame in stream:
            yield frame

    async def lines() -> AsyncIterator[bytes]:
        def out(line: dict[str, Any]) -> bytes:
            return json.dumps(line, allow_nan=False, default=str).encode() + b"\n"

        done = False
        try:
            async for frame in frames():
                if frame.kind is Kind.DATA:
                    kind = "stdout" if frame.channel == 1 else "stderr"
                    text = frame.payload.decode("utf-8", "replace")
                    yield out({"type": kind, "text": text, "timestamp": time.time_ns() // 1000})
                elif frame.kind is Kind.EVENT:
                    event = frame.json()
                    if event.get("event") == "result":
                        with contextlib.suppress(ValueError):
                            yield out(result_line(event))
                    elif event.get("event") == "error":
                        yield out(error_line(event))
                elif frame.kind is Kind.RESULT:
                    done = True
                    status = frame.json()
                    if status.get("status") == "timeout":
                        yield out(
                            {
                                "type": "error",
                                "name": "TimeoutError",
                                "value": "the run timed out",
                                "traceback": "",
                            }
                        )
                    yield out({"type": "end_of_execution"})
        except AgentError as exc:
            yield out({"type": "error", "name": "SandboxError", "value": str(exc), "traceback": ""})
        finally:
            if not done:
                with contextlib.suppress(Exception):
                    await stream.aclose()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def build_interpreter_app() -> Starlette:
    async def on_e2b(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, E2bError)
        return exc.response()

    async def on_api(_: Request, exc: Exception) -> Response:
        error = as_api_error(exc)
        assert error is not None
        return from_api_error(error).response()

    return Starlette(
        routes=[
            Route("/execute", execute, methods=["POST"]),
            Route("/contexts", create_context, methods=["POST"]),
            Route("/contexts", list_contexts, methods=["GET"]),
            Route("/contexts/{context_id}", delete_context, methods=["DELETE"]),
            Route("/contexts/{context_id}/restart", restart_context, methods=["POST"]),
        ],
        exception_handlers={E2bError: on_e2b, ApiError: on_api, AgentError: on_api},
    )
