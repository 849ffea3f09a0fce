"""The byte-level relay of one preview connection: the client side (`PreviewConnection`)
and the sandbox side (`Upstream`), forwarding heads and bodies as they arrive with flow
control both ways, keep-alive, chunked bodies, SSE and upgrades after a 101."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable
from typing import cast

from hutch.proxy._chunked import ChunkedFraming
from hutch.proxy._errors import UNREACHABLE_BODY, BadRequest, _simple_response
from hutch.proxy._http1 import (
    Request,
    Response,
    _parse_request,
    _parse_response,
)
from hutch.proxy._routes import (
    MAX_HEAD,
    NOT_FOUND_BODY,
    PreviewRoutes,
)

# -- I/O: two protocols per preview connection -----------------------------------------------


class PreviewConnection(asyncio.Protocol):
    """The client side of one preview connection, taken over from uvicorn's protocol.

    One request at a time: the next head is parsed only once the response to the previous one
    is complete (pipelined bytes wait in the buffer). Bodies are forwarded as they arrive, in
    their own framing; flow control pauses whichever side is ahead.
    """

    def __init__(self, routes: PreviewRoutes, client_ip: str) -> None:
        self.routes = routes
        self.client_ip = client_ip.encode()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upstream: Upstream | None = None
        self.body_left = 0  # request body bytes still to forward; -1: chunked
        self.chunked: ChunkedFraming | None = None
        self.inflight: Request | None = None
        self.tunnel = False
        self.closing = False
        self.paused = False
        self.active = True  # bytes came since the idle sweeper last looked
        self.target_key: tuple[str, int] | None = None  # (sandbox_id, port) last proxied to

    # asyncio.Protocol

    def take_over(self, transport: asyncio.Transport, buffered: bytes) -> None:
        self.transport = transport
        _nodelay(transport)
        transport.set_protocol(self)
        self.routes.connections.add(self)
        self.data_received(buffered)

    def data_received(self, data: bytes) -> None:
        self.active = True
        if self.tunnel:
            if self.upstream is not None:
                self.upstream.write(data)
            return
        if not self.buf and self.inflight is None and not self.body_left and not self.closing:
            # The common case: one whole request head in one read, nothing after it.
            end = data.find(b"\r\n\r\n")
            if end > 0 and end + 4 == len(data) and data[0] != 0x0D:
                try:
                    self._request(data[: end + 2])
                except BadRequest as exc:
                    self.fail(exc.status, str(exc))
                return
        self.buf += data
        self._process()

    def eof_received(self) -> bool | None:
        if self.tunnel and self.upstream is not None:
            self.upstream.write_eof()
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.routes.connections.discard(self)
        self.closing = True
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None

    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()

    # the state machine

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()
        if self.upstream is not None:
            self.upstream.close()

    def fail(self, status: int, message: str) -> None:
        if not self.closing:
            self.write(_simple_response(status, (message + "\n").encode()))
        self.close()

    def _process(self) -> None:
        try:
            while not self.closing and self.buf:
                if self.body_left:
                    if not self._forward_body():
                        return
                    continue
                if self.inflight is not None:
                    if len(self.buf) > MAX_HEAD and self.transport and not self.paused:
                        self.paused = True
                        self.transport.pause_reading()
                    return
                if not self._start_request():
                    return
        except BadRequest as exc:
            self.fail(exc.status, str(exc))

    def _start_request(self) -> bool:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            start = 0
            while buf.startswith(b"\r\n", start):
                start += 2  # RFC 9112: empty lines before a request line are ignored
            if start:
                del buf[:start]
                return bool(buf)
            if b"\n" in buf and buf.count(b"\n") != buf.count(b"\r\n"):
                raise BadRequest("bare LF line ending: refused (request smuggling)")
            if len(buf) > MAX_HEAD:
                raise BadRequest("request head too large", 431)
            return False
        head = bytes(buf[: end + 2])
        del buf[: end + 4]
        while head.startswith(b"\r\n"):
            head = head[2:]
        self._request(head)
        return True

    def _request(self, h: bytes) -> None:
        """Start forwarding the request whose head is `h` (with its last line's CRLF)."""
        request = _parse_request(h, self.routes.domain, self.client_ip)
        target = request.target
        address = self.routes.resolve(target)
        if address is None:
            self.write(_simple_response(404, NOT_FOUND_BODY, close=request.length != 0))
            if request.length != 0:
                self.close()  # not worth reading a body we will not forward
            return
        self.target_key = (target.sandbox_id, target.port)
        wake = self.routes.on_hit(target.sandbox_id)
        upstream = self.upstream
        if (
            upstream is None
            or upstream.closed
            or upstream.key[0] != address
            or upstream.key[1] != target.port
        ):
            if upstream is not None:
                upstream.close()
            upstream = self.upstream = Upstream(self, (address, target.port), wake)
        self.inflight = request
        upstream.request = request
        upstream.response = None
        upstream.write(request.forwarded + b"\r\n")
        if request.length == -1:
            self.body_left = -1
            self.chunked = ChunkedFraming()
        else:
            self.body_left = request.length

    def _forward_body(self) -> bool:
        assert self.upstream is not None
        if self.body_left > 0:
            take = min(self.body_left, len(self.buf))
            self.upstream.write(bytes(self.buf[:take]) if take < len(self.buf) else bytes(self.buf))
            del self.buf[:take]
            self.body_left -= take
            return True
        assert self.chunked is not None
        pos = self.chunked.feed(self.buf)
        if pos:
            self.upstream.write(bytes(self.buf[:pos]))
            del self.buf[:pos]
        if self.chunked.done:
            self.body_left = 0
            self.chunked = None
            return True
        return False

    def response_done(self, close: bool) -> None:
        """The upstream finished its response to the in-flight request."""
        self.inflight = None
        if close or self.body_left:
            self.close()
            return
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        self._process()

    def start_tunnel(self) -> None:
        self.tunnel = True
        self.inflight = None
        if self.buf and self.upstream is not None:
            self.upstream.write(bytes(self.buf))
        self.buf.clear()


class Upstream(asyncio.Protocol):
    """The connection to the sandbox's port; writes queue until it is connected."""

    def __init__(
        self,
        client: PreviewConnection,
        key: tuple[str, int],
        wake: Awaitable[object] | None = None,
    ) -> None:
        self.client = client
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self.closed = False
        self.buf = bytearray()
        self.request: Request | None = None
        self.response: Response | None = None
        self.left = 0
        self.chunked: ChunkedFraming | None = None
        self.tunnel = False
        self.eof_pending = False
        self._read_paused = False
        loop = asyncio.get_running_loop()
        self._connect = loop.create_task(self._open(loop, wake))
        client.routes.pending.add(self._connect)
        self._connect.add_done_callback(client.routes.pending.discard)

    async def _open(self, loop: asyncio.AbstractEventLoop, wake: Awaitable[object] | None) -> None:
        try:
            if wake is not None:
                await wake  # a sleeping sandbox: the request waits for it (bytes queue meanwhile)
            connect = self.client.routes.connect
            target = self.client.target_key
            if connect is not None and target is not None:
                # A sandbox on another host: a byte tunnel through its node (docs/cluster.md).
                await asyncio.wait_for(connect(target[0], target[1], lambda: self), 10.0)
            else:
                await asyncio.wait_for(loop.create_connection(lambda: self, *self.key), 10.0)
        except Exception:
            self.closed = True
            if self.request is not None and self.client.inflight is self.request:
                # The usual cause: the server is not running (yet), or listens on another
                # port (or on IPv6 ::1 only, which the loopback rule does not reach).
                self.client.write(_simple_response(502, UNREACHABLE_BODY))
                self.client.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # NB: uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)
        transport = self.transport
        _nodelay(transport)
        if self.closed:
            transport.close()
            return
        if self.pending:
            transport.write(b"".join(self.pending))
            self.pending.clear()
        if self.eof_pending and transport.can_write_eof():
            transport.write_eof()
        if self._read_paused:
            transport.pause_reading()

    def write(self, data: bytes) -> None:
        if self.transport is None:
            self.pending.append(data)
        elif not self.transport.is_closing():
            self.transport.write(data)

    def write_eof(self) -> None:
        if self.transport is None:
            self.eof_pending = True
        elif self.transport.can_write_eof() and not self.transport.is_closing():
            self.transport.write_eof()

    def pause_reading(self) -> None:
        self._read_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        self._read_paused = False
        if self.transport is not None:
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client.transport is not None and not self.client.paused:
            self.client.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        elif not self._connect.done():
            self._connect.cancel()

    def eof_received(self) -> bool | None:
        if self.tunnel:
            if self.client.transport is not None and self.client.transport.can_write_eof():
                self.client.transport.write_eof()
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.tunnel:
            self.client.close()
            return
        if self.response is not None and self.response.length == -2:
            self.client.response_done(close=True)
        elif self.request is not None and self.client.inflight is self.request:
            if self.response is None:
                self.client.fail(502, "the sandbox closed the connection without answering")
            else:
                self.client.close()  # cut mid-response

    def data_received(self, data: bytes) -> None:
        if self.tunnel:
            self.client.write(data)
            return
        client = self.client
        request = self.request
        if self.response is None and not self.buf and request is not None:
            # The common case: a whole final response head at the start of a read.
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                try:
                    response = _parse_response(data[: end + 2], request.method, request.keep_alive)
                except BadRequest as exc:
                    client.fail(exc.status, str(exc))
                    self.close()
                    return
                if response.status >= 200:
                    self.response = response
                    length = response.length
                    if response.verbatim and length >= 0 and len(data) == end + 4 + length:
                        # Head and whole body in this read, head unchanged: relay it as is.
                        client.write(data)
                        self._done()
                        return
                    self._start_body(response, data[end + 4 :])
                    return
        if self.response is None or self.response.status < 200:
            self.buf += data
            while self.response is None or self.response.status < 200:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buf) > MAX_HEAD:
                        client.fail(502, "the sandbox sent a response head that is too large")
                        self.close()
                    return
                head = bytes(self.buf[: end + 2])
                del self.buf[: end + 4]
                request = self.request
                if request is None:
                    self.close()
                    return
                try:
                    response = _parse_response(head, request.method, request.keep_alive)
                except BadRequest as exc:
                    client.fail(exc.status, str(exc))
                    self.close()
                    return
                if response.status == 101:
                    if not request.upgrade:
                        client.fail(502, "the sandbox switched protocols unasked")
                        self.close()
                        return
                    self.tunnel = True
                    client.write(response.forwarded + b"\r\n")
                    client.start_tunnel()
                    if self.buf:
                        client.write(bytes(self.buf))
                        self.buf.clear()
                    return
                if response.status < 200:
                    client.write(response.forwarded + b"\r\n")  # 100 Continue and friends
                    continue
                self.response = response
            data = bytes(self.buf)
            self.buf.clear()
            self._start_body(self.response, data)
            return
        self._body(data)

    def _start_body(self, response: Response, data: bytes) -> None:
        prefix = response.forwarded + b"\r\n"
        self.left = response.length
        if self.left == -1:
            self.chunked = ChunkedFraming()
        if self.left == 0:
            self.client.write(prefix)
            self._done()
            return
        # NB: the head goes out with the first body bytes in one write: one send, not two.
        self._body(data, prefix)

    def _body(self, data: bytes, prefix: bytes = b"") -> None:
        response = self.response
        assert response is not None
        if not data:
            if prefix:
                self.client.write(prefix)
            return
        if self.left == -2:
            self.client.write(prefix + data if prefix else data)
            return
        if self.left > 0:
            if len(data) > self.left:
                data = data[: self.left]  # a sandbox that sends more than it announced
            self.left -= len(data)
            self.client.write(prefix + data if prefix else data)
            if self.left == 0:
                self._done()
            return
        assert self.chunked is not None
        try:
            pos = self.chunked.feed(data)
        except BadRequest:
            self.client.close()
            self.close()
            return
        data = data[:pos] if pos < len(data) else data
        self.client.write(prefix + data if prefix else data)
        if self.chunked.done:
            self._done()

    def _done(self) -> None:
        response = self.response
        assert response is not None
        self.request = None
        self.response = None
        self.chunked = None
        if response.close:
            self.close()
        self.client.response_done(close=response.close)


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
