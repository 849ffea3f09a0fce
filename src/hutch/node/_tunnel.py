"""Byte tunnels through a node daemon: to a sandbox's agent socket, or to a sandbox's port.

The API server speaks the agent protocol (node/_agent_client.py) to every agent; across hosts
the same bytes flow through the node that holds the sandbox. The handshake is an HTTP/1.1
CONNECT, so any HTTP tooling can read it:

    CONNECT agent/<runtime id> HTTP/1.1          CONNECT port/<runtime id>/<port> HTTP/1.1
    Authorization: Bearer <node token>

answered `HTTP/1.1 200 Connection Established` and then raw bytes both ways, or 401 (bad
token; logged), 404 (no such sandbox), 400 (a malformed request), and closed. An agent's
tunnel is answered 409 while its sandbox is paused (`hold`): its agent is frozen and would
answer nothing until something resumed it; a replica that has not yet heard of the pause
takes the 409 as "read the sandbox's row again" (and wakes it, as on one host). Its open
tunnels are closed as it is paused, for the same reason: a replica's idle connection
through one would take a request to the frozen agent. The preview
proxy can use `open_port_tunnel` as its connector to a sandbox on another node.

`CONNECT snapshot/<snapshot id>` (node to node, node/_disk_moves.py) is answered 200 and then
the snapshot's `btrfs send` stream, one way, unframed, up to the sender's close: the sending
`btrfs send` writes into the connection and the receiving `btrfs receive` reads from it, so
neither node's Python copies the bytes (an HTTP body would be chunked). A send that fails
resets the connection; a cut stream is refused by `btrfs receive` itself (a stream ends with
its end command). 404: no such snapshot here; a node of an older Hutch answers 400.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

log = logging.getLogger("hutch.node")

MAX_HEAD = 8192
_READ_SIZE = 1 << 18
_TARGET = re.compile(
    r"(agent)/([A-Za-z0-9][A-Za-z0-9_.-]{0,127})|(port)/([A-Za-z0-9][A-Za-z0-9_.-]{0,127})/(\d{1,5})"
    r"|(snapshot)/([A-Za-z0-9][A-Za-z0-9_.-]{0,127})"
)

# Hands the connection over (after answering 200): the socket is the caller's from then on.
Accept = Callable[[], Awaitable[socket.socket]]
# Sends snapshot `id` into the connection `accept` gives it (node/_disk_moves.py); raises
# StreamUnavailable before accepting when it cannot.
SnapshotSender = Callable[[str, Accept], Awaitable[None]]


class StreamUnavailable(Exception):
    """The stream asked for is not served here (answered 404)."""


class TunnelRefused(ConnectionError):
    """The node answered the CONNECT with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"node refused the tunnel: {status} {message}")
        self.status = status


@dataclass(frozen=True)
class TunnelRequest:
    kind: str  # "agent" | "port" | "snapshot" (its id as runtime_id)
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
    if m.group(6):
        return TunnelRequest("snapshot", m.group(7), None, token)
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
        send_snapshot: SnapshotSender | None = None,
    ) -> None:
        self._token = token.encode()
        self._agent_socket = agent_socket  # runtime id -> its agent's unix socket
        self._address_of = address_of  # runtime id -> its veth address
        self._send_snapshot = send_snapshot
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Runtime ids of paused sandboxes (`hold`), and each sandbox's open agent tunnels
        # (the replica's side of each splice).
        self._held: set[str] = set()
        self._agent_tunnels: dict[str, set[asyncio.BaseTransport]] = {}

    def hold(self, runtime_id: str) -> None:
        """The sandbox is being paused: close its agent tunnels, refuse new ones (409) until
        `release`. NB: before the freeze, so no replica's request reaches a frozen agent."""
        self._held.add(runtime_id)
        for transport in self._agent_tunnels.pop(runtime_id, ()):
            transport.close()  # its splice ends, and closes the agent's side

    def release(self, runtime_id: str) -> None:
        """The sandbox runs again (resumed), or is gone: its agent's tunnels are served."""
        self._held.discard(runtime_id)

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
        if request.kind == "snapshot":
            await self._serve_snapshot(request.runtime_id, writer)
            return
        if request.kind == "agent" and request.runtime_id in self._held:
            writer.write(_status(409, "Paused"))
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
        if request.kind == "agent":
            await self._serve_agent(request.runtime_id, reader, writer, up_r, up_w)
            return
        writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        await splice(reader, writer, up_r, up_w)

    async def _serve_agent(
        self,
        runtime_id: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_r: asyncio.StreamReader,
        up_w: asyncio.StreamWriter,
    ) -> None:
        if runtime_id in self._held:  # NB: paused while the agent's socket was connected
            up_w.close()
            writer.write(_status(409, "Paused"))
            return
        tunnels = self._agent_tunnels.setdefault(runtime_id, set())
        tunnels.add(writer.transport)
        try:
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await splice(reader, writer, up_r, up_w)
        finally:
            tunnels.discard(writer.transport)
            if not tunnels and self._agent_tunnels.get(runtime_id) is tunnels:
                del self._agent_tunnels[runtime_id]

    async def _serve_snapshot(self, snapshot_id: str, writer: asyncio.StreamWriter) -> None:
        if self._send_snapshot is None:
            writer.write(_status(404, "Not Found"))
            return

        async def accept() -> socket.socket:
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await writer.drain()
            # NB: a socket of its own (a dup): the transport's is closed as it ends, which
            # ends nothing while the sender's is open; the transport reads no more of it.
            writer.transport.pause_reading()  # type: ignore[attr-defined]
            raw = writer.get_extra_info("socket")
            return socket.socket(fileno=os.dup(raw.fileno()))

        try:
            await self._send_snapshot(snapshot_id, accept)
        except StreamUnavailable as exc:
            log.info("node tunnel: snapshot %s not sent: %s", snapshot_id, exc)
            writer.write(_status(404, "Not Found"))


async def splice(
    a_r: asyncio.StreamReader,
    a_w: asyncio.StreamWriter,
    b_r: asyncio.StreamReader,
    b_w: asyncio.StreamWriter,
) -> None:
    """Copy both ways until either side ends; then close both.

    Each transport is handed a protocol that writes what it receives to the other transport
    (what it read ahead of that goes first): no task wakes per chunk, as a pump task on stream
    objects did (two per exec message and hop; clusterperf11 found the splice a good part of a
    node's CPU per exec). Flow control is the transports': a side whose write buffer fills
    pauses reading on the other until it drains.
    """
    loop = asyncio.get_running_loop()
    a = cast("asyncio.Transport", a_w.transport)
    b = cast("asyncio.Transport", b_w.transport)
    ended: asyncio.Future[None] = loop.create_future()
    try:
        for reader, transport, to in ((a_r, a, b), (b_r, b, a)):
            # NB: what the stream read ahead (a client's first bytes sent with its CONNECT
            # head) goes before anything the new protocol receives.
            ahead = bytes(reader._buffer)  # type: ignore[attr-defined]
            reader._buffer.clear()  # type: ignore[attr-defined]
            if ahead:
                to.write(ahead)
            if reader.at_eof():
                return
            transport.set_protocol(_Forward(to, ended))
            transport.resume_reading()  # the stream may have paused it (its buffer's limit)
        await ended
    finally:
        a.close()
        b.close()


class _Forward(asyncio.Protocol):
    """On one side of a splice: what it receives is written to the other side."""

    def __init__(self, to: asyncio.Transport, ended: asyncio.Future[None]) -> None:
        self._to = to
        self._ended = ended

    def data_received(self, data: bytes) -> None:
        self._to.write(data)

    def eof_received(self) -> bool | None:
        self._end()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()

    def pause_writing(self) -> None:
        # Our own transport's write buffer is full of the other side's bytes: stop reading them.
        self._to.pause_reading()

    def resume_writing(self) -> None:
        self._to.resume_reading()

    def _end(self) -> None:
        if not self._ended.done():
            self._ended.set_result(None)


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


async def open_raw_tunnel(
    host: str,
    port: int,
    target: str,
    token: str,
    *,
    timeout: float,  # noqa: ASYNC109
) -> socket.socket:
    """`open_tunnel`, as a socket of the caller's with nothing read past the answer's head
    (what follows is for another process: a pulled snapshot's `btrfs receive`).

    Raises:
        TunnelRefused: the node answered with an error status.
        OSError, TimeoutError: the node could not be reached in time.
    """
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
            await loop.sock_sendall(sock, connect_head(target, token))
            head = bytearray()
            while not head.endswith(b"\r\n\r\n"):
                # NB: a byte at a time (a head is ~40): a larger read could take stream bytes.
                byte = await loop.sock_recv(sock, 1)
                if not byte:
                    raise ConnectionError("the node closed the tunnel before answering")
                head += byte
                if len(head) > MAX_HEAD:
                    raise TunnelRefused(0, "oversized answer")
        except BaseException:
            sock.close()
            raise
    code, reason = _status_of(bytes(head))
    if code != 200:
        sock.close()
        raise TunnelRefused(code, reason)
    return sock


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
