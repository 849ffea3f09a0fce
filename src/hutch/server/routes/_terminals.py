"""Interactive terminals: create, list, resize and close over HTTP; attach over a WebSocket.

WebSocket protocol (``/v1/sandboxes/{id}/terminals/{terminal_id}/ws``):

- Auth: ``Authorization: Bearer <key>`` where the client can set headers, else (browsers)
  the subprotocol list ``["hutch.terminal.v1", "hutch.key.<key>"]``; the server selects
  ``hutch.terminal.v1`` and never echoes the key. A key in the URL is not accepted (URLs
  land in logs). A bad key: the socket is accepted and closed with 4401, nothing started.
- Binary frames: bytes. Client -> server: keyboard input. Server -> client: terminal output.
- Text frames: JSON control. Client -> server: ``{"type": "resize", "cols": 120, "rows": 40}``.
  Server -> client: ``{"type": "attached", "id", "offset", "pid"}`` first (``offset``: where
  the replayed output starts), ``{"type": "exit", "exit_code": 0}`` when the shell has exited
  (then close 1000), ``{"type": "error", "code", "message"}`` for a bad control message.
- Close codes: 4401 unauthorized, 4404 unknown sandbox or terminal, 4409 sandbox not
  running, 4503 agent unavailable.
- ``?since=N`` replays output from byte offset N (default: all the agent still holds,
  at least the last 256 KiB).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response, WebSocket
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.websockets import WebSocketState

from hutch._wire import Frame, Kind
from hutch.node import (
    AgentConnection,
    AgentError,
    AgentStream,
    parse_result,
)
from hutch.server._agent_errors import as_api_error
from hutch.server._deps import Services, Svc, authorize, require_key
from hutch.server._errors import ApiError
from hutch.server.services._keys import key_from_headers

SUBPROTOCOL = "hutch.terminal.v1"
KEY_SUBPROTOCOL_PREFIX = "hutch.key."
MAX_DIMENSION = 1000
BATCH_BYTES = 1024 * 1024


class TerminalCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cols: int = Field(default=80, ge=1, le=MAX_DIMENSION)
    rows: int = Field(default=24, ge=1, le=MAX_DIMENSION)
    shell: str | None = Field(
        default=None,
        description="e.g. 'bash' or '/bin/sh'; default: the image's CMD if it is a shell, "
        "else bash, else sh",
    )
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    idle_timeout: float | None = Field(
        default=None, gt=0, description="seconds with no client attached before it is closed"
    )


class TerminalResize(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cols: int = Field(ge=1, le=MAX_DIMENSION)
    rows: int = Field(ge=1, le=MAX_DIMENSION)


class TerminalInfo(BaseModel):
    id: str
    pid: int
    cols: int
    rows: int
    shell: str
    exit_code: int | None = Field(description="null while the shell runs")
    offset: int = Field(description="bytes of output so far")
    attached: int = Field(description="clients attached now")


class TerminalList(BaseModel):
    terminals: list[TerminalInfo]


def _services(app: Any) -> Services:
    svc: Services = app.state.services
    return svc


def _to_info(fields: Mapping[str, object]) -> TerminalInfo:
    return TerminalInfo.model_validate({k: fields[k] for k in TerminalInfo.model_fields})


async def _attach(
    svc: Services, sandbox_id: str, terminal_id: str, since: int
) -> tuple[AgentConnection, AgentStream, Frame]:
    """The shared connection, the attach stream and its first frame (the agent's error raised)."""
    conn = await svc.sandboxes.agent(sandbox_id)
    stream = await svc.sandboxes.open_stream(
        sandbox_id, {"op": "pty_attach", "id": terminal_id, "since": since}, conn
    )
    try:
        first = await anext(stream)
        if first.kind is Kind.RESULT:
            parse_result(first)
    except BaseException:
        await stream.aclose()
        raise
    return conn, stream, first


def _ws_key(websocket: WebSocket) -> str | None:
    key = key_from_headers(
        websocket.headers.get("authorization"), websocket.headers.get("x-api-key")
    )
    if key:
        return key
    for proto in websocket.scope.get("subprotocols") or []:
        if proto.startswith(KEY_SUBPROTOCOL_PREFIX):
            return str(proto[len(KEY_SUBPROTOCOL_PREFIX) :])
    return None


async def _refuse(websocket: WebSocket, subprotocol: str | None, code: int, reason: str) -> None:
    # Accept, then close with an application code: a browser sees the code and the reason,
    # where a refused handshake would only show "failed".
    await websocket.accept(subprotocol=subprotocol)
    await websocket.close(code, reason.encode()[:120].decode(errors="ignore"))


WS_CLOSE_CODES = {401: 4401, 404: 4404, 409: 4409, 429: 4429, 503: 4503}


def build_terminals_router() -> APIRouter:
    router = APIRouter(prefix="/v1")
    http = APIRouter(dependencies=[Depends(require_key)])

    @http.post("/sandboxes/{sandbox_id}/terminals", status_code=201, response_model=TerminalInfo)
    async def create_terminal(
        svc: Svc, sandbox_id: str, body: TerminalCreate | None = None
    ) -> TerminalInfo:
        args = (body or TerminalCreate()).model_dump()
        fields = await svc.sandboxes.agent_call(sandbox_id)("pty_create", **args)
        return _to_info(fields)

    @http.get("/sandboxes/{sandbox_id}/terminals", response_model=TerminalList)
    async def list_terminals(svc: Svc, sandbox_id: str) -> TerminalList:
        fields = await svc.sandboxes.agent_call(sandbox_id)("pty_list")
        return TerminalList(terminals=[_to_info(t) for t in fields["terminals"]])

    @http.get("/sandboxes/{sandbox_id}/terminals/{terminal_id}", response_model=TerminalInfo)
    async def get_terminal(
        sandbox_id: str,
        terminal_id: str,
        svc: Svc,
    ) -> TerminalInfo:
        return _to_info(await svc.sandboxes.agent_call(sandbox_id)("pty_info", id=terminal_id))

    @http.post(
        "/sandboxes/{sandbox_id}/terminals/{terminal_id}/resize", response_model=TerminalInfo
    )
    async def resize_terminal(
        sandbox_id: str,
        terminal_id: str,
        body: TerminalResize,
        svc: Svc,
    ) -> TerminalInfo:
        fields = await svc.sandboxes.agent_call(sandbox_id)(
            "pty_resize", id=terminal_id, **body.model_dump()
        )
        return _to_info(fields)

    @http.delete("/sandboxes/{sandbox_id}/terminals/{terminal_id}", status_code=204)
    async def close_terminal(
        sandbox_id: str,
        terminal_id: str,
        svc: Svc,
    ) -> Response:
        await svc.sandboxes.agent_call(sandbox_id)("pty_close", id=terminal_id)
        return Response(status_code=204)

    @http.get(
        "/sandboxes/{sandbox_id}/terminals/{terminal_id}/ws",
        status_code=426,
        summary="Attach to a terminal (WebSocket)",
        description=__doc__.split("\n\n", 1)[1],
        responses={426: {"description": "this route speaks WebSocket only"}},
    )
    async def terminal_ws_doc(sandbox_id: str, terminal_id: str) -> JSONResponse:
        return JSONResponse(
            {
                "error": {
                    "code": "upgrade_required",
                    "message": "this route is a WebSocket: connect with ws:// (Upgrade: websocket)",
                }
            },
            status_code=426,
        )

    @router.websocket("/sandboxes/{sandbox_id}/terminals/{terminal_id}/ws")
    async def terminal_ws(
        websocket: WebSocket,
        sandbox_id: str,
        terminal_id: str,
        since: Annotated[int, Query(ge=0)] = 0,
    ) -> None:
        svc = _services(websocket.app)
        offered = websocket.scope.get("subprotocols") or []
        subprotocol = SUBPROTOCOL if SUBPROTOCOL in offered else None
        try:
            # The same check as every HTTP route's: key, rate, and another team's sandbox
            # is not found.
            authorize(svc, _ws_key(websocket), websocket.path_params)
        except ApiError as refused:
            reason = "missing or invalid API key" if refused.status == 401 else refused.code
            await _refuse(websocket, subprotocol, WS_CLOSE_CODES.get(refused.status, 4500), reason)
            return
        try:
            conn, stream, first = await _attach(svc, sandbox_id, terminal_id, since)
        except Exception as exc:
            error = as_api_error(exc)
            if error is None:
                raise
            await _refuse(
                websocket, subprotocol, WS_CLOSE_CODES.get(error.status, 4500), error.code
            )
            return
        await websocket.accept(subprotocol=subprotocol)
        await _relay(websocket, conn, stream, terminal_id, first.json())

    router.include_router(http)
    return router


async def _relay(
    websocket: WebSocket,
    conn: AgentConnection,
    stream: AgentStream,
    terminal_id: str,
    first: dict[str, Any],
) -> None:
    await websocket.send_text(
        json.dumps({"type": "attached", **{k: first.get(k) for k in ("id", "offset", "pid")}})
    )

    async def to_client() -> None:
        async for frame in stream:
            if frame.kind is Kind.DATA:
                # Batch what has already arrived into one message: per-message costs (here,
                # in the browser, in the SDK) dominate when a program floods the terminal.
                payload = frame.payload
                if stream.buffered():
                    parts = [payload]
                    size = len(payload)
                    while size < BATCH_BYTES and stream.buffered():
                        frame = await anext(stream)
                        if frame.kind is not Kind.DATA:
                            break
                        parts.append(frame.payload)
                        size += len(frame.payload)
                    payload = b"".join(parts)
                    await websocket.send_bytes(payload)
                    if frame.kind is Kind.DATA:
                        continue
                else:
                    await websocket.send_bytes(payload)
                    continue
            if frame.kind is Kind.RESULT:
                result = frame.json()
                if "exit_code" in result and not result.get("detached"):
                    # exit_code is null when the terminal was closed (DELETE) before its shell
                    # exited on its own.
                    message = {"type": "exit", "exit_code": result["exit_code"]}
                    if result.get("closed"):
                        message["closed"] = True
                    await websocket.send_text(json.dumps(message))
                    await websocket.close(1000)
                return

    async def from_client() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data:
                await stream.send_stdin(data)
                continue
            text = message.get("text")
            if text is not None:
                await _control(websocket, conn, terminal_id, text)

    sender = asyncio.create_task(to_client())
    receiver = asyncio.create_task(from_client())
    try:
        await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        receiver.cancel()
        if not stream.finished:
            with contextlib.suppress(Exception):
                await stream.cancel()  # detach: the terminal lives on for the next client
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await sender
        sender.cancel()
        with contextlib.suppress(BaseException):
            await receiver
        if sender.done() and not sender.cancelled() and sender.exception() is not None:
            exc = sender.exception()
            if isinstance(exc, AgentError) and websocket.client_state is WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):
                    await websocket.close(4503, "sandbox_unavailable")
        if websocket.client_state is WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await websocket.close(1000)
        with contextlib.suppress(Exception):
            await stream.aclose()


async def _control(
    websocket: WebSocket, conn: AgentConnection, terminal_id: str, text: str
) -> None:
    async def error(code: str, message: str) -> None:
        await websocket.send_text(json.dumps({"type": "error", "code": code, "message": message}))

    try:
        message = json.loads(text)
    except ValueError:
        return await error("invalid_message", "text frames must be JSON objects")
    if not isinstance(message, dict) or message.get("type") != "resize":
        return await error("invalid_message", 'known control messages: {"type": "resize", ...}')
    size: dict[str, int] = {}
    for name in ("cols", "rows"):
        value = message.get(name)
        if isinstance(value, bool) or not isinstance(value, int):
            return await error("invalid_size", f"{name} must be an integer")
        if not 1 <= value <= MAX_DIMENSION:
            return await error(
                "invalid_size", f"{name} must be between 1 and {MAX_DIMENSION}, not {value}"
            )
        size[name] = value
    try:
        await conn.call("pty_resize", id=terminal_id, cols=size["cols"], rows=size["rows"])
    except Exception as exc:
        api_error = as_api_error(exc)
        if api_error is None:
            raise
        await error(api_error.code, api_error.message)
