"""WebSocket plumbing for the SDK's terminals: the async and sync twins of each call.

``sdk/_async`` calls the ``a``-prefixed names; scripts/unasync.py rewrites them to the plain
names for ``sdk/_sync`` (the ``websockets`` package has both an asyncio and a threaded client
with the same methods, but connecting and timeouts differ).
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import threading
import time
from collections import deque
from typing import TypeAlias

from websockets.asyncio.client import ClientConnection as _AsyncConnection
from websockets.asyncio.client import connect as _async_connect
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from hutch.sdk._config import ConnectionConfig

AsyncWebSocket: TypeAlias = _AsyncConnection
RECV_SIZE = 256 * 1024

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
    return WebSocket.connect(
        ws_url(config, path), headers=_headers(config), subprotocols=[SUBPROTOCOL]
    )


async def arecv(ws: AsyncWebSocket, timeout: float | None) -> str | bytes:  # noqa: ASYNC109
    if timeout is None:
        return await ws.recv()
    async with asyncio.timeout(timeout):
        return await ws.recv()


def recv(ws: WebSocket, timeout: float | None) -> str | bytes:
    return ws.recv(timeout)


class WebSocket:
    """A blocking WebSocket client on the ``websockets`` sans-I/O protocol and a plain socket.

    Not ``websockets.sync``: its reader thread hands every message across threads, and with
    the GIL's switch interval that capped a terminal's output at a few MB/s. Here ``recv``
    reads the socket itself. ``send`` may be called from another thread than ``recv`` (the
    CLI does): the protocol object is only touched under a lock.
    """

    def __init__(self, sock: socket.socket, protocol: ClientProtocol) -> None:
        self._sock = sock
        self._protocol = protocol
        self._lock = threading.Lock()
        self._messages: deque[str | bytes] = deque()
        self._fragments: list[bytes | bytearray | memoryview] = []
        self._fragment_text = False
        self.subprotocol = protocol.subprotocol

    @classmethod
    def connect(
        cls, url: str, *, headers: dict[str, str], subprotocols: list[Subprotocol]
    ) -> WebSocket:
        uri = parse_uri(url)
        if uri.secure:
            import ssl

            raw = socket.create_connection((uri.host, uri.port), timeout=OPEN_TIMEOUT)
            sock: socket.socket = ssl.create_default_context().wrap_socket(
                raw, server_hostname=uri.host
            )
        else:
            sock = socket.create_connection((uri.host, uri.port), timeout=OPEN_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        protocol = ClientProtocol(uri, subprotocols=subprotocols, max_size=None)
        request = protocol.connect()
        for name, value in headers.items():
            request.headers[name] = value
        protocol.send_request(request)
        try:
            sock.sendall(b"".join(protocol.data_to_send()))
            while protocol.state is State.CONNECTING:
                data = sock.recv(RECV_SIZE)
                if not data:
                    protocol.receive_eof()
                    break
                protocol.receive_data(data)
            if protocol.handshake_exc is not None:
                raise protocol.handshake_exc
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        ws = cls(sock, protocol)
        ws.subprotocol = protocol.subprotocol
        ws._take_events()
        return ws

    def _flush(self) -> None:
        data = b"".join(self._protocol.data_to_send())
        if data:
            try:
                self._sock.sendall(data)
            except OSError:
                pass  # the peer is gone: the next recv says so

    def _take_events(self) -> None:
        for event in self._protocol.events_received():
            if not isinstance(event, Frame):
                continue
            if event.opcode in (Opcode.TEXT, Opcode.BINARY):
                self._fragments = [event.data]
                self._fragment_text = event.opcode is Opcode.TEXT
            elif event.opcode is Opcode.CONT:
                self._fragments.append(event.data)
            else:
                continue
            if event.fin:
                data = b"".join(self._fragments)
                self._fragments = []
                self._messages.append(data.decode() if self._fragment_text else data)

    def recv(self, timeout: float | None = None) -> str | bytes:
        """The next message.

        Raises:
            TimeoutError: none within ``timeout`` seconds.
            websockets.exceptions.ConnectionClosed: the connection is closed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._messages:
            with self._lock:
                if self._protocol.state is State.CLOSED:
                    self._sock.close()
                    raise self._protocol.close_exc
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if remaining is not None:
                ready, _, _ = select.select([self._sock], [], [], remaining)
                if not ready:
                    raise TimeoutError(f"no message within {timeout} s")
            try:
                data = self._sock.recv(RECV_SIZE)
            except OSError:
                data = b""
            with self._lock:
                if data:
                    self._protocol.receive_data(data)
                else:
                    self._protocol.receive_eof()
                self._flush()  # pongs, and the answer to a close
                self._take_events()
                if not data and not self._messages:
                    self._sock.close()
                    raise self._protocol.close_exc
        return self._messages.popleft()

    def send(self, message: str | bytes) -> None:
        with self._lock:
            if self._protocol.state is not State.OPEN:
                raise self._protocol.close_exc
            if isinstance(message, str):
                self._protocol.send_text(message.encode())
            else:
                self._protocol.send_binary(message)
            self._flush()

    def close(self, code: int = 1000) -> None:
        with self._lock:
            if self._protocol.state is State.OPEN:
                self._protocol.send_close(code)
                self._flush()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)
        self._sock.close()
