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
from starlette.types import Send

from hutch._wire import Frame, Kind
from hutch._wire.json_text import check_unicode_text
from hutch.e2b._charts import e2b_chart
from hutch.e2b._errors import E2bError, from_api_error
from hutch.e2b._identity import E2B_HOME, SANDBOX_HEADER, in_home
from hutch.e2b._stream_cut import ClientLeft, unless_client_leaves, with_keepalives
from hutch.node import AgentDisconnected, AgentError, AgentStream, parse_result
from hutch.server.routes import ApiError, as_api_error

CHART_MIME = "application/vnd.hutch.chart+json"
DATAFRAME_MIME = "application/vnd.hutch.dataframe+json"
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
KEEPALIVE_S = 5.0  # a silent run still writes this often (E2B's interval)
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
        elif mime == DATAFRAME_MIME:
            line["data"] = value
        elif mime == "text/plain" and isinstance(value, str):
            line["text"] = unquoted(value)
        elif mime in MIME_FIELDS:
            line[MIME_FIELDS[mime]] = value
        else:
            extra[mime] = value
    if extra:
        line["extra"] = extra
    return line


def unquoted(text: str) -> str:
    """A string's repr as E2B's interpreter gives it: without its quotes ('a' -> a)."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


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
        check_unicode_text(raw)
        return model.model_validate(json.loads(raw) if raw.strip() else {})
    except (ValueError, ValidationError) as exc:
        raise E2bError(400, f"invalid request body: {exc}") from None


async def _call(request: Request, op: str, **args: Any) -> dict[str, Any]:
    svc = request.scope["hutch.services"]
    sandbox_id = request.headers[SANDBOX_HEADER]
    # Agent errors go up: the app's handler maps them through Hutch's one table.
    result: dict[str, Any] = await svc.sandboxes.agent_call(sandbox_id)(op, **args)
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
    # E2B's interpreter starts a Python and a JavaScript context with the sandbox; Hutch
    # starts them when they are first used or listed.
    listed = await _call(
        request, "code_context_list", defaults=["python", "javascript"], cwd=E2B_HOME
    )
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
            # E2B's default contexts start in /home/user (used only when one is made now).
            "cwd": E2B_HOME,
            # Set for this run only, then put back (the context's bridge does it).
            "env": body.env_vars or {},
        },
    )

    # The first frame before the 200: an unknown context is a 404, not a broken stream
    # (parse_result raises the agent's error, which the app's handler maps).
    async def first_frame() -> Frame | None:
        try:
            frame = await stream.__anext__()
            while frame.kind is Kind.EOF:  # an early error RESULT comes after the EOFs
                frame = await stream.__anext__()
            return frame
        except AgentDisconnected:
            return None  # killed while its context was starting: a cut stream, as below

    try:
        first = await unless_client_leaves(request, first_frame())
    except ClientLeft:
        await stream.aclose()  # the run, still waiting for its kernel, never starts
        return Response(status_code=499)
    if first is not None and first.kind is Kind.RESULT:
        parse_result(first)

    async def frames() -> AsyncIterator[Frame]:
        if first is None:
            raise AgentDisconnected("the agent connection was closed")
        yield first
        async for frame in stream:
            yield frame

    async def lines() -> AsyncIterator[bytes]:
        def out(line: dict[str, Any]) -> bytes:
            return json.dumps(line, allow_nan=False, default=str).encode() + b"\n"

        done = False
        try:
            async for frame in with_keepalives(frames(), KEEPALIVE_S):
                if frame is None:
                    yield out({"type": "keepalive"})  # E2B's too; the SDK skips it
                elif frame.kind is Kind.DATA:
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
                    count = status.get("execution_count")
                    if isinstance(count, int):
                        yield out({"type": "number_of_executions", "execution_count": count})
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
        except AgentDisconnected:
            raise  # the sandbox is gone: CutOnSandboxLoss cuts the response
        except AgentError as exc:
            yield out({"type": "error", "name": "SandboxError", "value": str(exc), "traceback": ""})
        finally:
            if not done:
                with contextlib.suppress(Exception):
                    await stream.aclose()

    return CutOnSandboxLoss(lines(), media_type="application/x-ndjson")


class CutOnSandboxLoss(StreamingResponse):
    """An NDJSON stream that is cut (no end of the chunked body) when the sandbox goes away
    mid-run, as E2B's proxy cuts it: the SDK then asks whether the sandbox still runs and
    says "the sandbox was killed while the request was in progress"."""

    async def stream_response(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        try:
            async for chunk in self.body_iterator:
                body = chunk if isinstance(chunk, bytes | memoryview) else chunk.encode()
                await send({"type": "http.response.body", "body": body, "more_body": True})
        except AgentDisconnected:
            return  # NB: no final empty body: the server closes the connection mid-stream
        finally:
            # A client that left (a failed send): the run is interrupted now, not whenever
            # the generator is collected.
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


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
