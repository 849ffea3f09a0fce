"""The console plots a sandbox's CPU and memory over the last 15 minutes and shows the
host's totals, in a real headless chromium (as tests/test_console.py)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

from hutch import Sandbox
from tests._server import ServerProcess
from tests.test_console import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.sandbox


def test_the_sandbox_page_plots_cpu_and_memory_and_the_host_its_totals(
    server: ServerProcess,
) -> None:
    import playwright.sync_api as sync_api

    assert Path(CHROMIUM).exists(), "Debian's chromium is not installed (scripts/install does)"
    sb = Sandbox.create(
        image="busybox", cpu=0.5, memory_mb=256, base_url=server.url, api_key=server.api_key
    )
    try:
        # A busy process, so that what the page draws is not a flat zero.
        sb.start_process("sh -c 'while :; do :; done'")
        sb.exec("dd if=/dev/zero of=/dev/shm/fill bs=1M count=40")
        with tempfile.TemporaryDirectory(prefix="hutch-chromium-") as profile:
            with sync_api.sync_playwright() as p:
                browser = p.chromium.launch_persistent_context(
                    profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
                )
                try:
                    page = browser.new_page()
                    page.set_default_timeout(60_000)
                    page.goto(server.url + "/console/")
                    page.fill("#login-key", server.api_key)
                    page.click("#login-form button")

                    # The host's totals, above the list.
                    page.wait_for_selector("#host dt:text-is('running')")
                    host = dict(
                        zip(
                            page.locator("#host dt").all_inner_texts(),
                            page.locator("#host dd").all_inner_texts(),
                            strict=True,
                        )
                    )
                    listed = [s for s in Sandbox.list(base_url=server.url, api_key=server.api_key)]
                    running = [s for s in listed if s.status == "running"]
                    assert int(host["running"]) == len(running) >= 1
                    assert re.fullmatch(r"[\d.]+ of [\d.]+ GiB", host["storage"]), host

                    page.locator(f"tr[data-id='{sb.id}']").click()
                    page.click("#tabs [data-tab=usage]")
                    cpu = page.locator("figure.usage", has_text="CPU")
                    memory = page.locator("figure.usage", has_text="Memory")
                    cpu.wait_for()
                    assert "(0.5 CPU)" in cpu.inner_text()
                    assert "of 256 MiB" in memory.inner_text()
                    # Memory holds the 40 MiB file in /dev/shm: the line is drawn above zero.
                    used = float(memory.locator(".now").inner_text().split()[0])
                    assert 40 <= used <= 256
                    line = memory.locator("polyline").get_attribute("points") or ""
                    ys = [float(pt.split(",")[1]) for pt in line.split()]
                    assert len(ys) >= 2 and min(ys) < 120 - 4 - 1  # above the chart's floor
                    # The busy loop shows (a second reading, 5 s on, has a CPU figure > 0).
                    page.wait_for_function(
                        "() => parseFloat(document.querySelector('figure.usage .now')"
                        ".textContent) > 0"
                    )
                    assert "last 15 min" in cpu.inner_text()
                    page.screenshot(path=str(ARTIFACTS / "console-usage.png"), full_page=True)
                finally:
                    browser.close()
    finally:
        sb.destroy()
