"""The egress proxy's request handling without sandboxes: what goes upstream, what comes back.

The proxy is driven as the ASGI app it is, with the upstream answered by an httpx
MockTransport; the real-sandbox path (nftables, source addresses, the agents image) is
tests/test_egress.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from hutch.node._egress import EgressProxy, upstream_client
from hutch.server._models import EgressSecret

KEY = "sk-ant-unit-" + "9" * 20
RULE = EgressSecret(host="api.anthropic.com", header="x-api-key", secret="ANTHROPIC_API_KEY")


class _Upstream:
    """Records each request; echoes TRACE like many servers do, sets a cookie on /login."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.method == "TRACE":
            echo = "".join(f"{k}: {v}\n" for k, v in request.headers.items())
            return httpx.Response(200, stream=httpx.ByteStream(echo.encode()))
        if request.url.path == "/login":
            return httpx.Response(
                200,
                headers={"set-cookie": "session=of-sandbox-a; Path=/"},
                stream=httpx.ByteStream(b"ok"),
            )
        # A streamed body, as a real upstream's (the proxy relays it with aiter_raw).
        return httpx.Response(200, stream=httpx.ByteStream(b"ok"))


def _proxy(tmp_path: Path, upstream: _Upstream) -> EgressProxy:
    proxy = EgressProxy(None, None, None, tmp_path)  # type: ignore[arg-type]
    proxy._client = upstream_client(httpx.MockTransport(upstream))
    # Two sandboxes, each on its own gateway, both with the rule.
    proxy._by_address = {"10.0.0.2": ("sb-a", "10.0.0.1"), "10.0.0.6": ("sb-b", "10.0.0.5")}
    proxy._rules = lambda _id: ({RULE.host: RULE}, {"ANTHROPIC_API_KEY": KEY})  # type: ignore[method-assign]
    return proxy


def _call(
    proxy: EgressProxy, client: str, gateway: str, method: str, raw_path: bytes
) -> tuple[int, bytes]:
    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": raw_path.decode(),
        "raw_path": raw_path,
        "query_string": b"",
        "headers": [(b"x-api-key", b"forged"), (b"content-type", b"application/json")],
        "client": (client, 40000),
        "server": (gateway, 9999),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(proxy(scope, receive, send))
    status = sent[0]["status"]
    return status, b"".join(m.get("body", b"") for m in sent[1:])


def test_trace_is_refused_before_the_key_is_set(tmp_path: Path) -> None:
    upstream = _Upstream()
    proxy = _proxy(tmp_path, upstream)
    for method in ("TRACE", "TRACK", "CONNECT"):
        status, body = _call(proxy, "10.0.0.2", "10.0.0.1", method, b"/api.anthropic.com/")
        assert status == 405 and KEY.encode() not in body
    assert upstream.requests == []


def test_a_cookie_set_for_one_sandbox_never_reaches_another(tmp_path: Path) -> None:
    upstream = _Upstream()
    proxy = _proxy(tmp_path, upstream)
    assert _call(proxy, "10.0.0.2", "10.0.0.1", "GET", b"/api.anthropic.com/login")[0] == 200
    assert _call(proxy, "10.0.0.6", "10.0.0.5", "GET", b"/api.anthropic.com/v1/models")[0] == 200
    assert "cookie" not in upstream.requests[-1].headers
    assert upstream.requests[-1].headers["x-api-key"] == KEY  # the forged one was replaced
    assert upstream.requests[-1].headers.get_list("x-api-key") == [KEY]


def test_the_path_is_forwarded_as_sent_and_stays_on_the_host(tmp_path: Path) -> None:
    upstream = _Upstream()
    proxy = _proxy(tmp_path, upstream)
    assert _call(proxy, "10.0.0.2", "10.0.0.1", "GET", b"/api.anthropic.com/a%2Fb%3Fc")[0] == 200
    sent = upstream.requests[-1].url
    assert sent.host == "api.anthropic.com" and sent.raw_path == b"/a%2Fb%3Fc"
    for path in (b"/api.anthropic.com@evil.test/x", b"/evil.test/x", b"/%61pi.anthropic.com/x"):
        status, _ = _call(proxy, "10.0.0.2", "10.0.0.1", "GET", path)
        assert status == 403, path
    assert len(upstream.requests) == 1
    # A path httpx cannot make a URL of is a 400, not a 500.
    status, body = _call(proxy, "10.0.0.2", "10.0.0.1", "GET", b"/api.anthropic.com/a\x00b")
    assert status == 400 and KEY.encode() not in body


def test_internal_upstream_hosts_are_named() -> None:
    from hutch.server._internal_hosts import internal_host_reason

    for host in (
        "localhost",
        "a.b.localhost",
        "127.0.0.1",
        "127.1",
        "0x7f.1",
        "2130706433",
        "0",
        "10.1.2.3",
        "192.168.0.1",
        "172.16.0.1",
        "100.64.0.1",
        "169.254.169.254",
        "::1",
        "metadata.google.internal",
        "nas.local",
        "router.home.arpa",
        "gateway",
    ):
        assert internal_host_reason(host) is not None, host
    for host in ("api.anthropic.com", "api.openai.com", "8.8.8.8", "example.com"):
        assert internal_host_reason(host) is None, host
