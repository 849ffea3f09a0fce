"""The unmodified e2b JavaScript SDK (npm, pinned in tests/e2b_js) under node's test runner
(create, commands with stdin and connect, files, watch, signed URLs, PTY, getHost, pause/resume),
against a real Hutch server; scripts/install runs its `npm ci`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests._server import ServerProcess

pytestmark = pytest.mark.sandbox
JS_DIR = Path(__file__).with_name("e2b_js")


def test_e2b_js_sdk(server: ServerProcess) -> None:
    node = shutil.which("node")
    assert node is not None, "node is missing: run scripts/install"
    assert (JS_DIR / "node_modules" / "e2b").is_dir(), (
        "run scripts/install (npm ci in tests/e2b_js)"
    )
    with server.client() as client:
        key = client.post("/v1/keys", json={"name": "e2b-js", "e2b": True}).json()["key"]
    assert key.startswith("e2b_")
    env = dict(os.environ)
    env.update(E2B_API_URL=server.url, E2B_SANDBOX_URL=server.url, E2B_API_KEY=key)
    run = subprocess.run(
        [node, "--test", "--test-reporter=spec"],
        cwd=JS_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "pass 4" in run.stdout.replace("ℹ ", "")
    assert httpx.get(f"{server.url}/healthz").status_code == 200
