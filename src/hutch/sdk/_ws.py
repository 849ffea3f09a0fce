"""WebSocket plumbing for the SDK's terminals: the async and sync twins of each call.

``sdk/_async`` calls the ``a``-prefixed names; scripts/unasync.py rewrites them to the plain
names for ``sdk/_sync`` (the ``websockets`` package has both an asyncio and a threaded client
with the same methods, but connecting and timeouts differ).
"""

from __future__ import annotations

import asyncio
from typing import TypeAlias

from websockets.asyncio.client import ClientConnection as _AsyncConnection
from websockets.asyncio.client import connect as _async_connect
from websockets.sync.client import ClientConnection as _SyncConnection
from websockets.sync.client import connect as _sync_connect
from websockets.typing import Subprotocol

from hutch.sdk._config import ConnectionConfig

AsyncWebSocket: TypeAlias = _AsyncConnection
WebSocket: TypeAlias = _SyncConnection

SUBPROTOCOL = Subprotocol("hutch.terminal.v1")
OPEN_TIMEOUT = 30.0


def ws_url(config: ConnectionConfig, path: str) -> str:
    base = config.base_url
    scheme = "wss" if base.startswith("https://") else "ws"
    return scheme + base[base.index("://") :] + path


def _headers(config: ConnectionConfig) -> dict[str, str]:
    return {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}


async def aconnect(config: ConnectionConfig, path: str) -> AsyncWebSocket:
    return await _async_connect(
        ws_url(config, path),
        additional_headers=_headers(config),
        subprotocols=[SUBPROTOCOL],
        max_size=None,
        compression=None,
        open_timeout=OPEN_TIMEOUT,
        proxy=None,
    )


def connect(config: ConnectionConfig, path: str) -> WebSocket:
    connection = _sync_connect(
        ws_url(config, path),
        additional_headers=_headers(config),
        subprotocols=[SUBPROTOCOL],
        max_size=None,
        compression=None,
        open_timeout=OPEN_TIMEOUT,
        proxy=None,
        legacy=True,  # a plain connection object: the Terminal owns its lifetime
    )
    assert isinstance(connection, _SyncConnection)
    return connection


async def arecv(ws: AsyncWebSocket, timeout: float | None) -> str | bytes:  # noqa: ASYNC109
    if timeout is None:
        return await ws.recv()
    async with asyncio.timeout(timeout):
        return await ws.recv()


def recv(ws: WebSocket, timeout: float | None) -> str | bytes:
    return ws.recv(timeout=timeout)
