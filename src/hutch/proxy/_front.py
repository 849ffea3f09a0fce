"""The front door: uvicorn's protocol, subclassed to look at the first request head of each
connection and hand preview hosts to the relay; anything else goes to the ASGI app untouched."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from hutch.proxy._coalesced_writes import CoalescedWrites
from hutch.proxy._errors import BadRequest, _simple_response
from hutch.proxy._relay import PreviewConnection
from hutch.proxy._routes import (
    MAX_HEAD,
    PreviewRoutes,
    preview_target,
    split_host,
)

# A scope key the front sets on every request it hands the app: a callable that makes the
# connection end with a TCP reset instead of a FIN when it is closed. An app cutting a stream
# mid-body (hutch.e2b: the sandbox was killed) uses it so that clients see what a proxy's stream
# reset looks like (a read error), not a malformed message (e2b's Python SDK asks the sandbox's
# health only after a transport error). Servers without this front just lack the key.
RESET_ON_CLOSE = "hutch.reset_on_close"


def _client_host(head: bytes) -> bytes | None | BadRequest:
    """The Host value of a raw request head (None: none; BadRequest: several)."""
    found: bytes | None = None
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.lower() == b"host":
            if found is not None:
                return BadRequest("more than one Host header")
            found = value.strip(b" \t")
    return found


def front_protocol(routes: PreviewRoutes) -> type[HttpToolsProtocol]:
    """uvicorn's protocol, in front of which preview connections are taken over."""

    class FrontProtocol(HttpToolsProtocol):
        _sniffing = True
        _buffer = b""

        def connection_made(self, transport: Any) -> None:
            # A response's head and body go out in one write (see _coalesced_writes).
            wrapped = CoalescedWrites(transport, self.loop)
            super().connection_made(cast("asyncio.Transport", wrapped))

        def on_message_begin(self) -> None:
            super().on_message_begin()
            cast("dict[str, Callable[[], None]]", self.scope)[RESET_ON_CLOSE] = self._reset_on_close

        def _reset_on_close(self) -> None:
            # SO_LINGER 0: close() (after asyncio has written what it holds) sends RST.
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

        def data_received(self, data: bytes) -> None:
            if not self._sniffing:
                super().data_received(data)
                return
            buffer = self._buffer + data
            end = buffer.find(b"\r\n\r\n")
            lf = buffer.find(b"\n")
            if lf >= 0 and (lf == 0 or buffer[lf - 1] != 0x0D):
                self._reject(BadRequest("bare LF line ending: refused (request smuggling)"))
                return
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    self._reject(BadRequest("request head too large", 431))
                else:
                    self._buffer = buffer
                return
            self._buffer = b""
            try:
                host = _client_host(buffer[:end])
                if isinstance(host, BadRequest):
                    raise host
                target = None
                if host is not None:
                    name, _ = split_host(host.decode("ascii"))
                    target = preview_target(name, routes.domain)
            except (BadRequest, UnicodeDecodeError) as exc:
                self._reject(exc if isinstance(exc, BadRequest) else BadRequest("bad Host"))
                return
            if target is None:
                self._sniffing = False
                super().data_received(buffer)
                return
            self._take_over(buffer)

        def _reject(self, exc: BadRequest) -> None:
            self._sniffing = False
            self.transport.write(_simple_response(exc.status, f"{exc}\n".encode()))
            self.transport.close()

        def _take_over(self, buffer: bytes) -> None:
            self.connections.discard(self)
            client_ip = self.client[0] if self.client else "unknown"
            raw = self.transport
            if isinstance(raw, CoalescedWrites):
                raw = raw.raw
            PreviewConnection(routes, client_ip).take_over(raw, buffer)

    return FrontProtocol
