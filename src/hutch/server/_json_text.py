"""JSON request bodies must hold Unicode text: a string with a lone UTF-16 surrogate is a 422.

JSON lets a string escape half of a surrogate pair on its own (`"\\ud800"`); Python decodes it
into a str that no encoder takes, so it passed validation and failed later, wherever the text
first met bytes: a 500 from the agent for a command, an env var or a cwd, and an env var set
with `PUT .../env` was stored and broke every later exec of that sandbox (a fuzzer found it).
One check where bodies enter covers every route and field, present and future.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hutch._wire.json_text import LONE_SURROGATE_MESSAGE, has_lone_surrogate
from hutch.server._errors import InvalidRequest
from hutch.server._middleware import UNLIMITED_BODY_PATHS, send_error
from hutch.server.routes._files import streams_body


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            kind: bytes = value.split(b";")[0].strip().lower()
            return kind == b"application/json" or kind.endswith(b"+json")
    return False


class JsonTextMiddleware:
    """Reads a JSON body whole (FastAPI does anyway, within the body limit), refuses it if a
    string is not Unicode text, else hands it on unchanged."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or streams_body(scope)
            or scope.get("path") in UNLIMITED_BODY_PATHS
            or not _is_json(scope)
        ):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        pending: list[Message] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                pending.append(message)  # the client left: the app sees that, as before
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        if pending:  # NB: a body cut short is not handed on as if it were whole
            chunks = []
        body = b"".join(chunks)
        if has_lone_surrogate(body):
            await send_error(
                send,
                InvalidRequest(LONE_SURROGATE_MESSAGE),
            )
            return
        if not pending:
            pending.append({"type": "http.request", "body": body, "more_body": False})

        async def replay() -> Message:
            if pending:
                return pending.pop(0)
            return await receive()

        await self.app(scope, replay, send)
