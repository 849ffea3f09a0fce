"""The web console end to end in a real headless chromium (Debian's), driven by Playwright."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import httpx
import pytest

from tests._server import ServerProcess

pytestmark = pytest.mark.sandbox

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _has_route(server: ServerProcess, path: str) -> bool:
    paths = httpx.get(server.url + "/openapi.json", timeout=10).json()["paths"]
    template = path.split("/v1/sandboxes/", 1)[1].split("/", 1)[1]
    return any(p.startswith("/v1/sandboxes/{sandbox_id}/" + template) for p in paths)


def test_console_files_are_served_without_a_cdn(server: ServerProcess) -> None:
    page = httpx.get(server.url + "/console/", timeout=10)
    assert page.status_code == 200
    assert "Content-Security-Policy" in page.headers
    assert not re.search(r"https?://", page.text)  # every script and sheet is local
    for asset in ("vendor/xterm.js", "vendor/xterm.css", "vendor/addon-fit.js", "console.js"):
        assert httpx.get(f"{server.url}/console/{asset}", timeout=10).status_code == 200, asset
    assert httpx.get(server.url + "/v1/sandboxes", timeout=10).status_code == 401


def test_console_login_create_terminal_destroy(server: ServerProcess) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (scripts/install installs it)")
    ARTIFACTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hutch-chromium-") as profile:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1280, "height": 900},
            )
            try:
                page = browser.new_page()
                page.set_default_timeout(60_000)
                page.goto(server.url + "/console/")
                # A wrong key is refused on the page.
                page.fill("#login-key", "hk_not-a-key")
                page.click("#login-form button")
                page.wait_for_selector("#login-error:has-text('not valid')")
                page.fill("#login-key", server.api_key)
                page.click("#login-form button")
                page.wait_for_selector("#app", state="visible")
                assert page.evaluate("sessionStorage.getItem('hutch.apiKey')") == server.api_key

                page.click("#create")
                page.wait_for_selector("#detail", state="visible")
                sandbox_id = page.inner_text("#detail-id")
                page.wait_for_selector(f"tr[data-id='{sandbox_id}'] >> text=running")
                page.wait_for_selector("#terminal-status:has-text('Terminal pty-')")
                page.click("#terminal")
                page.keyboard.type("echo hello-from-$((6 * 7))-console\n")
                page.wait_for_selector(".xterm-rows:has-text('hello-from-42-console')")
                page.screenshot(path=str(ARTIFACTS / "console-terminal.png"))
                # Panels whose API this server lacks are hidden, not broken.
                for tab in ("files", "processes", "ports"):
                    button = page.locator(f"#tabs [data-tab={tab}]")
                    if not _has_route(server, f"/v1/sandboxes/{sandbox_id}/{tab}"):
                        button.wait_for(state="hidden")

                # A reload reattaches to the same terminal: the output is replayed.
                page.reload()
                page.wait_for_selector("#app", state="visible")
                page.click(f"tr[data-id='{sandbox_id}']")
                page.wait_for_selector(".xterm-rows:has-text('hello-from-42-console')")

                # Destroy it from the page (two clicks: no confirm() dialog).
                row = f"tr[data-id='{sandbox_id}']"
                page.click(f"{row} button.destroy")
                page.click(f"{row} button.destroy")
                page.wait_for_selector(row, state="detached")
            finally:
                browser.close()
    with server.client() as http:
        assert http.get(f"/v1/sandboxes/{sandbox_id}").status_code == 404
