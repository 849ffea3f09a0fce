"""Byte tunnels through a node daemon: to a sandbox's agent socket, or to a sandbox's port.

The API server speaks the agent protocol (node/_agent_client.py) to every agent; across hosts
the same bytes flow through the node that holds the sandbox. The handshake is an HTTP/1.1
CONNECT, so any HTTP tooling can read it:

    CONNECT agent/<runtime id> HTTP/1.1          CONNECT port/<runtime id>/<port> HTTP/1.1
    Authorization: Bearer <node token>

answered `HTTP/1.1 200 Connection Established` and then raw bytes both ways, or 401 (bad
token; logged), 404 (no such sandbox), 400 (a malformed request), and closed. The preview
proxy can use `open_port_tunnel` as its connector to a sandbox on another node.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("hutch.node")

MAX_HEAD = 8192
_READ_SIZE = 1 << 18
_TARGET = re.compile(
    r"(agent)/([A-Za-z0-9][A-Za-z0-9_.-]{0,127})|(port)/([A-Za-z0-9][A-Za-z0-9_.-]{0,127})/(\d{1,5})"
)


class TunnelRefused(ConnectionError):
    """The node answered the CONNECT with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"node refused the tunnel: {status} {message}")
        self.status = status


@dataclass(frozen=True)
class TunnelRequest:
    kind: str  # "agent" | "port"
    runtime_id: str
    port: int | None
    token: str


def parse_connect(head: bytes) -> TunnelRequest | None:
    """The tunnel request in a CONNECT head (up to the blank line), or None if malformed."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover (latin-1 decodes anything)
        return None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[0] != "CONNECT" or parts[2] != "HTTP/1.1":
        return None
    m = _TARGET.fullmatch(parts[1])
    if m is None:
        return None
    token = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "authorization":
            scheme, _, cred = value.strip().partition(" ")
            if scheme.lower() == "bearer":
                token = cred.strip()
    if m.group(1):
        return TunnelRequest("agent", m.group(2), None, token)
    port = int(m.group(5))
    if not 1 <= port <= 65535:
        return None
    return TunnelRequest("port", m.group(4), port, token)


def connect_head(target: str, token: str) -> bytes:
    return f"CONNECT {target} HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\r\n".encode()


def _status(code: int, reason: str) -> bytes:
    return f"HTTP/1.1 {code} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()


class TunnelServer:
    """The node's tunnel listener: checks the token (constant time), then splices."""

    def __init__(
        self,
        token: str,
        agent_socket: Callable[[str], Path],
        address_of: Callable[[str], str | None],
    ) -> None:
        self._token = token.encode()
        self._agent_socket = agent_socket  # runtime id -> its agent's unix socket
        self._address_of = address_of  # runtime id -> its veth address
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._handle, host, port, limit=_READ_SIZE)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
        request = parse_connect(head[:MAX_HEAD])
        peer = writer.get_extra_info("peername")
        if request is None:
            writer.write(_status(400, "Bad Request"))
            return
        if not hmac.compare_digest(request.token.encode(), self._token):
            log.warning("node tunnel: refused %s without a valid node token", peer)
            writer.write(_status(401, "Unauthorized"))
            return
        try:
            if request.kind == "agent":
                up_r, up_w = await asyncio.open_unix_connection(
                    self._agent_socket(request.runtime_id), limit=_READ_SIZE
                )
            else:
                address = self._address_of(request.runtime_id)
                if address is None:
                    writer.write(_status(404, "Not Found"))
                    return
                up_r, up_w = await asyncio.open_connection(address, request.port, limit=_READ_SIZE)
        except (OSError, ValueError):
            writer.write(_status(502, "Bad Gateway"))
            return
        writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        await splice(reader, writer, up_r, up_w)


async def splice(
    a_r: asyncio.StreamReader,
    a_w: asyncio.StreamWriter,
    b_r: asyncio.StreamReader,
    b_w: asyncio.StreamWriter,
) -> None:
    """Copy both ways until either side ends; then close both."""

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(_READ_SIZE):
                dst.write(data)
                await dst.drain()
        finally:
            with contextlib.suppress(Exception):
                dst.close()

    tasks = [asyncio.ensure_future(pump(a_r, b_w)), asyncio.ensure_future(pump(b_r, a_w))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def open_tunnel(
    host: str,
    port: int,
    target: str,
    token: str,
    *,
    timeout: float,  # noqa: ASYNC109
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a tunnel through a node (`target`: "agent/<rid>" or "port/<rid>/<port>").

    Raises:
        TunnelRefused: the node answered with an error status.
        OSError, TimeoutError: the node could not be reached in time.
    """
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port, limit=_READ_SIZE)
        try:
            writer.write(connect_head(target, token))
            head = await reader.readuntil(b"\r\n\r\n")
        except BaseException:
            writer.close()
            raise
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or parts[1] != "200":
        writer.close()
        code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        raise TunnelRefused(code, parts[2] if len(parts) > 2 else status_line)
    return reader, writer


def _status_of(head: bytes) -> tuple[int, str]:
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ", 2)
    code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return code, parts[2] if len(parts) > 2 else line


async def connect_protocol(
    host: str,
    port: int,
    target: str,
    token: str,
    factory: Callable[[], asyncio.Protocol],
    *,
    timeout: float,  # noqa: ASYNC109
) -> asyncio.Protocol:
    """Open a tunnel and hand its transport to `factory()`'s protocol (the preview proxy's
    upstream), bytes after the handshake included. No stream objects stay in between."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[asyncio.Protocol] = loop.create_future()

    class Handshake(asyncio.Protocol):
        def __init__(self) -> None:
            self.buf = bytearray()
            self.transport: asyncio.Transport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]
            self.transport.write(connect_head(target, token))  # type: ignore[union-attr]

        def data_received(self, data: bytes) -> None:
            assert self.transport is not None
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD and not done.done():
                    done.set_exception(TunnelRefused(0, "oversized answer"))
                    self.transport.close()
                return
            code, reason = _status_of(bytes(self.buf[:end]))
            rest = bytes(self.buf[end + 4 :])
            if code != 200:
                if not done.done():
                    done.set_exception(TunnelRefused(code, reason))
                self.transport.close()
                return
            protocol = factory()
            self.transport.set_protocol(protocol)
            protocol.connection_made(self.transport)
            if rest:
                protocol.data_received(rest)
            if not done.done():
                done.set_result(protocol)

        def connection_lost(self, exc: Exception | None) -> None:
            if not done.done():
                done.set_exception(ConnectionError(f"the node closed the tunnel ({exc})"))

    async with asyncio.timeout(timeout):
        transport, _ = await loop.create_connection(Handshake, host, port)
        try:
            return await done
        except BaseException:
            transport.close()
            raise
