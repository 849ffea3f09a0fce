"""`POST /v1/sandboxes/{id}/exec` and `.../exec/stream` without FastAPI's per-request work.

py-spy on the server under 8 exec clients (docs/performance.md): FastAPI's route matching,
dependency solving (the key's two headers, `Svc`, the path, the body), its body reading and
its wrappers were about a third of the server's Python time per exec, more than the exec's
own code. This ASGI middleware is the innermost of the app's: every other one (access and
audit log, storage guard, metrics, E2B front door, body limit, JSON text) still sees the
request. It answers these two routes itself in the common case — a JSON body that validates
— through the very functions the routes call (`exec_gathered`, `exec_frames`), after the
same authorization as `require_key` (key, rate limit, another team's sandbox: 404), and
with the app's own error handlers.

Anything else goes on to FastAPI unchanged, which answers as before: a body that does not
validate (FastAPI's 422 and its wording), another content type, a client that left while
sending. FastAPI checks the key before the body, and so does this path: a body is only
validated here to choose the path, and a request that fails auth fails it once, on one path.
The routes stay in FastAPI as well, for the fallback and the OpenAPI schema.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError
from starlette.datastructures import State
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hutch.node import AgentError
from hutch.server._deps import Services, authorize_off_loop
from hutch.server._errors import ApiError
from hutch.server._models import ExecRequest
from hutch.server.routes._exec import exec_frames, exec_gathered
from hutch.server.services._keys import key_from_headers

# FastAPI's `{sandbox_id}` is one path segment.
_EXEC_PATH = re.compile(r"/v1/sandboxes/([^/]+)/exec(/stream)?")
ROUTE_NAMES = {False: "exec_command", True: "exec_stream"}


class ExecFront:
    """The fast path for the exec routes; `routes` are the exec router's own (their name and
    template go on the scope, as FastAPI puts them, for the access log and the metrics)."""

    def __init__(self, app: ASGIApp, routes: Iterable[Any]) -> None:
        self.app = app
        by_name = {getattr(r, "name", None): r for r in routes}
        self._routes = {stream: by_name[name] for stream, name in ROUTE_NAMES.items()}
        self.answered = 0  # requests this path answered (tests)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = (
            _EXEC_PATH.fullmatch(scope["path"])
            if scope["type"] == "http" and scope["method"] == "POST"
            else None
        )
        if match is None or not _is_plain_json(scope["headers"]):
            await self.app(scope, receive, send)
            return
        received: list[Message] = []
        body = await _read_body(receive, received)
        request = _parse(body) if body is not None else None
        if request is None:
            await self.app(scope, _replay(received, receive), send)
            return
        sandbox_id, stream = match.group(1), match.group(2) is not None
        scope["path_params"] = {"sandbox_id": sandbox_id}
        scope["route"] = self._routes[stream]
        self.answered += 1
        response = await self._answer(scope, sandbox_id, stream, request)
        await response(scope, receive, send)

    async def _answer(
        self, scope: Scope, sandbox_id: str, stream: bool, body: ExecRequest
    ) -> Response:
        svc: Services = scope["app"].state.services
        try:
            state = State(scope.setdefault("state", {}))
            state.key_id = None
            key = key_from_headers(_header(scope, b"authorization"), _header(scope, b"x-api-key"))
            await authorize_off_loop(svc, key, scope["path_params"], state)
            if stream:
                return await exec_frames(svc, sandbox_id, body)
            result = await exec_gathered(svc, sandbox_id, body)
            return Response(result.model_dump_json(), media_type="application/json")
        except (ApiError, AgentError) as exc:
            return await _handled(scope, exc)


def _is_plain_json(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-type":
            return value.split(b";")[0].strip().lower() == b"application/json"
    return False


def _header(scope: Scope, name: bytes) -> str | None:
    # NB: the first of a repeated header, as FastAPI's Header() takes it.
    for key, value in scope["headers"]:
        if key == name:
            text: str = value.decode("latin-1")
            return text
    return None


async def _read_body(receive: Receive, received: list[Message]) -> bytes | None:
    """The whole body, or None when the client left first (`received` keeps every message,
    to replay to FastAPI)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        received.append(message)
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _parse(body: bytes) -> ExecRequest | None:
    """The body as FastAPI reads it (json.loads, then the model), or None if it is not one."""
    try:
        return ExecRequest.model_validate(json.loads(body))
    except (ValueError, ValidationError):  # json's error is a ValueError
        return None


def _replay(received: list[Message], receive: Receive) -> Receive:
    pending = list(received)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


async def _handled(scope: Scope, exc: Exception) -> Response:
    """The app's own handler's answer (server/_app.py: the agent-error table, ApiError's
    body), as FastAPI's exception middleware would have found it."""
    handlers = scope["app"].exception_handlers
    for cls in type(exc).__mro__:
        handler = handlers.get(cls)
        if handler is not None and cls is not Exception:
            response: Response = await handler(Request(scope), exc)
            return response
    raise exc
