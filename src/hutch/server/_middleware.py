"""ASGI middleware of the API: the request-body limit."""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hutch.server._errors import ApiError, BodyTooLarge
from hutch.server.routes._files import streams_body

# Routes that stream their body to disk themselves (image archives can be GBs).
UNLIMITED_BODY_PATHS = frozenset({"/v1/images/import", "/v1/images/build"})


class BodyLimitMiddleware:
    """Refuse bodies over the limit with 413, whether or not Content-Length tells the truth."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or streams_body(scope):
            await self.app(scope, receive, send)
            return
        if scope.get("path") in UNLIMITED_BODY_PATHS:
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await send_error(send, BodyTooLarge(self._message()))
                return
        seen = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self._message())
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:
            if not response_started:
                await send_error(send, exc)

    def _message(self) -> str:
        return (
            f"request body is larger than {self.max_bytes} bytes; send less, or raise "
            "HUTCH_MAX_BODY_BYTES on the server"
        )


async def send_error(send: Send, error: ApiError) -> None:
    response = JSONResponse(error.body(), status_code=error.status)
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
