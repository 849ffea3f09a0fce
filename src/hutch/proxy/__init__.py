"""The preview data plane: `http://{port}-{sandbox_id}-{token}.{preview_domain}:{port}/` requests
taken over at the API's port and relayed byte for byte to a sandbox's exposed port.

Modules, in the order they depend on each other: `_errors` (refusals), `_routes` (the route
table: preview host -> sandbox address), `_http1` (strict HTTP/1.1 head parsing), `_chunked`
(chunked framing), `_relay` (the two asyncio protocols per connection), `_front` (uvicorn's
protocol, subclassed). The first four are pure. The native data plane: `_haproxy_config`
(HAProxy's config and map entries, pure), `_haproxy_admin` (its admin socket),
`_native` (the HAProxy child process and its live route map). It imports uvicorn and
nothing of Hutch's: the API tells it which ports are exposed and how to reach a sandbox
(`PreviewRoutes`).
"""

from hutch.proxy._chunked import ChunkedFraming
from hutch.proxy._errors import BadRequest
from hutch.proxy._front import RESET_ON_CLOSE, front_protocol
from hutch.proxy._haproxy_admin import Activity as PreviewActivity
from hutch.proxy._haproxy_config import (
    NativeProxyConfig,
    route_key,
    route_key_by_header,
    route_value,
)
from hutch.proxy._http1 import Request, Response, origin_form, parse_request, parse_response
from hutch.proxy._native import NativeProxy, haproxy_binary
from hutch.proxy._relay import PreviewConnection, Upstream
from hutch.proxy._routes import (
    MAX_HEAD,
    MAX_HEADERS,
    MAX_LINE,
    TOKEN_BYTES,
    TRAFFIC_TOKEN_HEADER,
    PreviewRoutes,
    PreviewTarget,
    new_token,
    preview_target,
    preview_url,
    split_host,
)

__all__ = [
    "MAX_HEAD",
    "MAX_HEADERS",
    "MAX_LINE",
    "RESET_ON_CLOSE",
    "TOKEN_BYTES",
    "TRAFFIC_TOKEN_HEADER",
    "BadRequest",
    "ChunkedFraming",
    "NativeProxy",
    "NativeProxyConfig",
    "PreviewActivity",
    "PreviewConnection",
    "PreviewRoutes",
    "PreviewTarget",
    "Request",
    "Response",
    "Upstream",
    "front_protocol",
    "haproxy_binary",
    "new_token",
    "origin_form",
    "parse_request",
    "parse_response",
    "preview_target",
    "preview_url",
    "route_key",
    "route_key_by_header",
    "route_value",
    "split_host",
]
