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
import functools
import hmac
import logging
import re
import secrets
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("hutch.proxy")

MAX_LINE = 16 * 1024
MAX_HEADERS = 100
MAX_HEAD = 64 * 1024
TOKEN_BYTES = 16  # 128 bits
IDLE_TIMEOUT = 120.0

_HOST_RE = re.compile(
    r"^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*$"
)
_IPV6_HOST_RE = re.compile(r"^\[[0-9a-f:.]+\]$")
_LABEL_RE = re.compile(r"^([0-9]{1,5})-([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)-([0-9a-f]{32})$")

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
        self.connections: set[PreviewConnection] = set()
        self.idle_timeout = IDLE_TIMEOUT
        self._sweeper: asyncio.Task[None] | None = None
        self.pending: set[asyncio.Task[None]] = set()  # upstream connects in progress

    def add(self, sandbox_id: str, port: int, token: str) -> None:
        self._tokens[(sandbox_id, port)] = token

    def remove(self, sandbox_id: str, port: int) -> None:
        """Unexpose: new requests get 404, and open connections (WebSockets too) close now."""
        self._tokens.pop((sandbox_id, port), None)
        self._close_where(lambda key: key == (sandbox_id, port))

    def forget_sandbox(self, sandbox_id: str) -> None:
        for key in [k for k in self._tokens if k[0] == sandbox_id]:
            del self._tokens[key]
        self._addresses.pop(sandbox_id, None)
        self._close_where(lambda key: key is not None and key[0] == sandbox_id)

    def _close_where(self, match: Callable[[tuple[str, int] | None], bool]) -> None:
        for connection in list(self.connections):
            if match(connection.target_key):
                connection.close()

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

    def start(self) -> None:
        """Close idle preview connections (no bytes from the client for `idle_timeout` and no
        request in flight): a client cannot hold connections open forever."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_idle())

    async def _sweep_idle(self) -> None:
        while True:
            await asyncio.sleep(self.idle_timeout / 2)
            for connection in list(self.connections):
                if connection.active or connection.inflight is not None or connection.tunnel:
                    connection.active = False
                else:
                    connection.close()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for task in list(self.pending):
            task.cancel()
        for connection in list(self.connections):
            connection.close()


# -- HTTP/1.1 heads (pure) -------------------------------------------------------------------

_NAME_RE = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE_RE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_CHUNK_SIZE_RE = re.compile(rb"^([0-9a-fA-F]{1,16})(?:[ \t]*;[^\r\n]*)?$")
_REQUEST_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"upgrade",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-for",
    }
)
_RESPONSE_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"trailer", b"upgrade"}
)
# What the fast parsers look at (a name at the start of a line); other headers pass untouched.
_REQUEST_WATCH_RE = re.compile(
    rb"\n(host|content-length|transfer-encoding|"
    + b"|".join(re.escape(n) for n in sorted(_REQUEST_HOP))
    + rb"):[ \t]*([^\r]*)",
    re.IGNORECASE,
)
_RESPONSE_WATCH_RE = re.compile(
    rb"\n(content-length|transfer-encoding|"
    + b"|".join(re.escape(n) for n in sorted(_RESPONSE_HOP))
    + rb"):[ \t]*([^\r]*)",
    re.IGNORECASE,
)
_FORWARDED = (
    b"%s %s HTTP/1.1\r\n%s"
    b"X-Forwarded-For: %s%s\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: %s\r\n"
)
# A whole head, each line with its CRLF: a line without CR or LF, then header lines of a token
# name, a colon and a value without control characters (tab allowed). No bare CR or LF, no
# obs-fold, no 'Name : value'.
_HEAD_RE = re.compile(
    rb"[^\r\n]*\r\n(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*"
)


def _lines(head: bytes) -> list[bytes]:
    lines = head.split(b"\r\n")
    if head.count(b"\n") != len(lines) - 1 or head.count(b"\r") != len(lines) - 1:
        raise BadRequest("bare LF or CR in the head: refused (request smuggling)")
    return lines


def _headers(lines: list[bytes]) -> list[tuple[bytes, bytes, bytes]]:
    """(name, lowercased name, value) per header line; refuses obs-fold and 'Name : value'."""
    out = []
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not _NAME_RE.match(name):
            raise BadRequest(f"malformed header line {line[:80]!r}")
        value = value.strip(b" \t")
        if _BAD_VALUE_RE.search(value):
            raise BadRequest("control character in a header value")
        out.append((name, name.lower(), value))
    return out


@dataclass(slots=True)
class Request:
    """A parsed, checked request head and its forwarded form."""

    method: bytes
    host: bytes
    target: PreviewTarget
    length: int  # Content-Length (0 if none); -1: chunked
    keep_alive: bool
    upgrade: bool
    forwarded: bytes  # the head to send upstream, without its final CRLF


def parse_request(head: bytes, domain: str, client_ip: bytes) -> Request:
    """Parse one request head (without its blank line) strictly, for the preview `domain`.

    Raises:
        BadRequest: anything ambiguous or malformed (status 400, 431, 501 or 505).
    """
    return _parse_request(head + b"\r\n", domain, client_ip)


def _parse_request(h: bytes, domain: str, client_ip: bytes) -> Request:
    """`parse_request` of a head that ends with its last line's CRLF (the fast path).

    One regex checks the whole head's shape in C (CRLF-only lines, token names, no control
    characters in values); a head that fails it goes through the line-by-line checks of
    `_parse_request_slow` for the precise error. Then only the lines whose names matter are
    looked at (found by one case-insensitive regex scan); the others are forwarded as they
    are. The rules are the same as the reference's (a test compares them).
    """
    if _HEAD_RE.fullmatch(h) is None:
        _parse_request_slow(h[:-2], domain, client_ip)
        raise BadRequest("malformed request head")
    if h.count(b"\n") > MAX_HEADERS:
        raise BadRequest("too many header lines", 431)
    first = h.find(b"\r\n")
    parts = h[:first].split(b" ")
    if len(parts) != 3 or not _NAME_RE.match(parts[0]) or not parts[1]:
        raise BadRequest(f"malformed request line {h[:first][:80]!r}")
    method, target, version = parts
    if version != b"HTTP/1.1" and version != b"HTTP/1.0":
        raise BadRequest(f"unsupported HTTP version {version[:20]!r}", 505)
    if b"\t" in target or _BAD_VALUE_RE.search(target):
        raise BadRequest("control character in the request target")
    host: bytes | None = None
    te: bytes | None = None
    cl: bytes | None = None
    connection: list[bytes] = []
    upgrade: bytes | None = None
    xff = b""
    hop = False
    for lower, value in _watched_fields(h, _REQUEST_WATCH_RE):
        if lower == b"host":
            if host is not None:
                raise BadRequest("exactly one Host header is required")
            host = value
            continue
        if lower == b"content-length":
            if not value.isdigit() or len(value) > 18 or (cl is not None and cl != value):
                raise BadRequest("malformed or conflicting Content-Length")
            cl = value
            continue
        if lower == b"transfer-encoding":
            if te is not None or value.lower() != b"chunked":
                raise BadRequest("Transfer-Encoding other than one 'chunked' is refused", 501)
            te = value
            continue
        hop = True
        if lower == b"connection":
            connection.append(value)
        elif lower == b"upgrade":
            upgrade = value
        elif lower == b"x-forwarded-for":
            xff = value + b", "
    if host is None:
        raise BadRequest("exactly one Host header is required")
    if te is not None:
        if cl is not None:
            raise BadRequest(
                "both Content-Length and Transfer-Encoding: refused (request smuggling)"
            )
        length = -1
    else:
        length = 0 if cl is None else int(cl)
    preview = _host_target(host, domain)
    path = target if target[:1] == b"/" else origin_form(target, host)
    tokens = {t.strip().lower() for v in connection for t in v.split(b",")} if connection else set()
    wants_upgrade = upgrade is not None and b"upgrade" in tokens
    kept = _without(h, first + 2, _REQUEST_HOP_LINES) if hop else h[first + 2 :]
    forwarded = _FORWARDED % (method, path, kept, xff, client_ip, host)
    if wants_upgrade:
        assert upgrade is not None
        forwarded += b"Connection: Upgrade\r\nUpgrade: " + upgrade + b"\r\n"
    return Request(
        method,
        host,
        preview,
        length,
        version == b"HTTP/1.1" and b"close" not in tokens,
        wants_upgrade,
        forwarded,
    )


def _watched_fields(h: bytes, watch: re.Pattern[bytes]) -> list[tuple[bytes, bytes]]:
    """(lowercased name, stripped value) of each header line of a checked head `h` whose name
    `watch` matches, in the head's order: one regex scan in C."""
    return [(name.lower(), value.rstrip(b" \t")) for name, value in watch.findall(h)]


def _without(h: bytes, start: int, lines: re.Pattern[bytes]) -> bytes:
    """The header lines of a checked head `h` from `start` on, without those `lines` matches
    (a `_drop_lines` pattern)."""
    return lines.sub(b"", h[start - 2 :])[2:]


def _drop_lines(names: Iterable[bytes]) -> re.Pattern[bytes]:
    """Matches a header line named one of `names` with the CRLF before it, in a checked head
    (where every CRLF starts a line)."""
    alternatives = b"|".join(re.escape(n) for n in sorted(names))
    return re.compile(rb"\r\n(?:" + alternatives + rb"):[^\r]*", re.IGNORECASE)


_REQUEST_HOP_LINES = _drop_lines(_REQUEST_HOP)
# (drop Transfer-Encoding, drop Content-Length) -> the lines a response head loses.
_RESPONSE_DROP_LINES = {
    (False, False): _drop_lines(_RESPONSE_HOP),
    (True, False): _drop_lines(_RESPONSE_HOP | {b"transfer-encoding"}),
    (False, True): _drop_lines(_RESPONSE_HOP | {b"content-length"}),
    (True, True): _drop_lines(_RESPONSE_HOP | {b"transfer-encoding", b"content-length"}),
}


@functools.lru_cache(maxsize=1024)
def _host_target(host: bytes, domain: str) -> PreviewTarget:
    """The preview a Host value names (a pure function: connections repeat their Host)."""
    try:
        name, _ = split_host(host.decode("ascii"))
    except UnicodeDecodeError:
        raise BadRequest("malformed Host header") from None
    preview = preview_target(name, domain)
    if preview is None:
        raise BadRequest("this connection serves preview hosts only; open a new one")
    return preview


def _parse_request_slow(head: bytes, domain: str, client_ip: bytes) -> Request:
    """The line-by-line reference of `_parse_request`: raises the precise error."""
    lines = _lines(head)
    if len(lines) > MAX_HEADERS:
        raise BadRequest("too many header lines", 431)
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _NAME_RE.match(parts[0]) or not parts[1]:
        raise BadRequest(f"malformed request line {lines[0][:80]!r}")
    method, target, version = parts
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise BadRequest(f"unsupported HTTP version {version[:20]!r}", 505)
    if _BAD_VALUE_RE.search(target) or b"\t" in target:
        raise BadRequest("control character in the request target")
    host: bytes | None = None
    length = 0
    te: bytes | None = None
    cl: bytes | None = None
    tokens: set[bytes] = set()
    upgrade: bytes | None = None
    xff = b""
    kept: list[bytes] = []
    for name, lower, value in _headers(lines[1:]):
        if lower == b"host":
            if host is not None:
                raise BadRequest("exactly one Host header is required")
            host = value
        elif lower == b"content-length":
            if not value.isdigit() or len(value) > 18 or (cl is not None and cl != value):
                raise BadRequest("malformed or conflicting Content-Length")
            cl = value
        elif lower == b"transfer-encoding":
            if te is not None or value.lower() != b"chunked":
                raise BadRequest("Transfer-Encoding other than one 'chunked' is refused", 501)
            te = value
        elif lower == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
        elif lower == b"upgrade":
            upgrade = value
        elif lower == b"x-forwarded-for":
            xff = value + b", "
        if lower not in _REQUEST_HOP:
            kept.append(name + b": " + value)
    if host is None:
        raise BadRequest("exactly one Host header is required")
    if te is not None and cl is not None:
        raise BadRequest("both Content-Length and Transfer-Encoding: refused (request smuggling)")
    if te is not None:
        length = -1
    elif cl is not None:
        length = int(cl)
    try:
        name_text, _ = split_host(host.decode("ascii"))
    except UnicodeDecodeError:
        raise BadRequest("malformed Host header") from None
    preview = preview_target(name_text, domain)
    if preview is None:
        raise BadRequest("this connection serves preview hosts only; open a new one")
    path = origin_form(target, host)
    wants_upgrade = upgrade is not None and b"upgrade" in tokens
    keep_alive = version == b"HTTP/1.1" and b"close" not in tokens
    out = [method + b" " + path + b" HTTP/1.1", *kept]
    out.append(b"X-Forwarded-For: " + xff + client_ip)
    out.append(b"X-Forwarded-Proto: http")
    out.append(b"X-Forwarded-Host: " + host)
    if wants_upgrade:
        assert upgrade is not None
        out.append(b"Connection: Upgrade")
        out.append(b"Upgrade: " + upgrade)
    return Request(
        method=method,
        host=host,
        target=preview,
        length=length,
        keep_alive=keep_alive,
        upgrade=wants_upgrade,
        forwarded=b"\r\n".join(out) + b"\r\n",
    )


@dataclass(slots=True)
class Response:
    status: int
    length: int  # -1: chunked; -2: until the connection closes
    close: bool
    forwarded: bytes  # the head to send to the client, without its final CRLF
    verbatim: bool = False  # forwarded is the sandbox's head unchanged


def parse_response(head: bytes, method: bytes, keep_alive: bool) -> Response:
    """Parse a response head from a sandbox (untrusted too) into what the client gets."""
    return _parse_response(head + b"\r\n", method, keep_alive)


def _parse_response(h: bytes, method: bytes, keep_alive: bool) -> Response:
    """`parse_response` of a head that ends with its last line's CRLF (the fast path, as
    `_parse_request`); a head with no hop-by-hop header is forwarded unchanged."""
    if _HEAD_RE.fullmatch(h) is None:
        _parse_response_slow(h[:-2], method, keep_alive)
        raise BadRequest("the sandbox sent a malformed response", 502)
    first = h.find(b"\r\n")
    parts = h[:first].split(b" ", 2)
    if (
        len(parts) < 2
        or not parts[0].startswith(b"HTTP/1.")
        or len(parts[1]) != 3
        or not parts[1].isdigit()  # three ASCII digits: int() would take "+99" or "1_0"
    ):
        raise BadRequest("the sandbox sent a malformed response: malformed status line", 502)
    try:
        status = int(parts[1])
    except ValueError:
        raise BadRequest("the sandbox sent a malformed response: bad status", 502) from None
    if status == 101:
        return Response(101, 0, False, h)
    te: bytes | None = None
    cl: bytes | None = None
    cl_conflict = False
    connection: list[bytes] = []
    hop = False
    for lower, value in _watched_fields(h, _RESPONSE_WATCH_RE):
        if lower == b"content-length":
            cl_conflict = cl_conflict or (cl is not None and cl != value)
            cl = value
        elif lower == b"transfer-encoding":
            te = value
        else:
            hop = True
            if lower == b"connection":
                connection.append(value)
    if method == b"HEAD" or status < 200 or status == 204 or status == 304:
        length = 0
    elif te is not None:
        length = -1 if te.lower().rsplit(b",", 1)[-1].strip() == b"chunked" else -2
    elif cl is not None:
        if cl_conflict or not cl.isdigit() or len(cl) > 18:
            raise BadRequest("the sandbox sent a malformed Content-Length", 502)
        length = int(cl)
    else:
        length = -2
    close = not keep_alive or length == -2
    if connection and not close and b"close" in b",".join(connection).lower():
        close = b"close" in {t.strip().lower() for v in connection for t in v.split(b",")}
    drop_te = te is not None and length == -2
    # Transfer-Encoding wins over Content-Length (RFC 9112 6.3), and the Content-Length is not
    # passed on: a client that trusted it would read the next response out of this body.
    drop_cl = te is not None and cl is not None
    if not hop and not drop_te and not drop_cl:
        if close:
            return Response(status, length, True, h + b"Connection: close\r\n")
        return Response(status, length, False, h, True)
    lines = _RESPONSE_DROP_LINES[drop_te, drop_cl]
    forwarded = h[: first + 2] + _without(h, first + 2, lines)
    if close:
        forwarded += b"Connection: close\r\n"
    return Response(status, length, close, forwarded)


def _parse_response_slow(head: bytes, method: bytes, keep_alive: bool) -> Response:
    """The line-by-line reference of `_parse_response`: raises the precise error."""
    try:
        lines = _lines(head)
        parts = lines[0].split(b" ", 2)
        if (
            len(parts) < 2
            or not parts[0].startswith(b"HTTP/1.")
            or len(parts[1]) != 3
            or not parts[1].isdigit()
        ):
            raise BadRequest("malformed status line")
        status = int(parts[1])
        headers = _headers(lines[1:])
    except (BadRequest, ValueError) as exc:
        raise BadRequest(f"the sandbox sent a malformed response: {exc}", 502) from None
    if status == 101:
        return Response(101, 0, False, head + b"\r\n")
    te = [v for _, n, v in headers if n == b"transfer-encoding"]
    cl = {v for _, n, v in headers if n == b"content-length"}
    tokens = {t.strip().lower() for _, n, v in headers if n == b"connection" for t in v.split(b",")}
    if method == b"HEAD" or status < 200 or status in (204, 304):
        length = 0
    elif te:
        length = -1 if te[-1].lower().rsplit(b",", 1)[-1].strip() == b"chunked" else -2
    elif cl:
        value = cl.pop()
        if cl or not value.isdigit() or len(value) > 18:
            raise BadRequest("the sandbox sent a malformed Content-Length", 502)
        length = int(value)
    else:
        length = -2
    close = not keep_alive or length == -2 or b"close" in tokens
    out = [lines[0]]
    out += [name + b": " + value for name, lower, value in headers if lower not in _RESPONSE_HOP]
    if te and length == -2:
        out = [line for line in out if not line.lower().startswith(b"transfer-encoding:")]
    if te and cl:
        out = [line for line in out if not line.lower().startswith(b"content-length:")]
    if close:
        out.append(b"Connection: close")
    return Response(status, length, close, b"\r\n".join(out) + b"\r\n")


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


class ChunkedFraming:
    """Finds where a chunked body ends in a byte stream, without copying it."""

    def __init__(self) -> None:
        self._remaining = 0
        self._state = "size"  # size | data | crlf | trailer | done

    @property
    def done(self) -> bool:
        return self._state == "done"

    def feed(self, buf: bytearray | bytes, pos: int = 0) -> int:
        """Consume from `pos`; returns the index after the last byte of this body seen so far.

        Raises:
            BadRequest: malformed framing.
        """
        end = len(buf)
        while pos < end and self._state != "done":
            if self._state == "data":
                take = min(self._remaining, end - pos)
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = "crlf"
            elif self._state == "crlf":
                if end - pos < 2:
                    return pos
                if buf[pos : pos + 2] != b"\r\n":
                    raise BadRequest("chunk not followed by CRLF")
                pos += 2
                self._state = "size"
            else:
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    if end - pos > 4096 or b"\n" in buf[pos:end]:
                        raise BadRequest("malformed chunk framing")
                    return pos
                line = bytes(buf[pos:nl])
                if b"\n" in line or b"\r" in line:
                    raise BadRequest("bare LF in chunk framing")
                pos = nl + 2
                if self._state == "trailer":
                    if not line:
                        self._state = "done"
                    continue
                m = _CHUNK_SIZE_RE.match(line)
                if m is None:
                    raise BadRequest("malformed chunk size")
                self._remaining = int(m.group(1), 16)
                self._state = "data" if self._remaining else "trailer"
        return pos


def _simple_response(status: int, body: bytes, *, close: bool = True) -> bytes:
    reason = {
        400: "Bad Request",
        404: "Not Found",
        431: "Request Header Fields Too Large",
        501: "Not Implemented",
        502: "Bad Gateway",
        505: "HTTP Version Not Supported",
    }.get(status, "Error")
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\n{'connection: close' if close else ''}\r\n\r\n"
    ).encode() + body


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
        upstream = self.upstream
        if (
            upstream is None
            or upstream.closed
            or upstream.key[0] != address
            or upstream.key[1] != target.port
        ):
            if upstream is not None:
                upstream.close()
            upstream = self.upstream = Upstream(self, (address, target.port))
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

    def __init__(self, client: PreviewConnection, key: tuple[str, int]) -> None:
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
        self._connect = loop.create_task(self._open(loop))
        client.routes.pending.add(self._connect)
        self._connect.add_done_callback(client.routes.pending.discard)

    async def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            await asyncio.wait_for(loop.create_connection(lambda: self, *self.key), 10.0)
        except (OSError, TimeoutError):
            self.closed = True
            if self.request is not None and self.client.inflight is self.request:
                # The usual cause: a dev server bound to 127.0.0.1 inside the sandbox, which
                # the proxy (coming in over the sandbox's veth) cannot reach.
                body = (
                    b"the sandbox does not accept connections on this port: is the server "
                    b"running, and listening on 0.0.0.0 (not 127.0.0.1 or localhost)? "
                    b"See docs/troubleshooting.md\n"
                )
                self.client.write(_simple_response(502, body))
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
            self.connections.discard(self)
            client_ip = self.client[0] if self.client else "unknown"
            PreviewConnection(routes, client_ip).take_over(self.transport, buffer)

    return FrontProtocol
