"""What a preview's sandbox must never get or give: the client's Authorization (an API key sent
along to a preview URL), and cookies for hosts other than its own preview host."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from hutch import Sandbox
from tests._server import ServerProcess

pytestmark = pytest.mark.sandbox

# Echoes the request headers it got as JSON and sets one cookie per Domain shape.
ECHO_APP = r"""
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps([[k, v] for k, v in self.headers.items()]).encode()
        self.send_response(200)
        host = self.headers["Host"].split(":")[0]
        self.send_header("Set-Cookie", "tossed=1; Path=/; Domain=localhost")
        self.send_header("Set-Cookie", "dotted=1; domain=.localhost ;Secure")
        self.send_header("Set-Cookie", f"own=1; Domain={host}; HttpOnly")
        self.send_header("Set-Cookie", "plain=1; Path=/")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

HTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"""


@pytest.fixture(scope="module")
def echo(server: ServerProcess) -> Iterator[tuple[str, dict[str, str]]]:
    sb = Sandbox.create(base_url=server.url, api_key=server.api_key)
    sb.exec("cat > /srv/echo.py", stdin=ECHO_APP)
    sb.start_process("python3 /srv/echo.py 8000")
    host = urlsplit(sb.expose_port(8000).url).netloc
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if httpx.get(server.url + "/", headers={"Host": host}).status_code == 200:
            break
        time.sleep(0.2)
    yield server.url, {"Host": host}
    sb.destroy()


def test_the_clients_authorization_never_reaches_the_sandbox(
    server: ServerProcess, echo: tuple[str, dict[str, str]]
) -> None:
    base, headers = echo
    r = httpx.get(
        base + "/",
        headers={
            **headers,
            "Authorization": f"Bearer {server.api_key}",
            "Cookie": "session=abc",
            "X-App": "kept",
        },
    )
    assert r.status_code == 200
    got = {k.lower(): v for k, v in r.json()}
    assert "authorization" not in got
    assert server.api_key not in json.dumps(r.json())
    # The app's own headers and cookies still arrive.
    assert got["cookie"] == "session=abc" and got["x-app"] == "kept"


def test_a_sandbox_sets_cookies_for_its_own_preview_host_only(
    echo: tuple[str, dict[str, str]],
) -> None:
    base, headers = echo
    r = httpx.get(base + "/", headers=headers)
    cookies = r.headers.get_list("set-cookie")
    assert len(cookies) == 4
    assert not [c for c in cookies if "domain" in c.lower()], cookies
    assert "tossed=1; Path=/" in cookies and "own=1; HttpOnly" in cookies
    assert "plain=1; Path=/" in cookies
