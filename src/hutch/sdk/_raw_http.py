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
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from hutch.sdk._config import ConnectionConfig
from hutch.sdk._http import default_headers

_DEFAULT_PORTS = {"http": 80, "https": 443}


class RawTarget:
    """The server's address and the fixed part of every request head, made once per client."""

    __slots__ = ("scheme", "host", "port", "prefix", "headers")

    def __init__(self, scheme: str, host: str, port: int, prefix: str, host_header: str) -> None:
        self.scheme = scheme.encode("ascii")
        self.host = host.encode("ascii")
        self.port = port
        self.prefix = prefix.encode("ascii")
        self.headers: list[tuple[bytes, bytes]] = [(b"Host", host_header.encode("ascii"))]

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
        return target

    def json_request(
        self, method: str, path: str, body: Any, timeout: httpx.Timeout
    ) -> httpcore.Request:
        """``method`` (``POST``) of ``body`` as JSON (encoded as httpx encodes it) to ``path``
        under the base URL."""
        content = json.dumps(
            body, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode()
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
