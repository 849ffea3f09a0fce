"""The preview proxy carries what a browser does: WebSocket, SSE, big bodies both ways, a real
headless chromium page; and preview tokens survive a server restart."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from hutch import Sandbox
from tests._server import ServerProcess
from tests.conftest import _cleanup_home
from tests.support.wsecho import random_block

pytestmark = pytest.mark.sandbox

WSECHO = (Path(__file__).parent / "support" / "wsecho.py").read_text()
PAGE = {
    "index.html": (
        "<!doctype html><html><head><link rel=stylesheet href=style.css>"
        "<script src=app.js></script></head><body><div id=out>loading</div></body></html>"
    ),
    "style.css": "#out { color: rgb(1, 2, 3); }",
    "app.js": (
        "window.addEventListener('load', () => {\n"
        "  const ws = new WebSocket(`ws://${location.host}/ws`);\n"
        "  ws.onopen = () => ws.send('hello');\n"
        "  ws.onmessage = (e) => { document.getElementById('out').textContent = e.data; };\n"
        "});\n"
    ),
}


def start_app(sb: Sandbox, port: int) -> str:
    sb.exec("mkdir -p /srv/site")
    sb.exec("cat > /srv/wsecho.py", stdin=WSECHO)
    for name, text in PAGE.items():
        sb.exec(f"cat > /srv/site/{name}", stdin=text)
    sb.exec(f"nohup python3 /srv/wsecho.py {port} /srv/site >/dev/null 2>&1 &")
    return sb.expose_port(port).url


def via_server(server: ServerProcess, url: str) -> tuple[str, dict[str, str]]:
    """The server's own address plus the preview Host (no reliance on *.localhost DNS)."""
    parts = urlsplit(url)
    return f"http://127.0.0.1:{parts.port}", {"Host": parts.netloc}


def wait_ready(server: ServerProcess, url: str) -> None:
    base, headers = via_server(server, url)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if httpx.get(base + "/index.html", headers=headers).status_code == 200:
            return
        time.sleep(0.2)
    raise AssertionError("the sandbox app did not come up")


@pytest.fixture(scope="module")
def app(server: ServerProcess) -> Iterator[tuple[Sandbox, str]]:
    sb = Sandbox.create(base_url=server.url, api_key=server.api_key)
    url = start_app(sb, 8000)
    wait_ready(server, url)
    yield sb, url
    sb.destroy()


def test_websocket_echo_through_the_proxy(server: ServerProcess, app: tuple[Sandbox, str]) -> None:
    from websockets.sync.client import connect

    host = urlsplit(app[1]).netloc
    sock = socket.create_connection(("127.0.0.1", urlsplit(app[1]).port))
    with connect(f"ws://{host}/ws", sock=sock, open_timeout=10) as ws:
        for text in ("one", "two", "x" * 5000):
            ws.send(text)
            assert ws.recv(timeout=10) == "echo:" + text


def test_unexpose_closes_an_open_websocket_at_once(
    server: ServerProcess, app: tuple[Sandbox, str]
) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    sb = app[0]
    sb.exec("nohup python3 /srv/wsecho.py 8003 /srv/site >/dev/null 2>&1 &")
    url = sb.expose_port(8003).url
    wait_ready(server, url)
    sock = socket.create_connection(("127.0.0.1", urlsplit(url).port))
    with connect(f"ws://{urlsplit(url).netloc}/ws", sock=sock, open_timeout=10) as ws:
        ws.send("before")
        assert ws.recv(timeout=10) == "echo:before"
        sb.unexpose_port(8003)
        with pytest.raises(ConnectionClosed):  # closed, not merely silent (no TimeoutError)
            ws.send("after")
            ws.recv(timeout=5)


def test_server_sent_events_arrive_unbuffered(
    server: ServerProcess, app: tuple[Sandbox, str]
) -> None:
    base, headers = via_server(server, app[1])
    arrivals = []
    with httpx.stream("GET", base + "/sse", headers=headers, timeout=10) as r:
        assert r.headers["content-type"] == "text/event-stream"
        for line in r.iter_lines():
            if line.startswith("data:"):
                arrivals.append((line, time.monotonic()))
    assert [a[0] for a in arrivals] == ["data: tick 0", "data: tick 1", "data: tick 2"]
    # 0.3 s apart at the source: had the proxy buffered, they would arrive together.
    assert arrivals[2][1] - arrivals[0][1] > 0.4


def test_large_download_and_upload_stream(server: ServerProcess, app: tuple[Sandbox, str]) -> None:
    # Random bytes and a digest, not zeros and a count: a proxy that dropped, repeated or
    # reordered a chunk would still move the right number of zeros.
    base, headers = via_server(server, app[1])
    n = 256 << 20
    seed = os.urandom(8).hex()
    want = hashlib.sha256()
    for i in range(n >> 20):
        want.update(random_block(seed, i))
    got, digest = 0, hashlib.sha256()
    with httpx.stream("GET", f"{base}/big?n={n}&seed={seed}", headers=headers, timeout=60) as r:
        assert int(r.headers["content-length"]) == n
        for chunk in r.iter_raw():
            got += len(chunk)
            digest.update(chunk)
    assert got == n and digest.hexdigest() == want.hexdigest()

    sent = hashlib.sha256()

    def body() -> Iterator[bytes]:
        for _ in range(n >> 20):
            block = os.urandom(1 << 20)
            sent.update(block)
            yield block

    r = httpx.post(
        base + "/upload",
        headers={**headers, "Content-Length": str(n)},
        content=body(),
        timeout=60,
    )
    assert r.status_code == 200 and r.text == f"{n} {sent.hexdigest()}"


def test_page_with_static_files_and_websocket_in_headless_chromium(
    app: tuple[Sandbox, str], tmp_path: Path
) -> None:
    chromium = shutil.which("chromium")
    assert chromium is not None, "chromium is not installed (scripts/install installs it)"
    from playwright.sync_api import sync_playwright

    url = app[1] + "index.html"
    with sync_playwright() as p:
        # A fresh profile (--user-data-dir) per run.
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=chromium,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page()
            page.goto(url, timeout=30_000)
            page.wait_for_function(
                "document.getElementById('out').textContent === 'echo:hello'", timeout=30_000
            )
            color = page.evaluate("getComputedStyle(document.getElementById('out')).color")
            assert color == "rgb(1, 2, 3)"  # the stylesheet came through too
        finally:
            browser.close()


def test_preview_tokens_survive_a_restart(busybox_image: str) -> None:
    srv = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-preview-", dir="/var/tmp")))
    srv.start()
    try:
        sb = Sandbox.create(base_url=srv.url, api_key=srv.api_key)
        url = start_app(sb, 8000)
        wait_ready(srv, url)
        srv.kill9()
        srv.start()
        base, headers = via_server(srv, url)
        assert httpx.get(base + "/style.css", headers=headers).status_code == 200
        assert sb.get_preview_url(8000) == url
        sb.destroy()
        assert httpx.get(base + "/style.css", headers=headers).status_code == 404
    finally:
        srv.stop()
        _cleanup_home(srv)
