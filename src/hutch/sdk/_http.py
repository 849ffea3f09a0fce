"""HTTP plumbing shared by the async and the sync client: headers, timeouts, error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from importlib import metadata

import httpcore
import httpx

from hutch.sdk._config import URL_ENV, ConnectionConfig
from hutch.sdk._exceptions import APIError, HutchConnectionError, api_error_from_body


def _version() -> str:
    try:
        return metadata.version("hutch")
    except metadata.PackageNotFoundError:
        return "0"


USER_AGENT = f"hutch-python/{_version()}"


def default_headers(config: ConnectionConfig) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if config.api_key:
        headers["Authorization"] = f"Bearer {config.api_key}"
    return headers


def unary_timeout(config: ConnectionConfig) -> httpx.Timeout:
    return httpx.Timeout(config.request_timeout, connect=config.connect_timeout)


# Past a command's own timeout, the server still needs a moment to kill it and send the result.
STREAM_TIMEOUT_GRACE = 30.0


def stream_timeout(config: ConnectionConfig, limit: float | None = None) -> httpx.Timeout:
    """Timeouts for a streamed answer whose producer stops on its own after ``limit`` seconds.

    NB: without a ``limit`` there is no read timeout: a command may be silent for an hour.
    With one, a stream silent for longer than the limit (plus grace) means a dead connection.
    """
    read = None if limit is None else limit + STREAM_TIMEOUT_GRACE
    return httpx.Timeout(
        connect=config.connect_timeout, read=read, write=config.request_timeout, pool=None
    )


def connection_limits() -> httpx.Limits:
    return httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=30.0)


@contextlib.contextmanager
def translate_transport_errors(config: ConnectionConfig) -> Iterator[None]:
    """Turn httpx's transport failures into :class:`HutchConnectionError` that says what to do."""
    # NB: httpcore's own errors come from the exec path, which drives httpcore without httpx
    # (sdk/_raw_http.py); they mean what httpx's of the same name mean.
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout, httpcore.ConnectError) as exc:
        raise HutchConnectionError(
            f"could not connect to the Hutch server at {config.base_url} ({exc or type(exc)}); "
            f"check {URL_ENV} (or base_url=) and that `hutch serve` is running there"
        ) from exc
    except (httpx.TimeoutException, httpcore.TimeoutException) as exc:
        raise HutchConnectionError(
            f"the Hutch server at {config.base_url} did not answer in time ({type(exc).__name__})"
        ) from exc
    except (
        httpx.TransportError,
        httpcore.NetworkError,
        httpcore.ProtocolError,
        httpcore.UnsupportedProtocol,
        httpcore.ProxyError,
    ) as exc:
        raise HutchConnectionError(
            f"the connection to the Hutch server at {config.base_url} failed: "
            f"{exc or type(exc).__name__}"
        ) from exc


# How often a create that found the server too busy to start it is sent again.
BUSY_RETRIES = 10


def busy_retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait before sending again, when the server answered 503 ``create_busy``
    (it made nothing: the request waited its turn among too many starts); else None."""
    if response.status_code != 503:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or error.get("code") != "create_busy":
        return None
    after = response.headers.get("retry-after", "")
    return min(float(after), 30.0) if after.isdigit() else 1.0


def error_from_response(response: httpx.Response) -> APIError:
    """The exception for a non-2xx answer whose body has been read."""
    return error_from_text(response.status_code, response.text)


def error_from_text(status: int, text: str) -> APIError:
    """The exception for a non-2xx answer with body ``text``."""
    try:
        body: object = json.loads(text) if text else None
    except ValueError:
        body = None
    return api_error_from_body(status, body, text)


def json_or_none(response: httpx.Response) -> object:
    """The JSON body of a 2xx answer, or ``None`` for an empty one (204)."""
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except ValueError as exc:
        raise HutchConnectionError(
            f"the server at {response.request.url} answered with a body that is not JSON; "
            "is that URL a Hutch server?"
        ) from exc


_SYNC_SCOPE = "sync"


def current_async_scope() -> object:
    """What a shared async client is bound to: the running event loop."""
    return asyncio.get_running_loop()


def current_sync_scope() -> object:
    """What a shared sync client is bound to: nothing (an ``httpx.Client`` is thread-safe)."""
    return _SYNC_SCOPE
