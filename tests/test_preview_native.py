"""The native preview data plane (HAProxy) against real local upstreams: live route changes
that leave other connections alone, a proxy that is started again with its routes when it
dies, smuggling shapes, the fallback for misses, TLS with HTTP/2 from a wildcard cert."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from hutch.proxy import (
    NativeProxy,
    NativeProxyConfig,
    haproxy_binary,
    route_key,
    route_value,
)
from hutch.proxy._haproxy_admin import parse_activity, sessions_to
from hutch.proxy._haproxy_config import render_config
from hutch.server import ServerConfig
from tests._server import free_port, serve_refusal

HAPROXY = haproxy_binary()
pytestmark = [
    pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed"),
    pytest.mark.root,  # as root haproxy drops to its own user (RUN_AS)
]
TOKEN = "ab" * 16
# As the server runs it: dropped to Debian's `haproxy` user after start.
# (Only root can switch users: an unprivileged run keeps its own.)
RUN_AS = (
    "haproxy" if os.geteuid() == 0 and Path("/etc/passwd").read_text().count("\nhaproxy:") else None
)


def host_for(port: int, sandbox: str = "sb-1", token: str = TOKEN) -> str:
    return f"{port}-{sandbox}-{token}.localhost"


class Upstream:
    """A tiny HTTP/1.1 server: `/stream` sends a chunk every 50 ms until closed; anything
    else answers its name, the request line and the headers it got."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.requests: list[bytes] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                if head.startswith(b"GET /stream"):
                    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    while True:
                        writer.write(b"5\r\ntick\n\r\n")
                        await writer.drain()
                        await asyncio.sleep(0.05)
                lower = head.lower()
                if b"content-length:" in lower:
                    length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
                    await reader.readexactly(length)
                elif b"transfer-encoding: chunked" in lower:
                    await reader.readuntil(b"0\r\n\r\n")
                body = self.name.encode() + b"\n" + head
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        assert self.server is not None
        self.server.close()


@pytest.fixture()
async def native(tmp_path: Path) -> AsyncIterator[tuple[NativeProxy, Upstream, Upstream]]:
    assert HAPROXY is not None
    sandbox, fallback = Upstream("sandbox"), Upstream("fallback")
    await sandbox.start()
    await fallback.start()
    config = NativeProxyConfig(
        "127.0.0.1",
        free_port(),
        f"127.0.0.1:{fallback.port}",
        tmp_path,
        run_as=RUN_AS,
        max_files=resource.getrlimit(resource.RLIMIT_NOFILE)[1],  # as the server does
    )
    proxy = NativeProxy(config, HAPROXY)
    await proxy.start()
    yield proxy, sandbox, fallback
    await proxy.stop()
    sandbox.close()
    fallback.close()


def routes(upstream: Upstream, *ports: int) -> dict[str, str]:
    # Each preview port of the "sandbox" goes to the one local upstream.
    return {route_key(host_for(p)): route_value("127.0.0.1", upstream.port, "sb-1") for p in ports}


async def get(proxy: NativeProxy, host: str, path: str = "/") -> httpx.Response:
    async with httpx.AsyncClient() as client:
        url = f"http://127.0.0.1:{proxy.config.port}{path}"
        return await client.get(url, headers={"Host": f"{host}:{proxy.config.port}"})


def test_haproxy_accepts_the_generated_config(tmp_path: Path) -> None:
    assert HAPROXY is not None
    for pem in (None, tmp_path / "x.pem"):
        config = NativeProxyConfig("127.0.0.1", 1, "127.0.0.1:2", tmp_path, pem)
        if pem is not None:
            make_wildcard_cert(tmp_path, "preview.test", pem)
        config.config_path.write_text(render_config(config))
        config.map_path.write_text("")
        config.unreachable_path.write_bytes(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
        check = subprocess.run([HAPROXY, "-c", "-f", str(config.config_path)], capture_output=True)
        assert check.returncode == 0, check.stderr.decode()


@pytest.mark.parametrize("threads", [1, 3])
async def test_the_proxy_relays_on_the_threads_configured(tmp_path: Path, threads: int) -> None:
    # One thread by default (HUTCH_PREVIEW_THREADS): on a 2-core host HAProxy's default of one
    # per core made node's rate through it 3-4x lower (docs/preview.md).
    assert HAPROXY is not None
    upstream = Upstream("sandbox")
    await upstream.start()
    config = NativeProxyConfig(
        "127.0.0.1", free_port(), "127.0.0.1:1", tmp_path, run_as=RUN_AS, threads=threads
    )
    proxy = NativeProxy(config, HAPROXY)
    await proxy.start()
    try:
        await proxy.set_routes("sb-1", routes(upstream, 8080))
        assert (await get(proxy, host_for(8080))).text.startswith("sandbox\n")
        assert proxy.pid is not None
        assert _worker_threads(proxy.pid) == threads
    finally:
        await proxy.stop()
        upstream.close()


async def test_keep_alive_clients_keep_their_upstream_connections_across_routes(
    native: tuple[NativeProxy, Upstream, Upstream],
) -> None:
    # One `server 0.0.0.0:0` serves every route: with HAProxy's shared idle pool, once it held
    # connections to one port, requests to another opened (and dropped) a connection each.
    proxy, first, _ = native
    second = Upstream("second")
    await second.start()
    try:
        await proxy.set_routes(
            "sb-1",
            {
                route_key(host_for(8080)): route_value("127.0.0.1", first.port, "sb-1"),
                route_key(host_for(8081)): route_value("127.0.0.1", second.port, "sb-1"),
            },
        )

        async def client(port: int, name: str) -> None:
            url = f"http://127.0.0.1:{proxy.config.port}/"
            headers = {"Host": f"{host_for(port)}:{proxy.config.port}"}
            async with httpx.AsyncClient(limits=httpx.Limits(max_connections=1)) as c:
                for _ in range(40):
                    assert (await c.get(url, headers=headers)).text.startswith(name + "\n")

        for port, upstream in ((8080, first), (8081, second), (8080, first)):
            before = upstream.connections
            await asyncio.gather(*(client(port, upstream.name) for _ in range(8)))
            # 8 keep-alive clients: 8 upstream connections (not one per request).
            assert upstream.connections - before <= 8, (port, upstream.connections - before)
    finally:
        second.close()


def _worker_threads(master: int) -> int:
    """The threads of HAProxy's one worker (the master's child: master-worker mode)."""
    (worker,) = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return len(list(Path(f"/proc/{worker}/task").iterdir()))


def test_a_bad_thread_count_stops_serve_with_the_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    says = "HUTCH_PREVIEW_THREADS must be a whole number from 1 to 64"
    for bad in ("0", "65", "two", "-1"):
        monkeypatch.setenv("HUTCH_PREVIEW_THREADS", bad)
        with pytest.raises(ValueError, match=says):
            ServerConfig.from_env(home=tmp_path)
    monkeypatch.setenv("HUTCH_PREVIEW_THREADS", " 3 ")
    assert ServerConfig.from_env(home=tmp_path).preview_threads == 3
    with pytest.raises(ValueError, match=says):
        ServerConfig(home=tmp_path, preview_threads=0)  # an explicit argument is checked too
    assert says in serve_refusal(tmp_path / "home", HUTCH_PREVIEW_THREADS="two")


def test_route_keys_hide_the_token_and_parsers_read_haproxy_answers() -> None:
    key = route_key(host_for(8080).upper())
    assert key == route_key(host_for(8080)) and TOKEN not in key and len(key) == 64
    dump = (
        "0x55aa: [03/Dec] id=2 proto=tcpv4 source=127.0.0.1:1\n"
        "  backend=sandbox (id=3 mode=http) addr=10.0.0.1:5\n"
        "  server=sandbox (id=1) addr=10.0.0.2:8080\n"
        "0x55bb: [03/Dec] id=3 proto=tcpv4 source=127.0.0.1:2\n"
        "  server=sandbox (id=1) addr=10.0.0.2:8081\n"
    )
    assert sessions_to(dump, "10.0.0.2", 8080) == ["0x55aa"]
    table = "0x1: key=sb-1 use=0 exp=0 shard=0 conn_cur=2 http_req_cnt=7\n"
    assert parse_activity(table)["sb-1"].requests == 7
    assert parse_activity(table)["sb-1"].open_connections == 2


async def test_a_route_applies_at_once_and_other_streams_go_on(
    native: tuple[NativeProxy, Upstream, Upstream],
) -> None:
    proxy, sandbox, _ = native
    await proxy.set_routes("sb-1", routes(sandbox, 8000))
    # A long-lived stream on port 8000 stays open through every change below.
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.config.port)
    writer.write(f"GET /stream HTTP/1.1\r\nHost: {host_for(8000)}\r\n\r\n".encode())
    await reader.readuntil(b"tick\n")
    for port in range(8001, 8006):
        await proxy.set_routes("sb-1", routes(sandbox, 8000, port))
        # In effect when set_routes returns: no sleep, no retry.
        r = await get(proxy, host_for(port))
        assert r.status_code == 200 and r.text.startswith("sandbox\n"), r.text
        await proxy.set_routes("sb-1", routes(sandbox, 8000))
        r = await get(proxy, host_for(port))
        assert r.text.startswith("fallback\n"), r.text  # a miss goes to Hutch's port
    ticks = b""
    while ticks.count(b"tick\n") < 3:
        ticks += await asyncio.wait_for(reader.read(4096), 2)
    # Revoking the stream's own route ends it at once.
    await proxy.set_routes("sb-1", {})
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        while True:
            chunk = await asyncio.wait_for(reader.read(4096), 2)
            if not chunk:
                raise ConnectionError("closed")
    writer.close()


async def test_the_miss_carries_its_host_to_the_fallback(
    native: tuple[NativeProxy, Upstream, Upstream],
) -> None:
    proxy, sandbox, _ = native
    await proxy.set_routes("sb-1", routes(sandbox, 8000))
    wrong = await get(proxy, host_for(8000, token="0" * 32))
    assert wrong.text.startswith("fallback\n")
    assert f"host: {host_for(8000, token='0' * 32)}".encode() in wrong.content.lower()
    right = await get(proxy, host_for(8000))
    head = right.content.lower()
    assert b"x-forwarded-for: 127.0.0.1" in head and b"x-forwarded-proto: http" in head
    assert f"x-forwarded-host: {host_for(8000)}".encode() in head


async def test_the_client_credentials_and_cookie_domains_stop_at_the_proxy(
    native: tuple[NativeProxy, Upstream, Upstream],
) -> None:
    proxy, sandbox, _ = native
    await proxy.set_routes("sb-1", routes(sandbox, 8000))
    async with httpx.AsyncClient() as client:
        r = await client.get(
            f"http://127.0.0.1:{proxy.config.port}/",
            headers={"Host": host_for(8000), "Authorization": "Bearer hk_secret"},
        )
    assert r.text.startswith("sandbox\n") and b"hk_secret" not in r.content


async def test_a_dead_proxy_is_started_again_with_its_routes(
    native: tuple[NativeProxy, Upstream, Upstream],
) -> None:
    proxy, sandbox, _ = native
    await proxy.set_routes("sb-1", routes(sandbox, 8000))
    old = proxy.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    for _ in range(100):
        await asyncio.sleep(0.05)
        if proxy.pid != old:
            try:
                r = await get(proxy, host_for(8000))
            except httpx.HTTPError:
                continue
            if r.status_code == 200:
                break
    assert proxy.restarts == 1
    assert r.text.startswith("sandbox\n"), r.text


SMUGGLING = {
    "cl_te": "POST / HTTP/1.1\r\nHost: {h}\r\nContent-Length: 4\r\n"
    "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bare_lf": "GET / HTTP/1.1\nHost: {h}\n\n",
    "absolute_other": "GET http://other.localhost/ HTTP/1.1\r\nHost: {h}\r\n\r\n",
    "two_cl": "POST / HTTP/1.1\r\nHost: {h}\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "negative_cl": "POST / HTTP/1.1\r\nHost: {h}\r\nContent-Length: -1\r\n\r\n",
    "te_not_last": "POST / HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    "te_space": "POST / HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "bad_name": "GET / HTTP/1.1\r\nHost: {h}\r\nBad Name: x\r\n\r\n",
}


@pytest.mark.parametrize("shape", sorted(SMUGGLING))
async def test_smuggling_shapes_never_reach_a_sandbox_as_sent(
    native: tuple[NativeProxy, Upstream, Upstream], shape: str
) -> None:
    proxy, sandbox, _ = native
    await proxy.set_routes("sb-1", routes(sandbox, 8000))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.config.port)
    writer.write(SMUGGLING[shape].format(h=host_for(8000)).encode())
    answer = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    if answer.startswith(b"HTTP/1.1 4"):
        assert sandbox.requests == [], shape  # refused: nothing reached the sandbox
        return
    # Not refused (RFC 9112 lets a proxy take these): then the sandbox got one message in
    # the proxy's own framing, CRLF lines and exactly one way to find the body's end.
    assert shape in ("cl_te", "bare_lf"), answer
    [head] = sandbox.requests
    assert b"\n" not in head.replace(b"\r\n", b"")
    assert not (b"content-length" in head.lower() and b"transfer-encoding" in head.lower())


def make_wildcard_cert(directory: Path, domain: str, pem: Path) -> Path:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        + ["-nodes", "-days", "1", "-subj", f"/CN=*.{domain}", "-keyout", str(key)]
        + ["-out", str(cert), "-addext", f"subjectAltName=DNS:*.{domain}"],
        check=True,
        capture_output=True,
    )
    pem.write_text(cert.read_text() + key.read_text())
    return cert


async def test_tls_with_a_wildcard_cert_and_http2(tmp_path: Path) -> None:
    assert HAPROXY is not None
    sandbox, fallback = Upstream("sandbox"), Upstream("fallback")
    await sandbox.start()
    await fallback.start()
    pem = tmp_path / "preview.pem"
    cert = make_wildcard_cert(tmp_path, "preview.test", pem)
    config = NativeProxyConfig(
        "127.0.0.1", free_port(), f"127.0.0.1:{fallback.port}", tmp_path, pem
    )
    proxy = NativeProxy(config, HAPROXY)
    await proxy.start()
    try:
        host = f"8000-sb-1-{TOKEN}.preview.test"
        await proxy.set_routes(
            "sb-1", {route_key(host): route_value("127.0.0.1", sandbox.port, "sb-1")}
        )
        trust = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(http2=True, verify=trust) as client:
            # Connected to 127.0.0.1; the cert is checked against the preview host (SNI).
            r = await client.get(
                f"https://127.0.0.1:{config.port}/",
                extensions={"sni_hostname": host},
                headers={"Host": host},
            )
        assert r.http_version == "HTTP/2" and r.text.startswith("sandbox\n"), r
        assert b"x-forwarded-proto: https" in r.content.lower()
    finally:
        await proxy.stop()
        sandbox.close()
        fallback.close()
