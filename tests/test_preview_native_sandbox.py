"""The native preview proxy in front of real sandboxes: one 404 for every wrong part, servers
bound to 127.0.0.1, a sleeping sandbox woken by its first request, preview traffic that keeps
a sandbox awake, and the Python proxy when the native one is turned off."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from hutch import Sandbox
from tests._server import ServerProcess, wait_for
from tests.conftest import _cleanup_home

pytestmark = pytest.mark.sandbox


def native_get(url: str, path: str = "/", timeout: float = 10) -> httpx.Response:
    """GET a preview URL at the port it names, with its Host (no *.localhost DNS needed)."""
    parts = urlsplit(url)
    return httpx.get(
        f"http://127.0.0.1:{parts.port}{path}", headers={"Host": parts.netloc}, timeout=timeout
    )


def status_of(url: str, path: str = "/") -> int:
    try:
        return native_get(url, path, timeout=5).status_code
    except httpx.HTTPError:
        return 0


def test_preview_urls_use_the_native_port_and_misses_get_the_one_404(
    server: ServerProcess,
) -> None:
    assert "preview proxy: native" in server.log_path.read_text()
    sb = Sandbox.create(base_url=server.url, api_key=server.api_key)
    try:
        sb.exec("mkdir -p /srv && echo hi > /srv/index.html")
        sb.start_process("python3 -m http.server 8080 --directory /srv")
        url = sb.expose_port(8080).url
        assert urlsplit(url).port == server.preview_port != server.port
        wait_for(lambda: status_of(url, "/index.html") == 200, timeout=20)
        token = urlsplit(url).hostname.split(".")[0].rsplit("-", 1)[1]  # type: ignore[union-attr]
        misses = [
            url.replace(token, "0" * 32),
            url.replace("8080-", "8081-", 1),
            url.replace(sb.id, "sb-000000000000"),
        ]
        answers = [native_get(u) for u in misses]
        assert [r.status_code for r in answers] == [404, 404, 404]
        assert answers[0].content == answers[1].content == answers[2].content
        assert answers[0].text.startswith("no such preview:")
        sb.unexpose_port(8080)
        assert native_get(url).content == answers[0].content  # revoked: at once, the same 404
    finally:
        sb.destroy()


def test_a_server_bound_to_localhost_is_reachable(server: ServerProcess) -> None:
    sb = Sandbox.create(base_url=server.url, api_key=server.api_key)
    try:
        sb.exec("mkdir -p /srv && echo local > /srv/index.html")
        url = sb.expose_port(8001).url
        assert native_get(url).status_code == 502  # nothing listens yet: proxy and wait agree
        p = sb.start_process("python3 -m http.server 8001 --bind 127.0.0.1 --directory /srv")
        p.wait_for_port(8001, timeout=20)  # raises if it never listens
        r = native_get(url, "/index.html")
        assert r.status_code == 200 and r.text == "local\n"
        # The Python proxy on the API's port reaches it the same way.
        host = {"Host": urlsplit(url).netloc}
        assert httpx.get(server.url + "/index.html", headers=host).text == "local\n"
    finally:
        sb.destroy()


def test_preview_traffic_keeps_a_sandbox_awake_and_wakes_it(
    server: ServerProcess, busybox_image: str
) -> None:
    sb = Sandbox.create(
        image=busybox_image, sleep_after=1, base_url=server.url, api_key=server.api_key
    )
    try:
        sb.exec("mkdir -p /www && echo hello > /www/index.html")
        sb.start_process("httpd -f -p 8080 -h /www")
        url = sb.get_preview_url(8080)
        wait_for(lambda: status_of(url, "/index.html") == 200, timeout=20)
        # Steady traffic through the native proxy only (no API call): 4 s, sleep_after 1 s.
        until = time.monotonic() + 4
        while time.monotonic() < until:
            assert native_get(url, "/index.html").status_code == 200
            time.sleep(0.2)
        assert sb.info().status == "running"
        wait_for(lambda: sb.info().status == "paused", timeout=20)  # quiet: it sleeps
        r = native_get(url, "/index.html", timeout=20)  # the first request wakes it
        assert r.status_code == 200 and r.text == "hello\n"
        assert sb.info().status == "running"
        r = native_get(url, "/index.html")  # and the next goes the native way again
        assert r.status_code == 200
    finally:
        sb.destroy()


def test_the_python_proxy_serves_when_the_native_one_is_off(busybox_image: str) -> None:
    home = Path(tempfile.mkdtemp(prefix="hutch-test-", dir="/var/tmp"))
    srv = ServerProcess(home)
    env = srv.env
    srv.env = lambda: {**env(), "HUTCH_PREVIEW_PROXY": "python"}  # type: ignore[method-assign]
    srv.start(timeout=120)
    try:
        assert "preview proxy: python" in srv.log_path.read_text()
        sb = Sandbox.create(image=busybox_image, base_url=srv.url, api_key=srv.api_key)
        sb.exec("mkdir -p /www && echo py > /www/index.html")
        sb.start_process("httpd -f -p 8080 -h /www")
        url = sb.expose_port(8080).url
        assert urlsplit(url).port == srv.port
        wait_for(lambda: status_of(url, "/index.html") == 200, timeout=20)
        sb.destroy()
    finally:
        srv.stop()
        _cleanup_home(srv)
