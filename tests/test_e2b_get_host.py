"""`sbx.get_host(port)` of the unmodified e2b SDK through Hutch's preview proxies (native
HAProxy and its Python fallback), admitted by the sandbox's traffic token and nothing else."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2b import Sandbox
from e2b.exceptions import SandboxException

from tests._server import ServerProcess

pytestmark = pytest.mark.sandbox

ECHO = """
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Echo(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path, "headers": dict(self.headers)}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Echo).serve_forever()
"""


@pytest.fixture()
def e2b_env(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> ServerProcess:
    monkeypatch.setenv("E2B_API_URL", server.url)
    monkeypatch.setenv("E2B_SANDBOX_URL", server.url)
    monkeypatch.setenv("E2B_API_KEY", server.api_key)
    return server


@pytest.fixture()
def two(e2b_env: ServerProcess) -> Iterator[tuple[Sandbox, Sandbox]]:
    sbs = (Sandbox.create(timeout=180), Sandbox.create(timeout=180))
    yield sbs
    for sb in sbs:
        try:
            sb.kill()
        except SandboxException:
            pass


def _get(port: int, host: str, token: str | None) -> httpx.Response:
    """GET http://{host}/hello, sent to 127.0.0.1:{port} (no reliance on *.localhost DNS)."""
    headers = {"Host": host}
    if token is not None:
        headers["e2b-traffic-access-token"] = token
    return httpx.get(f"http://127.0.0.1:{port}/hello?x=1", headers=headers, timeout=30)


def _native_routes(home: Path) -> str:
    """The native proxy's live map (HAProxy's admin socket)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(home / "proxy" / "admin.sock"))
        s.sendall(f"show map {home / 'proxy' / 'routes.map'}\n".encode())
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out.decode()


def _serving(port: int, host: str, token: str) -> httpx.Response:
    deadline = time.monotonic() + 30
    while True:
        r = _get(port, host, token)
        if r.status_code != 502 or time.monotonic() > deadline:
            return r
        time.sleep(0.2)  # the server in the sandbox is still starting


def test_get_host_reaches_any_port_with_the_traffic_token(
    e2b_env: ServerProcess, two: tuple[Sandbox, Sandbox]
) -> None:
    sb, other = two
    sb.files.write("/tmp/echo.py", ECHO)
    sb.commands.run("python3 /tmp/echo.py 8080", background=True)
    host = sb.get_host(8080)
    assert host == f"8080-{sb.sandbox_id}.localhost:{e2b_env.preview_port}"
    token = sb.traffic_access_token
    assert token
    # Through the native proxy (the first request falls back to the Python one, which lets
    # the native map learn the sandbox), and the Python proxy on the API's port.
    for port in (e2b_env.preview_port, e2b_env.preview_port, e2b_env.port):
        r = _serving(port, host, token)
        assert r.status_code == 200, r.text
        seen = r.json()
        assert seen["path"] == "/hello?x=1"
        # The token opens the sandbox's ports: the sandbox's own server never sees it.
        assert "e2b-traffic-access-token" not in {k.lower() for k in seen["headers"]}
    # One route for every port of the sandbox (port 0: the host's), keyed by the token.
    assert f"|0|{sb.sandbox_id}" in _native_routes(e2b_env.home)

    for port in (e2b_env.preview_port, e2b_env.port):
        unknown = _get(port, f"8080-sb-000000000000.localhost:{port}", token)
        assert unknown.status_code == 404
        refused = [
            _get(port, host, None),  # no token
            _get(port, host, ""),
            _get(port, host, other.traffic_access_token),  # another sandbox's
            _get(port, host, token[:-1] + ("0" if token[-1] != "0" else "1")),
            _get(port, host, sb._envd_access_token),  # envd's token is not the traffic one
            _get(port, other.get_host(8080), token),  # this token on another sandbox
        ]
        for r in refused:
            assert (r.status_code, r.content) == (404, unknown.content)


def test_traffic_token_does_not_open_envd(
    e2b_env: ServerProcess, two: tuple[Sandbox, Sandbox]
) -> None:
    sb, _ = two
    token = sb.traffic_access_token
    assert token and token != sb._envd_access_token
    routing = {"E2b-Sandbox-Id": sb.sandbox_id, "E2b-Sandbox-Port": "49983"}
    for headers in ({"X-Access-Token": token}, {"e2b-traffic-access-token": token}):
        r = httpx.post(
            f"{e2b_env.url}/process.Process/List",
            json={},
            headers={**routing, **headers, "Content-Type": "application/json"},
        )
        assert r.status_code == 401, r.text
        r = httpx.get(
            f"{e2b_env.url}/files", params={"path": "/etc/hostname"}, headers={**routing, **headers}
        )
        assert r.status_code == 401, r.text
    # the envd port through the preview proxy: nothing there but the sandbox's own ports
    r = _get(e2b_env.preview_port, sb.get_host(49983), token)
    assert r.status_code == 502


def test_killed_sandbox_host_is_gone(e2b_env: ServerProcess, two: tuple[Sandbox, Sandbox]) -> None:
    sb, _ = two
    sb.files.write("/tmp/echo.py", ECHO)
    sb.commands.run("python3 /tmp/echo.py 8081", background=True)
    host, token = sb.get_host(8081), sb.traffic_access_token
    assert token
    assert _serving(e2b_env.preview_port, host, token).status_code == 200
    assert _get(e2b_env.preview_port, host, token).status_code == 200  # the native route
    assert f"|0|{sb.sandbox_id}" in _native_routes(e2b_env.home)
    sb.kill()
    deadline = time.monotonic() + 10
    while sb.sandbox_id in _native_routes(e2b_env.home):  # a destroy unroutes it after
        assert time.monotonic() < deadline, "the killed sandbox's route stays in the map"
        time.sleep(0.1)
    for port in (e2b_env.preview_port, e2b_env.port):
        assert _get(port, host, token).status_code == 404


def test_allow_public_traffic_opens_ports_only_of_that_sandbox(e2b_env: ServerProcess) -> None:
    """`network={"allow_public_traffic": True}`: its get_host ports (and the interpreter's)
    answer without a token, through both proxies; its envd still needs the envd token; a
    sandbox made without it still needs its traffic token."""
    public = Sandbox.create(timeout=180, network={"allow_public_traffic": True})
    private = Sandbox.create(timeout=180, network={"allow_public_traffic": False})
    try:
        assert public.traffic_access_token is None  # as E2B's: nothing to send
        assert private.traffic_access_token
        for sb in (public, private):
            sb.files.write("/tmp/echo.py", ECHO)
            sb.commands.run("python3 /tmp/echo.py 8080", background=True)
        host = public.get_host(8080)
        private_host = private.get_host(8080)
        assert _serving(e2b_env.preview_port, private_host, private.traffic_access_token).is_success
        for port in (e2b_env.preview_port, e2b_env.port):
            for token in (None, "", "wrong", private.traffic_access_token):
                r = _serving(port, host, token)  # type: ignore[arg-type]
                assert r.status_code == 200, (port, token, r.text)
            # The other sandbox is not opened by this one's being public.
            unknown = _get(port, f"8080-sb-000000000000.localhost:{port}", None)
            for token in (None, ""):
                r = _get(port, private_host, token)
                assert (r.status_code, r.content) == (404, unknown.content)
        # envd (commands, files) is not traffic: no token, no entry.
        r = httpx.post(
            f"{e2b_env.url}/filesystem.Filesystem/Stat",
            json={"path": "/tmp"},
            headers={"E2b-Sandbox-Id": public.sandbox_id, "E2b-Sandbox-Port": "49983"},
            timeout=30,
        )
        assert r.status_code == 401, r.text
        # The interpreter's port of a public sandbox needs no token either (E2B's).
        r = httpx.get(
            f"{e2b_env.url}/contexts",
            headers={"E2b-Sandbox-Id": public.sandbox_id, "E2b-Sandbox-Port": "49999"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        r = httpx.get(
            f"{e2b_env.url}/contexts",
            headers={"E2b-Sandbox-Id": private.sandbox_id, "E2b-Sandbox-Port": "49999"},
            timeout=60,
        )
        assert r.status_code == 401, r.text
    finally:
        public.kill()
        private.kill()
