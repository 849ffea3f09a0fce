"""Running the MCP server: stdio for a local agent, streamable HTTP (bearer key) for others."""

from __future__ import annotations

import hmac
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from hutch.mcp._server import build_mcp_server
from hutch.sdk import AsyncClient


async def serve_stdio(client: AsyncClient) -> None:
    """Serve MCP on stdin/stdout until the client closes them."""
    try:
        await build_mcp_server(client).run_stdio_async()
    finally:
        await client.aclose()


class BearerKey:
    """Only requests with ``Authorization: Bearer <key>`` reach the MCP endpoint.

    NB: the MCP server acts with its Hutch API key: whoever reaches it unauthenticated could
    run anything in any sandbox. The key it asks for is that same Hutch key (or its own).
    """

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self._expected = f"Bearer {key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                body = (
                    b'{"error": {"code": "unauthorized", "message": "send Authorization: '
                    b'Bearer <key> (the key hutch mcp was started with)"}}'
                )
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"www-authenticate", b"Bearer"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def http_app(client: AsyncClient, key: str, *, path: str = "/mcp") -> Any:
    """The streamable-HTTP ASGI app, behind `BearerKey`."""
    server = build_mcp_server(client)
    return BearerKey(server.streamable_http_app(streamable_http_path=path), key)


async def serve_http(client: AsyncClient, *, host: str, port: int, key: str) -> None:
    """Serve MCP over streamable HTTP at ``http://host:port/mcp`` until interrupted."""
    import uvicorn

    config = uvicorn.Config(http_app(client, key), host=host, port=port, log_level="warning")
    try:
        await uvicorn.Server(config).serve()
    finally:
        await client.aclose()
