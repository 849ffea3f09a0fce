"""Schemathesis against a real server's /openapi.json: whatever it sends, never a 5xx and
never a hang (each request has a timeout; the whole run is bounded).

Left out: `/v1/images/*` (the test servers share one image store: a fuzzed delete or tag could
take `default` from every other test), and what would reach an address off this machine
(bucket mounts, backups and restores to S3 endpoints, git checkouts, image pulls), and the
streams and waits that last by design until something happens (watch, events, following
logs, waits: a fuzzer's request timeout is no finding there); each of those has tests of its
own. The findings it made are regression tests
below.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests._server import ServerProcess
from tests.conftest import _cleanup_home

pytestmark = pytest.mark.sandbox

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
# Keeps the fuzzer off its own team's quota (else a quota it set made the rest of the run 429s).
HOOKS = Path(__file__).parent / "support" / "fuzz_hooks.py"
LEFT_OUT = (
    r"(^/v1/images|mounts|backups|restore|git/checkout|/ws$"
    r"|files/watch$|/events$|logs/stream$|/wait$|wait-for-port$)"
)


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[ServerProcess]:
    srv = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-fuzz-", dir="/var/tmp")))
    srv.start(timeout=300)
    yield srv
    srv.stop()
    _cleanup_home(srv)


@pytest.mark.timeout(420)
def test_no_input_gets_a_5xx_or_a_hang(fuzz_server: ServerProcess) -> None:
    command = [
        str(SCHEMATHESIS), "run", fuzz_server.url + "/openapi.json",
        "-H", f"Authorization: Bearer {fuzz_server.api_key}",
        "--checks", "not_a_server_error",
        "--max-examples", "3",
        "--request-timeout", "60",
        "--max-time", "45",
        "--exclude-path-regex", LEFT_OUT,
        "--phases", "coverage,fuzzing",
        "--seed", "1",
        "--no-color",
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as cwd:  # its example database stays out of the repo
        env = dict(os.environ, SCHEMATHESIS_HOOKS=str(HOOKS))
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=240, cwd=cwd, env=env
        )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "Server error" not in done.stdout and "timed out" not in done.stdout.lower()
    # Nothing it sent was turned away for a quota or a rate (they hid the code behind them).
    assert "Rate limited" not in done.stdout, done.stdout[-6000:]
    # The run left the server well.
    assert httpx.get(fuzz_server.url + "/healthz", timeout=10).status_code == 200


def test_its_findings_stay_fixed(fuzz_server: ServerProcess) -> None:
    """What fuzzing found, each a 500 before (now a 422 naming the field): a port no column
    holds, a lifetime whose end date overflows, an env var that is not a name, a team rate so
    small that Retry-After overflowed (and locked every key of the team out), stdin that is not
    even ASCII, a string with a lone UTF-16 surrogate. And one hang: a sandbox created with a
    CPU share just above 0 (the kernel's floor, 1%) took 70 s to start its first interpreter,
    past the fuzzer's request timeout; the smallest share is now 1/16."""
    c = httpx.Client(
        base_url=fuzz_server.url,
        headers={"Authorization": f"Bearer {fuzz_server.api_key}"},
        timeout=30,
    )
    with c:
        sid = "sb-nobody-here"
        for method, path, body in (
            ("DELETE", f"/v1/sandboxes/{sid}/ports/2721132431844883478609920", None),
            ("PUT", f"/v1/sandboxes/{sid}/timeout", {"timeout": 1.7976931348623157e308}),
            ("PUT", f"/v1/sandboxes/{sid}/env", {"env": {"x-not-a-name": None}}),
            ("PATCH", "/v1/teams/default/quota", {"rate_per_second": 5e-324}),
            ("PATCH", "/v1/teams/default/quota", {"max_disk_mb": 65740963965093093376}),
            ("POST", "/v1/sandboxes", {"cpu": 1e-6}),
        ):
            r = c.request(method, path, json=body)
            assert r.status_code == 422, (method, path, r.text)
            assert r.json()["error"]["code"] == "invalid_request"
        # stdin with characters outside ASCII: base64 raised ValueError, not binascii.Error
        created = c.post("/v1/sandboxes", json={})
        assert created.status_code == 201, created.text  # the fuzzer left its team able to create
        sid = created.json()["id"]
        for path in (f"/v1/sandboxes/{sid}/exec", f"/v1/sandboxes/{sid}/exec/stream"):
            r = c.post(path, json={"command": "cat", "stdin": "\u00f0\U000e2aa6"})
            assert r.status_code == 422, (path, r.text)
            assert r.json()["error"]["code"] == "invalid_request"
        # A string with a lone UTF-16 surrogate (valid JSON, not Unicode text): a 500 from the
        # agent before, and an env var set so was stored and broke every later exec.
        lone = '"\\ud800"'
        for method, path, body in (
            ("PUT", f"/v1/sandboxes/{sid}/env", '{"env": {"X": LONE}}'),
            ("POST", f"/v1/sandboxes/{sid}/exec", '{"command": LONE}'),
            ("POST", f"/v1/sandboxes/{sid}/code/contexts", '{"cwd": LONE}'),
            ("POST", f"/v1/sandboxes/{sid}/processes", '{"argv": ["true"], "env": {"X": LONE}}'),
        ):
            body = body.replace("LONE", lone)
            r = c.request(method, path, content=body, headers={"content-type": "application/json"})
            assert r.status_code == 422, (method, path, r.text)
            assert r.json()["error"]["code"] == "invalid_request" and "surrogate" in r.text
        # A pair is a character (U+1F600), and the sandbox still runs commands.
        r = c.post(
            f"/v1/sandboxes/{sid}/exec",
            content='{"command": "printf %s \\ud83d\\ude00"}',
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 200 and r.json()["stdout"] == "\U0001f600", r.text
        c.delete(f"/v1/sandboxes/{sid}")
        # The same through the E2B front door (its own JSON parsing): E2B's 400.
        e2b_key = c.post("/v1/keys", json={"name": "e2b", "e2b": True}).json()["key"]
        r = c.post(
            "/sandboxes",
            content='{"templateID": "base", "envVars": {"X": %s}}'.replace("%s", lone),
            headers={"content-type": "application/json", "X-API-Key": e2b_key},
        )
        assert r.status_code == 400 and "surrogate" in r.json()["message"], r.text
