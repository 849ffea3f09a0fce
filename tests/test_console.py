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


def test_console_files_are_served_without_a_cdn(server: ServerProcess) -> None:
    page = httpx.get(server.url + "/console/", timeout=10)
    assert page.status_code == 200
    # The browser runs only this origin's scripts: the policy says so and nothing overrides it.
    policy = dict(
        (d.split()[0], d.split()[1:]) for d in page.headers["Content-Security-Policy"].split(";")
    )
    assert policy["default-src"] == ["'self'"] and "script-src" not in policy, policy
    # Every script and sheet the page names is a local path that the server serves.
    assets = re.findall(r'<(?:script|link)\b[^>]*\b(?:src|href)="([^"]+)"', page.text)
    needed = {"vendor/xterm.js", "vendor/xterm.css", "vendor/addon-fit.js", "console.js"}
    assert needed <= {a.removeprefix("/console/") for a in assets}, assets
    for asset in assets:
        assert not re.match(r"(https?:)?//", asset), asset
        got = httpx.get(f"{server.url}/console/{asset.removeprefix('/console/')}", timeout=10)
        assert got.status_code == 200 and got.content, asset
    assert httpx.get(server.url + "/v1/sandboxes", timeout=10).status_code == 401


def test_console_login_create_terminal_destroy(server: ServerProcess) -> None:
    import playwright.sync_api as sync_api

    assert Path(CHROMIUM).exists(), "Debian's chromium is not installed (scripts/install does)"
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

                # Panels whose API a server lacks are hidden, not broken: the ports probe is
                # answered as a server without that route answers (its real 404).
                missing = httpx.get(
                    server.url + "/v1/sandboxes/x/no-such-panel",
                    headers={"Authorization": f"Bearer {server.api_key}"},
                    timeout=10,
                )
                assert missing.status_code == 404
                page.route(
                    re.compile(r".*/v1/sandboxes/[^/]+/ports$"),
                    lambda route: route.fulfill(
                        status=404, body=missing.content, content_type="application/json"
                    ),
                )
                page.click("#create")
                page.wait_for_selector("#detail", state="visible")
                sandbox_id = page.inner_text("#detail-id")
                page.wait_for_selector(f"tr[data-id='{sandbox_id}'] >> text=running")
                page.wait_for_selector("#terminal-status:has-text('Terminal pty-')")
                page.click("#terminal")
                page.keyboard.type("echo hello-from-$((6 * 7))-console\n")
                page.wait_for_selector(".xterm-rows:has-text('hello-from-42-console')")
                page.screenshot(path=str(ARTIFACTS / "console-terminal.png"))
                page.locator("#tabs [data-tab=ports]").wait_for(state="hidden")
                for tab in ("files", "processes"):  # their routes answer: their tabs show
                    page.locator(f"#tabs [data-tab={tab}]").wait_for(state="visible")

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


def test_console_files_processes_ports(server: ServerProcess) -> None:
    """The Files, Processes and Ports panels against the real routes, next to the SDK."""
    import playwright.sync_api as sync_api

    assert Path(CHROMIUM).exists(), "Debian's chromium is not installed (scripts/install does)"
    from hutch import Sandbox

    ARTIFACTS.mkdir(exist_ok=True)
    sb = Sandbox.create(base_url=server.url, api_key=server.api_key)
    try:
        assert sb.exec("echo made-by-exec > /workspace/from-exec.txt").exit_code == 0
        with tempfile.TemporaryDirectory(prefix="hutch-chromium-") as profile:
            with sync_api.sync_playwright() as p:
                browser = p.chromium.launch_persistent_context(
                    profile,
                    executable_path=CHROMIUM,
                    headless=True,
                    args=CHROMIUM_ARGS,
                    viewport={"width": 1280, "height": 900},
                    accept_downloads=True,
                )
                try:
                    page = browser.new_page()
                    page.set_default_timeout(60_000)
                    page.goto(server.url + "/console/")
                    page.fill("#login-key", server.api_key)
                    page.click("#login-form button")
                    page.click(f"tr[data-id='{sb.id}']")
                    page.wait_for_selector("#detail", state="visible")

                    # Files: /workspace lists the file exec made; download it; upload one.
                    page.click("#tabs [data-tab=files]")
                    page.wait_for_selector("#files-rows a:text-is('from-exec.txt')")
                    with page.expect_download() as download:
                        page.click("#files-rows a:text-is('from-exec.txt')")
                    assert download.value.suggested_filename == "from-exec.txt"
                    assert Path(download.value.path()).read_text() == "made-by-exec\n"
                    page.set_input_files(
                        "#files-upload",
                        files=[
                            {
                                "name": "uploaded.txt",
                                "mimeType": "text/plain",
                                "buffer": b"sent from the browser\n",
                            }
                        ],
                    )
                    page.wait_for_selector("#files-rows a:text-is('uploaded.txt')")
                    assert sb.read_file("/workspace/uploaded.txt") == b"sent from the browser\n"

                    # Processes: one started by the SDK while the panel is open shows up;
                    # its output arrives live; Kill on the page ends it.
                    page.click("#tabs [data-tab=processes]")
                    sb.start_process(
                        "for i in $(seq 1 600); do echo tick-$i; echo tock-$i >&2; sleep 0.2; done",
                        process_id="ticker",
                    )
                    row = page.locator("#process-rows tr[data-id=ticker]")
                    row.locator("text=running").wait_for()
                    row.click()
                    page.wait_for_selector("#process-logs .stdout:has-text('tick-1')")
                    page.wait_for_selector("#process-logs .stderr:has-text('tock-1')")
                    seen = int(re.findall(r"tick-(\d+)", page.inner_text("#process-logs"))[-1])
                    # Lines printed after the stream opened arrive without a reload.
                    page.wait_for_selector(f"#process-logs:has-text('tick-{seen + 3}')")
                    page.screenshot(path=str(ARTIFACTS / "console-processes.png"), full_page=True)
                    row.locator("button.kill").click()
                    page.wait_for_selector("#process-logs .note:has-text('killed')")
                    row.locator("text=killed").wait_for()
                    assert sb.get_process("ticker").status == "killed"
                    # A finished chatty one: only its tail is shown, then how it ended.
                    sb.start_process(
                        "yes line-of-output | head -n 100000; echo bulk-done", process_id="bulk"
                    ).wait(timeout=60)
                    page.click("#processes-refresh")
                    page.click("#process-rows tr[data-id=bulk]")
                    page.wait_for_selector("#process-logs .note:has-text('completed')")
                    logs = page.inner_text("#process-logs")
                    assert "earlier output is not shown" in logs
                    assert "bulk-done" in logs
                    assert len(logs) < 300_000

                    # Ports: one exposed by the SDK appears with its preview link; the page
                    # exposes and unexposes one of its own.
                    page.click("#tabs [data-tab=ports]")
                    exposed = sb.expose_port(8080)
                    link = page.locator("#port-rows a", has_text=exposed.url)
                    link.wait_for()
                    assert link.get_attribute("href") == exposed.url
                    page.fill("#expose-port", "9090")
                    page.fill("#expose-name", "web")
                    page.click("#expose-form button")
                    page.wait_for_selector("#port-rows tr[data-port='9090'] >> text=web")
                    assert {p.port for p in sb.get_exposed_ports()} == {8080, 9090}
                    page.screenshot(path=str(ARTIFACTS / "console-ports.png"), full_page=True)
                    page.click("#port-rows tr[data-port='9090'] button.unexpose")
                    page.wait_for_selector("#port-rows tr[data-port='9090']", state="detached")
                    assert [p.port for p in sb.get_exposed_ports()] == [8080]
                finally:
                    browser.close()
    finally:
        sb.destroy()


def test_console_shows_labels_network_expiry_and_the_sandbox_state(
    server: ServerProcess,
) -> None:
    """The list says what a user looks for (labels, network, expiry), its rows look and act
    like links, the page has an icon, and the sandbox page shows the sandbox's state."""
    import playwright.sync_api as sync_api

    from hutch import Sandbox

    icon = httpx.get(server.url + "/console/favicon.svg", timeout=10)
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    sb = Sandbox.create(
        labels={"team": "console", "task": "t-1"},
        network="internet",
        timeout=3600,
        base_url=server.url,
        api_key=server.api_key,
    )
    try:
        with tempfile.TemporaryDirectory(prefix="hutch-chromium-") as profile:
            with sync_api.sync_playwright() as p:
                browser = p.chromium.launch_persistent_context(
                    profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
                )
                try:
                    page = browser.new_page()
                    page.set_default_timeout(60_000)
                    page.goto(server.url + "/console/")
                    assert page.get_attribute("link[rel=icon]", "href") == "favicon.svg"
                    page.fill("#login-key", server.api_key)
                    page.click("#login-form button")
                    row = page.locator(f"tr[data-id='{sb.id}']")
                    row.wait_for()
                    assert row.locator("td.network").inner_text() == "internet"
                    chips = row.locator("td.labels code").all_inner_texts()
                    assert chips == ["task=t-1", "team=console"]
                    assert re.search(r"\(in (59|60) min\)", row.locator("td.expires").inner_text())
                    headers = page.locator("#sandboxes thead th").all_inner_texts()
                    assert {"Network", "Labels", "Expires"} <= set(headers)
                    assert row.evaluate("r => getComputedStyle(r).cursor") == "pointer"

                    row.focus()
                    page.keyboard.press("Enter")  # rows open from the keyboard too
                    page.wait_for_selector("#detail", state="visible")
                    page.wait_for_selector("#detail-status:text-is('running')")
                    facts = page.inner_text("#detail-state")
                    assert "internet" in facts and "default" in facts
                    assert re.search(r"in (59|60) min", facts)

                    # The sandbox's events, live: its past, then a pause made elsewhere.
                    page.wait_for_selector("#detail-events li:has-text('started')")
                    sb.pause()
                    page.wait_for_selector(
                        "#detail-events li:has-text('paused: paused by request')"
                    )
                    assert page.inner_text("#detail-status") == "paused"
                    kinds = [
                        t.split(" ")[-1]
                        for t in page.locator("#detail-events li").all_inner_texts()
                    ]
                    assert kinds[:2] == ["created", "started"], kinds
                    page.screenshot(path=str(ARTIFACTS / "console-state.png"), full_page=True)
                finally:
                    browser.close()
    finally:
        sb.destroy()
