"""The preview proxy: `http://{port}-{sandbox_id}-{token}.{preview_domain}:{server_port}/`.

It shares the API's port. `FrontProtocol` (uvicorn's httptools protocol, subclassed) looks at
the first request head of each connection: a Host under the preview domain makes the
connection a preview connection, served here by a streaming byte-level proxy to the sandbox's
address; anything else goes to the ASGI app untouched.

Each request is parsed strictly (CRLF only, one Host, no Content-Length together with
Transfer-Encoding, Transfer-Encoding only `chunked`, origin-form or an absolute-form that agrees
with Host) and its body and the response are forwarded as they arrive, in their own framing:
keep-alive, chunked, server-sent events, large up/downloads, and upgrades (WebSocket) after a
101. An unknown sandbox, a wrong token and a port that is not exposed get the same 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("hutch.proxy")

MAX_LINE = 16 * 1024
MAX_HEADERS = 100
MAX_HEAD = 64 * 1024
COPY_CHUNK = 1 << 20
HEAD_TIMEOUT = 60.0
TOKEN_BYTES = 16  # 128 bits

_TOKEN_CHAR = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HOST_RE = re.compile(
    r"^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*$"
)
_IPV6_HOST_RE = re.compile(r"^\[[0-9a-f:.]+\]$")
_LABEL_RE = re.compile(r"^([0-9]{1,5})-([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)-([0-9a-f]{32})$")
_HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"upgrade",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
}

NOT_FOUND_BODY = (
    b"no such preview: the sandbox, the port or the token is wrong, or the port is not exposed\n"
)


def new_token() -> str:
    return secrets.token_hex(TOKEN_BYTES)


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# -- Host routing (pure) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PreviewTarget:
    port: int
    sandbox_id: str
    token: str


def split_host(value: str) -> tuple[str, int | None]:
    """`host[:port]` -> (lowercased host, port); BadRequest if it is not a clean Host value."""
    host, port = value.lower(), None
    if ":" in host and not host.endswith("]"):
        host, _, port_text = host.rpartition(":")
        if not port_text.isdigit() or len(port_text) > 5 or int(port_text) > 65535:
            raise BadRequest(f"malformed Host header {value!r}")
        port = int(port_text)
    if not (_HOST_RE.fullmatch(host) or _IPV6_HOST_RE.fullmatch(host)) or len(host) > 253:
        raise BadRequest(f"malformed Host header {value!r}")
    return host, port


def preview_target(host: str, domain: str) -> PreviewTarget | None:
    """The preview a (clean, lowercased) host names; None if it is not under `domain`.

    Raises:
        BadRequest: a name under the preview domain that is not a preview name.
    """
    suffix = "." + domain
    if not host.endswith(suffix):
        return None
    label = host[: -len(suffix)]
    m = _LABEL_RE.fullmatch(label)
    if m is None:
        raise BadRequest(f"{host!r} is not a preview host ({{port}}-{{sandbox_id}}-{{token}})")
    port = int(m.group(1))
    if not 1 <= port <= 65535:
        raise BadRequest(f"{host!r}: port out of range")
    return PreviewTarget(port, m.group(2), m.group(3))


def preview_url(domain: str, server_port: int, sandbox_id: str, port: int, token: str) -> str:
    return f"http://{port}-{sandbox_id}-{token}.{domain}:{server_port}/"


class PreviewRoutes:
    """What the proxy may reach: (sandbox, port) -> token, and each sandbox's address.

    Filled from the store at start and kept in step by the ports routes; read on every
    preview request, so it is a dict lookup and one constant-time compare.
    """

    def __init__(self, domain: str = "localhost") -> None:
        self.domain = domain
        self._tokens: dict[tuple[str, int], str] = {}
        self._addresses: dict[str, str] = {}
        self.address_of: Callable[[str], str | None] = lambda _: None
        self.connections: set[asyncio.Task[None]] = set()

    def add(self, sandbox_id: str, port: int, token: str) -> None:
        self._tokens[(sandbox_id, port)] = token

    def remove(self, sandbox_id: str, port: int) -> None:
        self._tokens.pop((sandbox_id, port), None)

    def forget_sandbox(self, sandbox_id: str) -> None:
        for key in [k for k in self._tokens if k[0] == sandbox_id]:
            del self._tokens[key]
        self._addresses.pop(sandbox_id, None)

    def resolve(self, target: PreviewTarget) -> str | None:
        """The sandbox address to connect to, or None (one answer for every reason)."""
        expected = self._tokens.get((target.sandbox_id, target.port))
        # Compared even when there is nothing to compare against: no timing tells which part
        # of the name was wrong.
        ok = hmac.compare_digest(expected or "0" * 32, target.token) and expected is not None
        if not ok:
            return None
        address = self._addresses.get(target.sandbox_id)
        if address is None:
            address = self.address_of(target.sandbox_id)
            if address is None:
                return None
            self._addresses[target.sandbox_id] = address
        return address

    async def close(self) -> None:
        for task in list(self.connections):
            task.cancel()
        for task in list(self.connections):
            with contextlib.suppress(BaseException):
                await task


# -- HTTP/1.1 heads (pure) -------------------------------------------------------------------


@dataclass(slots=True)
class Head:
    start: tuple[bytes, bytes, bytes]  # method, target, version / version, status, reason
    headers: list[tuple[bytes, bytes]]

    def get_all(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k.lower() == name]


def parse_head_lines(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = []
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN_CHAR.match(name):
            # Also refuses obs-fold (a line starting with whitespace) and "Name : value".
            raise BadRequest(f"malformed header line {line[:80]!r}")
        value = value.strip(b" \t")
        if any(c < 0x20 and c != 0x09 or c == 0x7F for c in value):
            raise BadRequest("control character in a header value")
        headers.append((name, value))
    return headers


def parse_request_start(line: bytes) -> tuple[bytes, bytes, bytes]:
    parts = line.split(b" ")
    if len(parts) != 3 or not _TOKEN_CHAR.match(parts[0]) or not parts[1]:
        raise BadRequest(f"malformed request line {line[:80]!r}")
    if parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise BadRequest(f"unsupported HTTP version {parts[2][:20]!r}", 505)
    if any(c <= 0x20 or c == 0x7F for c in parts[1]):
        raise BadRequest("control character or space in the request target")
    return parts[0], parts[1], parts[2]


@dataclass(frozen=True, slots=True)
class Framing:
    """How a message's body is delimited."""

    length: int | None  # Content-Length
    chunked: bool


def request_framing(head: Head) -> Framing:
    te = head.get_all(b"transfer-encoding")
    cl = head.get_all(b"content-length")
    if te and cl:
        raise BadRequest("both Content-Length and Transfer-Encoding: refused (request smuggling)")
    if te:
        if len(te) != 1 or te[0].lower() != b"chunked":
            raise BadRequest("Transfer-Encoding other than a single 'chunked' is refused", 501)
        return Framing(None, True)
    if cl:
        if len(set(cl)) != 1 or not cl[0].isdigit() or len(cl[0]) > 18:
            raise BadRequest("malformed or conflicting Content-Length")
        return Framing(int(cl[0]), False)
    return Framing(0, False)


def response_framing(head: Head, method: bytes) -> Framing:
    status = int(head.start[1])
    if method == b"HEAD" or 100 <= status < 200 or status in (204, 304):
        return Framing(0, False)
    te = head.get_all(b"transfer-encoding")
    if te:
        if te[-1].lower().split(b",")[-1].strip() == b"chunked":
            return Framing(None, True)
        return Framing(None, False)  # until close
    cl = head.get_all(b"content-length")
    if cl and cl[0].isdigit() and len(set(cl)) == 1:
        return Framing(int(cl[0]), False)
    if cl:
        raise BadRequest("the sandbox sent a malformed Content-Length", 502)
    return Framing(None, False)  # until close


def origin_form(target: bytes, host: bytes) -> bytes:
    """The request target in origin-form; an absolute-form target must name `host`."""
    if target.startswith(b"/"):
        return target
    m = re.match(rb"^http://([^/?#]+)(.*)$", target, re.IGNORECASE)
    if m is None:
        raise BadRequest("request target must be a path or an http:// URL")
    if m.group(1).lower() != host.lower():
        raise BadRequest("absolute-form request target disagrees with Host")
    rest = m.group(2) or b"/"
    return rest if rest.startswith(b"/") else b"/" + rest


def connection_tokens(head: Head) -> set[bytes]:
    return {
        t.strip().lower() for v in head.get_all(b"connection") for t in v.split(b",") if t.strip()
    }


# -- I/O -------------------------------------------------------------------------------------


async def read_head(reader: asyncio.StreamReader) -> tuple[bytes, list[bytes]] | None:
    """Start line and header lines; None on a clean EOF before any byte."""
    lines: list[bytes] = []
    size = 0
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as e:
            if not e.partial and not lines:
                return None
            raise BadRequest("connection closed mid-head") from None
        except asyncio.LimitOverrunError:
            raise BadRequest("header line too long", 431) from None
        size += len(line)
        if not line.endswith(b"\r\n"):
            raise BadRequest("bare LF line ending: refused (request smuggling)")
        if size > MAX_HEAD or len(lines) > MAX_HEADERS:
            raise BadRequest("request head too large", 431)
        line = line[:-2]
        if not line:
            if not lines:
                continue  # RFC 9112: ignore empty lines before the request line
            return lines[0], lines[1:]
        lines.append(line)


async def copy_exact(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    while n > 0:
        data = await reader.read(min(n, COPY_CHUNK))
        if not data:
            raise ConnectionError("peer closed mid-body")
        n -= len(data)
        writer.write(data)
        await writer.drain()


async def copy_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Forward a chunked body as it is, chunk by chunk, up to its end and trailers."""
    while True:
        line = await reader.readuntil(b"\n")
        if not line.endswith(b"\r\n"):
            raise BadRequest("bare LF in chunked framing")
        size_text = line[:-2].split(b";", 1)[0].strip()
        if not size_text or len(size_text) > 16 or not re.fullmatch(rb"[0-9a-fA-F]+", size_text):
            raise BadRequest("malformed chunk size")
        size = int(size_text, 16)
        writer.write(line)
        if size == 0:
            while True:
                trailer = await reader.readuntil(b"\n")
                if not trailer.endswith(b"\r\n"):
                    raise BadRequest("bare LF in chunked trailers")
                writer.write(trailer)
                if trailer == b"\r\n":
                    await writer.drain()
                    return
        await copy_exact(reader, writer, size)
        crlf = await reader.readexactly(2)
        if crlf != b"\r\n":
            raise BadRequest("chunk not followed by CRLF")
        writer.write(crlf)


async def copy_until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(COPY_CHUNK):
        writer.write(data)
        await writer.drain()


async def copy_body(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, framing: Framing
) -> None:
    if framing.chunked:
        await copy_chunked(reader, writer)
    elif framing.length is not None:
        await copy_exact(reader, writer, framing.length)
    else:
        await copy_until_eof(reader, writer)


def _simple_response(status: int, body: bytes, *, close: bool = True) -> bytes:
    reason = {400: "Bad Request", 404: "Not Found", 431: "Request Header Fields Too Large"}.get(
        status, "Error"
    )
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\n{'connection: close' if close else ''}\r\n\r\n"
    ).encode() + body


class _Upstream:
    def __init__(
        self, key: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.key = key
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


async def serve_preview(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    routes: PreviewRoutes,
    client_ip: str,
) -> None:
    """Serve one client connection that asked for a preview host, request after request."""
    upstream: _Upstream | None = None
    try:
        while True:
            try:
                got = await asyncio.wait_for(read_head(reader), HEAD_TIMEOUT)
                if got is None:
                    return
                start_line, header_lines = got
                method, target, version = parse_request_start(start_line)
                head = Head((method, target, version), parse_head_lines(header_lines))
                hosts = head.get_all(b"host")
                if len(hosts) != 1:
                    raise BadRequest("exactly one Host header is required")
                host_text = hosts[0].decode("ascii", "strict")
                host, _ = split_host(host_text)
                preview = preview_target(host, routes.domain)
                if preview is None:
                    raise BadRequest("this connection serves preview hosts only")
                path = origin_form(target, hosts[0])
                framing = request_framing(head)
            except (BadRequest, UnicodeDecodeError, TimeoutError) as exc:
                status = exc.status if isinstance(exc, BadRequest) else 400
                if not isinstance(exc, TimeoutError):
                    writer.write(_simple_response(status, f"{exc}\n".encode()))
                return
            address = routes.resolve(preview)
            if address is None:
                writer.write(_simple_response(404, NOT_FOUND_BODY, close=False))
                if framing.length or framing.chunked:
                    return  # not worth reading a body we will not forward
                await writer.drain()
                continue
            key = (address, preview.port)
            if upstream is None or upstream.key != key or upstream.reader.at_eof():
                if upstream is not None:
                    upstream.close()
                upstream = None
                try:
                    up_r, up_w = await asyncio.wait_for(
                        asyncio.open_connection(address, preview.port, limit=MAX_HEAD), 10.0
                    )
                except (OSError, TimeoutError):
                    body = b"the sandbox does not accept connections on this port\n"
                    writer.write(_simple_response(502, body, close=False))
                    if framing.length or framing.chunked:
                        return
                    await writer.drain()
                    continue
                upstream = _Upstream(key, up_r, up_w)
            tokens = connection_tokens(head)
            upgrade = head.get_all(b"upgrade")
            wants_upgrade = b"upgrade" in tokens and len(upgrade) == 1
            client_close = b"close" in tokens or version == b"HTTP/1.0"
            out = [method, b" ", path, b" HTTP/1.1\r\n"]
            for name, value in head.headers:
                if name.lower() in _HOP_BY_HOP:
                    continue
                out += [name, b": ", value, b"\r\n"]
            forwarded_for = b", ".join([*head.get_all(b"x-forwarded-for"), client_ip.encode()])
            out += [
                b"X-Forwarded-For: ",
                forwarded_for,
                b"\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: ",
                hosts[0],
                b"\r\n",
            ]
            if wants_upgrade:
                out += [b"Connection: Upgrade\r\nUpgrade: ", upgrade[0], b"\r\n"]
            out.append(b"\r\n")
            upstream.writer.write(b"".join(out))
            try:
                closing = await _exchange(
                    reader, writer, upstream, method, framing, wants_upgrade, client_close
                )
            except BadRequest as exc:
                if exc.status == 502:
                    writer.write(_simple_response(502, f"{exc}\n".encode()))
                return
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            if closing:
                return
    finally:
        if upstream is not None:
            upstream.close()
        writer.close()


async def _exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    upstream: _Upstream,
    method: bytes,
    framing: Framing,
    wants_upgrade: bool,
    client_close: bool,
) -> bool:
    """Forward one request body and its response; True if the client connection must close."""
    body_task: asyncio.Task[None] | None = None
    if framing.chunked or framing.length:
        # The body streams while the response may already start (a server may answer early).
        body_task = asyncio.ensure_future(copy_body(reader, upstream.writer, framing))
    try:
        while True:
            got = await read_head(upstream.reader)
            if got is None:
                raise BadRequest("the sandbox closed the connection without answering", 502)
            start_line, header_lines = got
            parts = start_line.split(b" ", 2)
            if len(parts) < 2 or not parts[1].isdigit() or len(parts[1]) != 3:
                raise BadRequest("the sandbox sent a malformed status line", 502)
            head = Head((parts[0], parts[1], parts[2] if len(parts) > 2 else b""), [])
            head.headers = parse_head_lines(header_lines)
            status = int(parts[1])
            if status == 101 and wants_upgrade:
                writer.write(start_line + b"\r\n" + b"".join(h + b"\r\n" for h in header_lines))
                writer.write(b"\r\n")
                await writer.drain()
                await _splice(reader, writer, upstream)
                return True
            if 100 <= status < 200:
                writer.write(start_line + b"\r\n" + b"".join(h + b"\r\n" for h in header_lines))
                writer.write(b"\r\n")
                continue
            rframing = response_framing(head, method)
            up_close = b"close" in connection_tokens(head)
            until_eof = not rframing.chunked and rframing.length is None
            closing = client_close or until_eof
            out = [start_line, b"\r\n"]
            for name, value in head.headers:
                if name.lower() in _HOP_BY_HOP:
                    continue
                out += [name, b": ", value, b"\r\n"]
            if closing:
                out.append(b"Connection: close\r\n")
            out.append(b"\r\n")
            writer.write(b"".join(out))
            await copy_body(upstream.reader, writer, rframing)
            await writer.drain()
            if body_task is not None:
                await body_task
                body_task = None
            if up_close or until_eof:
                upstream.close()
                upstream.reader.feed_eof()
            return closing
    finally:
        if body_task is not None and not body_task.done():
            body_task.cancel()


async def _splice(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: _Upstream
) -> None:
    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await copy_until_eof(src, dst)
        with contextlib.suppress(OSError, RuntimeError):
            if dst.can_write_eof():
                dst.write_eof()

    await asyncio.gather(pipe(reader, upstream.writer), pipe(upstream.reader, writer))


# -- the front protocol ----------------------------------------------------------------------


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
            loop = asyncio.get_running_loop()
            transport: Any = self.transport
            self.connections.discard(self)
            reader = asyncio.StreamReader(limit=MAX_HEAD, loop=loop)
            protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
            transport.set_protocol(protocol)
            protocol.connection_made(transport)
            reader.feed_data(buffer)
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            client_ip = self.client[0] if self.client else "unknown"
            task = loop.create_task(serve_preview(reader, writer, routes, client_ip))
            routes.connections.add(task)
            task.add_done_callback(routes.connections.discard)

    return FrontProtocol
