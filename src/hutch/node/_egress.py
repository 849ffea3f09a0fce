"""Egress header injection: keys that never enter the sandbox.

A sandbox created with ``egress_secrets=[{"host": "api.anthropic.com", "header": "x-api-key",
"secret": "ANTHROPIC_API_KEY"}]`` never gets that secret. Its processes see
``ANTHROPIC_API_KEY=hutch-egress-injected`` (so CLIs that insist on the variable start) and
``ANTHROPIC_BASE_URL=http://<gateway>:<port>/api.anthropic.com``: this proxy, listening on the
host side of the sandbox's own veth. For each request it

- listens only on the gateway addresses of sandboxes with rules (one listener each, never on
  every address), finds the sandbox by the connection's SOURCE address and checks that it came
  in on that sandbox's own gateway: never by anything the sandbox sends (nftables only lets a
  sandbox with egress secrets reach this port, on its own gateway; see runtime/container/_nft.py);
- takes the first path segment as the upstream host, refuses (403) a host that is not one of
  that sandbox's rules;
- drops hop-by-hop headers and every header of the rule's name the sandbox sent, sets that
  header to the decrypted secret, and forwards over HTTPS with certificate checks;
- streams the response back as it arrives (server-sent events unbuffered).

The secret is decrypted per request from the state database; it is not logged and never sent
to the sandbox. For tests, ``HUTCH_EGRESS_UPSTREAMS="api.anthropic.com=http://127.0.0.1:8765"``
in the SERVER's environment sends a host elsewhere (nothing the sandbox sends can do that).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
from collections.abc import Mapping
from http.cookiejar import DefaultCookiePolicy
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from hutch.node._egress_rules import RULES_NAME, EgressRule, read_rules

if TYPE_CHECKING:
    import httpx
    import uvicorn
    from starlette.types import Receive, Scope, Send
    from uvicorn.server import ServerState

    from hutch.runtime import Runtime

log = logging.getLogger("hutch.egress")

PLACEHOLDER = "hutch-egress-injected"
MAX_REQUEST_BYTES = 32 * 1024 * 1024
REFUSED_METHODS = frozenset({"TRACE", "TRACK", "CONNECT"})
HOP_BY_HOP = frozenset(
    "connection keep-alive proxy-authenticate proxy-authorization proxy-connection te trailer "
    "transfer-encoding upgrade host content-length".split()
)


def parse_upstreams(text: str) -> dict[str, str]:
    """``host=http://127.0.0.1:8765,host2=https://...`` (server config, tests only)."""
    upstreams: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        host, sep, url = item.partition("=")
        if not sep or not url.startswith(("http://", "https://")):
            raise ValueError(f"HUTCH_EGRESS_UPSTREAMS: {item!r} is not host=http(s)://...")
        upstreams[host.strip().lower()] = url.strip().rstrip("/")
    return upstreams


def agent_env(values: Mapping[str, str], gateway: str | None, port: int | None) -> dict[str, str]:
    """What the agent gets of the opened secrets: egress secrets replaced by the placeholder,
    the base-URL variables pointing at this proxy (once the gateway is known)."""
    env = dict(values)
    raw = env.pop(RULES_NAME, None)
    if raw is None:
        return env
    for rule in read_rules(raw):
        env[rule.secret] = PLACEHOLDER
        name = rule.url_env()
        if name is not None and gateway is not None and port is not None:
            env[name] = f"http://{gateway}:{port}/{rule.host}"
    return env


class SealedSecrets(Protocol):
    """Where a sandbox's sealed secrets are kept (the API's store)."""

    def get_secrets(self, sandbox_id: str) -> dict[str, bytes]: ...


class SecretOpener(Protocol):
    """What unseals them (the API's secret box)."""

    def open_all(self, sealed: Mapping[str, bytes]) -> dict[str, str]: ...


class EgressRegistry(Protocol):
    """What the API's services ask of the egress proxy: on one host this process's
    `EgressProxy`; on a cluster the proxy of the sandbox's node, through the replica."""

    async def register(self, sandbox_id: str, runtime_id: str) -> bool:
        """Let the running sandbox use the proxy if it has rules; whether it has."""
        ...

    def forget(self, sandbox_id: str) -> None: ...

    def port_for(self, sandbox_id: str) -> int | None:
        """The proxy's port on the sandbox's gateway (None: not known now)."""
        ...


class EgressProxy:
    """The proxy of one server: its listening socket, and which sandbox address is whose."""

    def __init__(
        self,
        store: SealedSecrets,
        box: SecretOpener,
        runtime: Runtime,
        home: Path,
        *,
        port: int = 0,
        upstreams: Mapping[str, str] | None = None,
    ) -> None:
        self._store = store
        self._box = box
        self._runtime = runtime
        self._port_file = home / "egress-port"
        self._wanted_port = port
        self._upstreams = dict(upstreams or {})
        self.port: int | None = None
        # sandbox address -> (sandbox id, its gateway address)
        self._by_address: dict[str, tuple[str, str]] = {}
        self._listeners: dict[str, asyncio.Server] = {}  # gateway address -> its listener
        self._config: uvicorn.Config | None = None
        self._state: ServerState | None = None
        self._client: httpx.AsyncClient | None = None
        # Request bodies are read whole before the key is added (so a body can be retried
        # and sized): at most this many at once, so memory stays bounded (8 x 32 MiB).
        self._reading = asyncio.Semaphore(8)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, running: list[tuple[str, str]]) -> None:
        """Choose the port, then re-register `running` (sandbox id, runtime id) with rules."""
        import uvicorn
        from uvicorn.server import ServerState

        self.port = self._choose_port()
        self._port_file.write_text(str(self.port))
        self._client = upstream_client()
        self._config = uvicorn.Config(
            self,
            lifespan="off",
            access_log=False,
            log_level="warning",
            server_header=False,
            date_header=False,
            proxy_headers=False,
        )
        self._config.load()
        self._state = ServerState()
        for sandbox_id, runtime_id in running:
            try:
                await self.register(sandbox_id, runtime_id)
            except Exception as exc:
                log.error("egress rules of sandbox %s not restored: %s", sandbox_id, exc)

    def _choose_port(self) -> int:
        if self._wanted_port:
            return self._wanted_port
        # The port a previous run used, so running sandboxes' base URLs stay right.
        with contextlib.suppress(OSError, ValueError):
            return int(self._port_file.read_text())
        with socket.socket() as probe:
            probe.bind(("0.0.0.0", 0))
            return int(probe.getsockname()[1])

    async def _listen(self, gateway: str) -> None:
        """A listener on this one gateway address (never on every address: the proxy is
        for sandboxes only, not for the host's networks)."""
        if gateway in self._listeners or self._config is None or self._state is None:
            return
        config, state = self._config, self._state
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((gateway, self.port or 0))
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise OSError(
                f"the egress proxy cannot listen on {gateway}:{self.port}: {exc}"
            ) from exc

        def protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=state, app_state={}
            )

        loop = asyncio.get_running_loop()
        self._listeners[gateway] = await loop.create_server(protocol, sock=sock)

    def _unlisten(self, gateway: str) -> None:
        server = self._listeners.pop(gateway, None)
        if server is not None:
            server.close()

    async def stop(self) -> None:
        for gateway in list(self._listeners):
            self._unlisten(gateway)
        if self._state is not None:
            for connection in list(self._state.connections):
                connection.shutdown()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- sandboxes ------------------------------------------------------------------------

    def port_for(self, sandbox_id: str) -> int | None:
        return self.port  # one proxy, one port, on every gateway of this host

    def has_rules(self, sandbox_id: str) -> bool:
        return RULES_NAME in self._store.get_secrets(sandbox_id)

    async def register(self, sandbox_id: str, runtime_id: str) -> bool:
        """Open the gateway port to a sandbox with rules and remember its address."""
        if self.port is None or not self.has_rules(sandbox_id):
            return False
        address, gateway = await self._runtime.open_gateway_port(runtime_id, self.port)
        self._by_address[address] = (sandbox_id, gateway)
        await self._listen(gateway)
        return True

    def forget(self, sandbox_id: str) -> None:
        for address, (owner, gateway) in list(self._by_address.items()):
            if owner == sandbox_id:
                del self._by_address[address]
                self._unlisten(gateway)

    def _rules(self, sandbox_id: str) -> tuple[dict[str, EgressRule], dict[str, str]]:
        values = self._box.open_all(self._store.get_secrets(sandbox_id))
        raw = values.pop(RULES_NAME, "[]")
        rules = read_rules(raw)
        return {r.host: r for r in rules}, values

    # -- the proxy (ASGI) -----------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        client, server = scope.get("client"), scope.get("server")
        owner = self._by_address.get(client[0]) if client else None
        if owner is None or server is None or server[0] != owner[1]:
            # NB: not a registered sandbox on its own gateway (another sandbox, the host's
            # network): nothing about the rules is said.
            await _error(send, 403, "egress_forbidden", "this address may not use Hutch's egress")
            return
        sandbox_id = owner[0]
        if scope["method"] in REFUSED_METHODS:
            # TRACE echoes the request, the injected header included, back to the sandbox.
            await _error(
                send, 405, "method_not_allowed", f"{scope['method']} is not forwarded by egress"
            )
            return
        # The path as sent (still percent-encoded), so %2F or %3F in it stay data upstream.
        raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        host, _, rest = raw_path.lstrip("/").partition("/")
        try:
            rules, values = self._rules(sandbox_id)
        except Exception:
            await _error(send, 403, "egress_forbidden", "this sandbox has no egress secrets")
            return
        rule = rules.get(host.lower())
        if rule is None:
            await _error(
                send,
                403,
                "egress_host_not_configured",
                f"host {host!r} is not one of this sandbox's egress_secrets hosts "
                f"({', '.join(sorted(rules))}); the URL is http://<gateway>:<port>/<host>/<path>",
            )
            return
        async with self._reading:
            body = await _read_body(receive)
        if body is None:
            await _error(send, 413, "body_too_large", "egress requests are limited to 32 MiB")
            return
        base = self._upstreams.get(rule.host, f"https://{rule.host}")
        url = f"{base}/{rest}"
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        headers = [
            (k, v)
            for k, v in ((k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"])
            if k.lower() not in HOP_BY_HOP and k.lower() != rule.header
        ]
        headers.append((rule.header, rule.prefix + values[rule.secret]))
        await self._forward(send, scope["method"], url, headers, body, sandbox_id, rule.host)

    async def _forward(
        self,
        send: Send,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes,
        sandbox_id: str,
        host: str,
    ) -> None:
        import httpx

        assert self._client is not None
        try:
            request = self._client.build_request(method, url, headers=headers, content=body)
        except (httpx.InvalidURL, ValueError):
            await _error(send, 400, "invalid_request", "the request's path is not a valid URL")
            return
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            log.warning("egress of %s to %s failed: %s", sandbox_id, host, type(exc).__name__)
            await _error(send, 502, "egress_upstream_failed", f"{host} could not be reached")
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (k, v)
                        for k, v in response.headers.raw
                        if k.lower().decode("latin-1") not in HOP_BY_HOP - {"content-length"}
                    ],
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        except httpx.HTTPError as exc:
            log.warning("egress of %s from %s broke: %s", sandbox_id, host, type(exc).__name__)
        finally:
            await response.aclose()


def upstream_client(transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """The client of every upstream request (`transport`: tests only).

    Certificate checks against the system's CA store (a site's TLS-inspecting CA too), no
    redirects followed, and no cookie jar: one client serves every sandbox, and a cookie that
    one upstream answer set must not ride along on another sandbox's requests (a sandbox's
    own Cookie header is forwarded like any other).
    """
    import httpx

    client = httpx.AsyncClient(
        verify=ssl.create_default_context(),
        timeout=httpx.Timeout(30.0, read=600.0),
        follow_redirects=False,
        trust_env=False,
        transport=transport,
    )
    # Set on the client's own jar (a jar passed as `cookies=` is copied, its policy lost).
    client.cookies.jar.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    return client


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_REQUEST_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _error(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
