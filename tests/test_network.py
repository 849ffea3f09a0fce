"""Sandbox networks and preview URLs, through a real server, real runc sandboxes and the proxy."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from hutch import Sandbox
from tests._server import ServerProcess

pytestmark = pytest.mark.sandbox

SERVE = "nohup python3 -m http.server {port} --bind 0.0.0.0 >/dev/null 2>&1 &"


@pytest.fixture(scope="module")
def web(server: ServerProcess) -> Iterator[Sandbox]:
    sb = Sandbox.create(base_url=server.url, api_key=server.api_key)
    sb.exec("mkdir -p /srv && echo hello-from-sandbox > /srv/index.html")
    sb.exec(f"cd /srv && {SERVE.format(port=8080)}")
    yield sb
    sb.destroy()


def _get(server: ServerProcess, url: str, **kw: object) -> httpx.Response:
    """GET a preview URL by connecting to the server itself with the URL's Host."""
    parts = urlsplit(url)
    host = parts.netloc
    return httpx.get(f"{server.url}{parts.path or '/'}", headers={"Host": host}, **kw)  # type: ignore[arg-type]


def _wait_ok(server: ServerProcess, url: str) -> httpx.Response:
    deadline = time.monotonic() + 20
    while True:
        r = _get(server, url)
        if r.status_code == 200 or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


def test_preview_url_serves_the_sandbox_port(server: ServerProcess, web: Sandbox) -> None:
    exposed = web.expose_port(8080)
    assert exposed.url.startswith("http://8080-" + web.id + "-")
    assert exposed.url.endswith(f".localhost:{server.port}/")
    assert web.expose_port(8080).url == exposed.url  # twice: the same URL
    assert web.get_preview_url(8080) == exposed.url
    r = _wait_ok(server, exposed.url)
    assert r.status_code == 200 and r.text == "hello-from-sandbox\n"
    assert [p.port for p in web.get_exposed_ports()] == [8080]


def test_unknown_wrong_token_and_unexposed_get_the_same_404(
    server: ServerProcess, web: Sandbox
) -> None:
    url = web.expose_port(8080).url
    token = urlsplit(url).hostname.split(".")[0].rsplit("-", 1)[1]  # type: ignore[union-attr]
    wrong = url.replace(token, "0" * 32)
    unexposed = url.replace("8080-", "8081-", 1)
    unknown = url.replace(web.id, "sb-000000000000")
    bodies = {_get(server, u).status_code: _get(server, u).content for u in (wrong, unexposed)}
    assert list(bodies) == [404]
    r = _get(server, unknown)
    assert r.status_code == 404 and r.content == bodies[404]


def test_unexpose_kills_the_url_at_once(server: ServerProcess, web: Sandbox) -> None:
    web.exec(SERVE.format(port=9090))
    url = web.expose_port(9090).url
    assert _wait_ok(server, url).status_code == 200
    web.unexpose_port(9090)
    assert _get(server, url).status_code == 404


def test_bad_ports_and_hosts(server: ServerProcess, web: Sandbox) -> None:
    for port in (0, 65536, -1):
        r = httpx.post(
            f"{server.url}/v1/sandboxes/{web.id}/ports",
            json={"port": port},
            headers={"Authorization": f"Bearer {server.api_key}"},
        )
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_port"
    for host in ("8080-x.localhost", "bad host!", "a..localhost"):
        assert _raw(server, f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").startswith(b"HTTP/1.1 400")


def _raw(server: ServerProcess, request: str) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(request.encode())
        return s.recv(65536)


def test_smuggling_shapes_are_refused(server: ServerProcess, web: Sandbox) -> None:
    host = urlsplit(web.expose_port(8080).url).netloc
    cl_te = (
        f"POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    assert _raw(server, cl_te).startswith(b"HTTP/1.1 400")
    assert _raw(server, f"GET / HTTP/1.1\nHost: {host}\n\n").startswith(b"HTTP/1.1 400")
    absolute = f"GET http://other.localhost/ HTTP/1.1\r\nHost: {host}\r\n\r\n"
    assert _raw(server, absolute).startswith(b"HTTP/1.1 400")


def test_keep_alive_chunked_and_forwarded_headers(server: ServerProcess, web: Sandbox) -> None:
    app = (
        "import http.server as h\n"
        "class H(h.BaseHTTPRequestHandler):\n"
        "    protocol_version = 'HTTP/1.1'\n"
        "    def do_GET(self):\n"
        "        self.send_response(200)\n"
        "        self.send_header('Transfer-Encoding', 'chunked')\n"
        "        self.end_headers()\n"
        "        for k in ('X-Forwarded-For', 'X-Forwarded-Proto', 'X-Forwarded-Host'):\n"
        "            v = (k + '=' + str(self.headers.get(k)) + '\\n').encode()\n"
        "            self.wfile.write(b'%x\\r\\n%s\\r\\n' % (len(v), v))\n"
        "        self.wfile.write(b'0\\r\\n\\r\\n')\n"
        "    def log_message(self, *a): pass\n"
        "h.ThreadingHTTPServer(('0.0.0.0', 7000), H).serve_forever()\n"
    )
    web.write_file("/srv/app.py", app) if hasattr(web, "write_file") else web.exec(
        "cat > /srv/app.py", stdin=app
    )
    web.exec("nohup python3 /srv/app.py >/dev/null 2>&1 &")
    url = web.expose_port(7000).url
    host = urlsplit(url).netloc
    assert _wait_ok(server, url).status_code == 200
    with httpx.Client(base_url=server.url, headers={"Host": host}) as client:
        for _ in range(3):  # one connection, several requests
            r = client.get("/")
            assert r.status_code == 200
            assert "X-Forwarded-For=127.0.0.1" in r.text
            assert "X-Forwarded-Proto=http" in r.text
            assert f"X-Forwarded-Host={host}" in r.text


PROBE = (
    "import socket,sys\n"
    "for a in sys.argv[1:]:\n"
    "    h,p=a.rsplit(':',1)\n"
    "    s=socket.socket(); s.settimeout(1.5)\n"
    "    try:\n"
    "        s.connect((h,int(p))); print(a,'OPEN')\n"
    "    except OSError as e: print(a,'closed',type(e).__name__)\n"
    "    finally: s.close()\n"
)


def _host_addresses() -> list[str]:
    import subprocess

    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines()]


def test_isolation_from_inside_a_sandbox(server: ServerProcess, web: Sandbox) -> None:
    other = Sandbox.create(base_url=server.url, api_key=server.api_key, network="internet")
    try:
        other.exec(SERVE.format(port=8080))
        other_ip = other.set_network("internet")["address"]
        web_ip = web.set_network("none")["address"]
        common = [f"{a}:{server.port}" for a in _host_addresses()] + ["169.254.169.254:80"]
        for attacker, victim in ((web, other_ip), (other, web_ip)):
            targets = [*common, f"{victim}:8080"]
            attacker.exec("cat > /tmp/probe.py", stdin=PROBE)
            r = attacker.exec("python3 /tmp/probe.py " + " ".join(targets))
            assert "OPEN" not in r.stdout, r.stdout
            assert r.stdout.count("closed") == len(targets)
        # A raw socket cannot be opened.
        r = web.exec(
            "python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)'"
        )
        assert r.exit_code != 0 and "PermissionError" in r.stderr
        # network="none": nothing but loopback.
        r = web.exec("python3 -c 'import socket; print(socket.gethostbyname(\"localhost\"))'")
        assert r.stdout.strip() == "127.0.0.1"
    finally:
        other.destroy()
