"""HTTP/1.1 request and response heads, parsed strictly (pure; no I/O).

CRLF only, one Host, no Content-Length together with Transfer-Encoding, Transfer-Encoding only
`chunked`, origin-form or an absolute-form that agrees with Host: anything ambiguous is
refused, so the proxy and the sandbox's server can never disagree on where a request ends."""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from hutch.proxy._errors import BadRequest
from hutch.proxy._routes import (
    MAX_HEADERS,
    TRAFFIC_TOKEN_HEADER,
    PreviewTarget,
    preview_target,
    split_host,
)

_NAME_RE = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE_RE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_REQUEST_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        # A preview URL is the sandbox's: an API key a client sends along must not reach it.
        b"authorization",
        b"te",
        b"trailer",
        b"upgrade",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-for",
        # E2B's traffic token opens every port of its sandbox: the sandbox need not see it.
        TRAFFIC_TOKEN_HEADER.encode(),
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
# A Set-Cookie `Domain` attribute makes a cookie reach every host under that domain: other
# sandboxes' previews and, under the default `localhost`, the console. Dropped, every cookie a
# sandbox sets is host-only: its own preview host, nothing else.
_COOKIE_DOMAIN_RE = re.compile(rb"\nset-cookie:[^\r]*;[ \t]*domain[ \t]*=", re.IGNORECASE)
_SET_COOKIE_LINE_RE = re.compile(rb"(\r\nset-cookie:)([^\r]*)", re.IGNORECASE)


def cookie_without_domain(value: bytes) -> bytes:
    """A Set-Cookie value without its Domain attributes (so the cookie is host-only)."""
    cookie, *attributes = value.split(b";")
    kept = [a for a in attributes if a.partition(b"=")[0].strip(b" \t").lower() != b"domain"]
    return b";".join([cookie, *kept])


def _cookies_host_only(h: bytes) -> bytes:
    return _SET_COOKIE_LINE_RE.sub(lambda m: m[1] + cookie_without_domain(m[2]), h)


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
    traffic = b""
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
        elif lower == _TRAFFIC:
            traffic = value
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
    preview = _with_traffic_token(_host_target(host, domain), traffic)
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


_TRAFFIC = TRAFFIC_TOKEN_HEADER.encode()


def _with_traffic_token(target: PreviewTarget, value: bytes) -> PreviewTarget:
    """An E2B host's target with the request's traffic token (a host's own: unchanged)."""
    if not target.in_header:
        return target
    token = value.decode("ascii") if value.isascii() else ""
    return dataclasses.replace(target, token=token)


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
    traffic = b""
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
        elif lower == _TRAFFIC:
            traffic = value
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
    preview = _with_traffic_token(preview, traffic)
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
    rewritten = _COOKIE_DOMAIN_RE.search(h) is not None
    if rewritten:
        h = _cookies_host_only(h)
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
        return Response(status, length, False, h, not rewritten)
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
    headers = [
        (name, lower, cookie_without_domain(value) if lower == b"set-cookie" else value)
        for name, lower, value in headers
    ]
    if status == 101:
        out = [lines[0], *(name + b": " + value for name, _, value in headers)]
        return Response(101, 0, False, b"\r\n".join(out) + b"\r\n")
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
