"""The egress proxy's real TLS path: certificate checks against the trust store, for real.

Every other egress test points the upstream at an http:// URL (the server's test seam). Here
the upstream is an https:// server on loopback whose certificate a local CA signed; the
proxy's own client (`upstream_client()`, the one production uses) trusts that CA only through
the system trust store's override (SSL_CERT_FILE), as a site's TLS-inspecting CA would be.
A certificate from another CA, or for another name, must stop the request before the key
is sent. No root and no sandbox: the proxy is driven as the ASGI app it is.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hutch.node import EgressProxy, upstream_client
from hutch.server._models import EgressSecret
from tests.support.authority import Authority

KEY = "sk-ant-tls-" + "T5" * 16
RULE = EgressSecret(host="api.anthropic.com", header="x-api-key", secret="ANTHROPIC_API_KEY")
SANDBOX, GATEWAY = "10.0.0.2", "10.0.0.1"


class _TLSUpstream:
    """An HTTPS server on loopback that records what reached it: SNI names and requests."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.server_names: list[str | None] = []
        self.requests: list[dict[str, Any]] = []
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                upstream.requests.append(
                    {
                        "path": self.path,
                        "x-api-key": self.headers.get_all("x-api-key"),
                        "body": body.decode(),
                        "cipher": self.connection.cipher()[0],  # type: ignore[attr-defined]
                    }
                )
                answer = json.dumps({"answered": "over tls"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)

        def note_sni(_sock: Any, name: str | None, _ctx: Any) -> None:
            self.server_names.append(name)

        context.sni_callback = note_sni
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)


@pytest.fixture()
def trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Authority:
    """The local CA, trusted the way a system store is overridden (OpenSSL's SSL_CERT_FILE)."""
    ca = Authority("hutch-test-ca")
    bundle = tmp_path / "trusted-ca.pem"
    bundle.write_bytes(ca.pem())
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    return ca


@pytest.fixture()
def upstreams() -> Iterator[list[_TLSUpstream]]:
    made: list[_TLSUpstream] = []
    yield made
    for upstream in made:
        upstream.close()


def _through_proxy(tmp_path: Path, upstream: _TLSUpstream, host: str) -> tuple[int, bytes]:
    """POST one request as the sandbox at SANDBOX would, through the real upstream client."""
    proxy = EgressProxy(
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        tmp_path,
        upstreams={RULE.host: f"https://{host}:{upstream.port}"},
    )
    proxy._by_address = {SANDBOX: ("sb-a", GATEWAY)}
    proxy._rules = lambda _id: ({RULE.host: RULE}, {"ANTHROPIC_API_KEY": KEY})  # type: ignore[method-assign]
    body = b'{"model": "claude-x"}'
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/api.anthropic.com/v1/messages",
        "raw_path": b"/api.anthropic.com/v1/messages",
        "query_string": b"",
        "headers": [(b"x-api-key", b"forged"), (b"content-type", b"application/json")],
        "client": (SANDBOX, 40000),
        "server": (GATEWAY, 9999),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def run() -> None:
        proxy._client = upstream_client()  # NB: made here, so it reads SSL_CERT_FILE now
        try:
            await proxy(scope, receive, send)
        finally:
            await proxy._client.aclose()

    asyncio.run(run())
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_a_certificate_from_the_trusted_ca_carries_the_key(
    tmp_path: Path, trusted: Authority, upstreams: list[_TLSUpstream]
) -> None:
    upstreams.append(_TLSUpstream(*trusted.issue(tmp_path, "localhost")))
    status, body = _through_proxy(tmp_path, upstreams[0], "localhost")
    assert status == 200, body
    assert json.loads(body) == {"answered": "over tls"}
    [seen] = upstreams[0].requests
    # Over TLS, with the name in SNI, the forged key replaced by the real one, the body as sent.
    assert upstreams[0].server_names == ["localhost"]
    assert seen["cipher"] and seen["path"] == "/v1/messages"
    assert seen["x-api-key"] == [KEY]
    assert seen["body"] == '{"model": "claude-x"}'


def test_a_certificate_from_another_ca_is_refused_before_the_key_is_sent(
    tmp_path: Path, trusted: Authority, upstreams: list[_TLSUpstream]
) -> None:
    rogue = Authority("rogue-ca")  # a valid chain, just not one the host trusts
    upstreams.append(_TLSUpstream(*rogue.issue(tmp_path, "localhost")))
    status, body = _through_proxy(tmp_path, upstreams[0], "localhost")
    assert status == 502, body
    assert json.loads(body)["error"]["code"] == "egress_upstream_failed"
    assert KEY.encode() not in body
    assert upstreams[0].requests == []  # the handshake failed: no request, so no key, went out


def test_a_certificate_for_another_name_is_refused(
    tmp_path: Path, trusted: Authority, upstreams: list[_TLSUpstream]
) -> None:
    # Signed by the trusted CA, but for a name the proxy did not ask for.
    upstreams.append(_TLSUpstream(*trusted.issue(tmp_path, "other.test")))
    status, body = _through_proxy(tmp_path, upstreams[0], "localhost")
    assert status == 502, body
    assert json.loads(body)["error"]["code"] == "egress_upstream_failed"
    assert upstreams[0].requests == []
