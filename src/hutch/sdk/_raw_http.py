"""The exec request without httpx's per-request work: a head built once, sent through httpcore.

py-spy on a client running 8 exec loops (docs/performance.md, branch ``exec11``): of the SDK's
~1 ms of CPU per exec, httpx's own layer — merging the URL with the base URL, building the
``Request`` and its header model, the auth and redirect wrappers, cookie extraction, the
``Response`` model and its byte-stream wrappers — took about a third; the rest was httpcore
and h11 (the connection pool and HTTP/1.1 itself), which stay. Commands go through
:class:`RawTarget` instead: the URL parts and the fixed headers are made once per client, a
request adds its Content-Length, and httpcore's pool (the one httpx itself would drive) sends
it. Everything a caller sees is the same: the headers (key, user agent, JSON), the timeouts
(``stream_timeout``), the errors (``translate_transport_errors`` knows httpcore's too, and an
error answer maps through the same table).

Where httpx would do more than this, the client keeps using httpx (``RawTarget.for_config``
returns ``None``): a proxy from the environment (``HTTP_PROXY`` and the like, which httpx
honours), credentials in the URL (basic auth), a host name that is not ASCII (IDNA).
"""

from __future__ import annotations

import json
import ssl
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpcore
import httpx

from hutch.sdk._config import ConnectionConfig
from hutch.sdk._http import connection_limits, default_headers
from hutch.sdk._http1 import Http1Pool

_DEFAULT_PORTS = {"http": 80, "https": 443}
_UNSAFE = frozenset(b"\r\n\0")


class RawTarget:
    """The server's address and the fixed part of every request head, made once per client."""

    __slots__ = ("scheme", "host", "port", "prefix", "headers", "_fixed")

    def __init__(self, scheme: str, host: str, port: int, prefix: str, host_header: str) -> None:
        self.scheme = scheme.encode("ascii")
        self.host = host.encode("ascii")
        self.port = port
        self.prefix = prefix.encode("ascii")
        self.headers: list[tuple[bytes, bytes]] = [(b"Host", host_header.encode("ascii"))]
        self._fixed = b""  # the header lines of every request, once they are all known

    @classmethod
    def for_config(
        cls, config: ConnectionConfig, environ_proxies: Mapping[str, str] | None = None
    ) -> RawTarget | None:
        """The target for ``config``'s server, or None where httpx must do the work (see the
        module's docstring). ``environ_proxies`` stands for ``urllib.request.getproxies()``."""
        proxies = urllib.request.getproxies() if environ_proxies is None else environ_proxies
        if any(name != "no" for name in proxies):
            return None
        parts = urlsplit(config.base_url)
        host = parts.hostname
        if (
            host is None
            or parts.username is not None
            or parts.password is not None
            or not parts.netloc.isascii()
            or parts.query
            or parts.fragment
        ):
            return None
        try:
            port = parts.port or _DEFAULT_PORTS[parts.scheme]
        except ValueError:  # a port that is not a number: let httpx say so
            return None
        target = cls(parts.scheme, host, port, parts.path.rstrip("/"), parts.netloc)
        target.headers += [
            (name.encode("ascii"), value.encode("latin-1"))
            for name, value in default_headers(config).items()
        ]
        target.headers.append((b"Content-Type", b"application/json"))
        if any(_UNSAFE & set(value) for _, value in target.headers):
            return None  # a CR or LF in the key would end the head early: httpx refuses it
        target._fixed = b"".join(name + b": " + value + b"\r\n" for name, value in target.headers)
        return target

    def head(self, method: str, path: str, content_length: int) -> bytes:
        """The request head of ``method`` to ``path`` under the base URL (sdk/_http1.py)."""
        if not (path.isascii() and path.isprintable()) or " " in path:
            # h11 refuses the same (a request target is visible ASCII).
            raise httpcore.LocalProtocolError(f"illegal characters in the path {path!r}")
        return b"%s %s%s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n" % (
            method.encode("ascii"),
            self.prefix,
            path.encode("ascii"),
            self._fixed,
            content_length,
        )

    @staticmethod
    def json_body(body: Any) -> bytes:
        """``body`` as JSON, encoded as httpx encodes it."""
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()

    def json_request(
        self, method: str, path: str, body: Any, timeout: httpx.Timeout
    ) -> httpcore.Request:
        """``method`` (``POST``) of ``body`` as JSON (encoded as httpx encodes it) to ``path``
        under the base URL."""
        content = self.json_body(body)
        url = httpcore.URL(
            scheme=self.scheme, host=self.host, port=self.port, target=self.prefix + path.encode()
        )
        return httpcore.Request(
            method.encode("ascii"),
            url,
            headers=[*self.headers, (b"Content-Length", str(len(content)).encode("ascii"))],
            content=content,
            extensions={"timeout": timeout.as_dict()},
        )


def ssl_context_for(target: RawTarget) -> ssl.SSLContext | None:
    """The TLS settings httpx would use (its defaults, ``SSL_CERT_FILE``/``SSL_CERT_DIR``)."""
    return httpx.create_ssl_context() if target.scheme == b"https" else None


def _httpcore_options(target: RawTarget) -> dict[str, Any]:
    limits = connection_limits()  # those of the client's httpx pool
    return {
        "ssl_context": ssl_context_for(target),
        "max_connections": limits.max_connections,
        "max_keepalive_connections": limits.max_keepalive_connections,
        "keepalive_expiry": limits.keepalive_expiry,
    }


class RawResponse(Protocol):
    """What the client reads of an answer: httpcore's, or sdk/_http1.py's."""

    status: int

    def read(self) -> bytes: ...

    def iter_stream(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


# The async client's answers are httpcore's (scripts/unasync.py makes this RawResponse).
AsyncRawResponse = httpcore.Response


class AsyncRawPool:
    """The async client's connections for :class:`RawTarget` requests: httpcore's pool."""

    def __init__(self, target: RawTarget) -> None:
        self._pool = httpcore.AsyncConnectionPool(**_httpcore_options(target))

    async def open(
        self, target: RawTarget, method: str, path: str, body: Any, timeouts: httpx.Timeout
    ) -> AsyncRawResponse:
        """Send ``method`` of ``body`` (JSON) to ``path``; the answer once its head is in."""
        return await self._pool.handle_async_request(
            target.json_request(method, path, body, timeouts)
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


class RawPool:
    """The sync client's connections for :class:`RawTarget` requests: sdk/_http1.py's for
    http, httpcore's for https (TLS stays httpcore's)."""

    def __init__(self, target: RawTarget) -> None:
        self._tls: httpcore.ConnectionPool | None = None
        self._plain: Http1Pool | None = None
        if target.scheme == b"https":
            self._tls = httpcore.ConnectionPool(**_httpcore_options(target))
        else:
            limits = connection_limits()
            self._plain = Http1Pool(
                target.host.decode("ascii"),
                target.port,
                max_connections=limits.max_connections or 100,
                max_keepalive=limits.max_keepalive_connections or 20,
                keepalive_expiry=limits.keepalive_expiry or 5.0,
            )

    def open(
        self, target: RawTarget, method: str, path: str, body: Any, timeouts: httpx.Timeout
    ) -> RawResponse:
        """Send ``method`` of ``body`` (JSON) to ``path``; the answer once its head is in."""
        if self._plain is None:
            assert self._tls is not None
            return self._tls.handle_request(target.json_request(method, path, body, timeouts))
        content = target.json_body(body)
        return self._plain.send(
            target.head(method, path, len(content)),
            content,
            connect=timeouts.connect,
            write=timeouts.write,
            read=timeouts.read,
        )

    def close(self) -> None:
        if self._tls is not None:
            self._tls.close()
        if self._plain is not None:
            self._plain.close()
