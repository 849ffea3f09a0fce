"""Sandboxes end to end: the SDK against a real server running real runc sandboxes."""

from __future__ import annotations

import time

import httpx
import pytest

from hutch import (
    AuthenticationError,
    CommandTimeout,
    InvalidRequest,
    Sandbox,
    SandboxNotFound,
)
from tests._server import ServerProcess

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def sb(server: ServerProcess) -> Sandbox:
    box = Sandbox.create(base_url=server.url, api_key=server.api_key, labels={"suite": "basic"})
    yield box
    box.destroy()


def test_seed_example_works_as_written(sdk_env: ServerProcess) -> None:
    sb = Sandbox.create()
    try:
        r = sb.run("python", ["-c", 'print("Hello from sandbox")'])
        assert r.stdout == "Hello from sandbox\n"
        assert r.exit_code == 0 and r.success
    finally:
        sb.destroy()


def test_shell_string_pipeline(sb: Sandbox) -> None:
    r = sb.exec("echo hi | tr a-z A-Z")
    assert (r.stdout, r.stderr, r.exit_code) == ("HI\n", "", 0)
    assert r.duration > 0


def test_argv_is_not_shell_interpreted(sb: Sandbox) -> None:
    r = sb.run("echo", ["$HOME", "a b", "*"])
    assert r.stdout == "$HOME a b *\n"


def test_stdin_env_cwd_user(sb: Sandbox) -> None:
    assert sb.exec("tr a-z A-Z", stdin=b"from stdin").stdout == "FROM STDIN"
    assert sb.exec("echo $GREETING", env={"GREETING": "hello"}).stdout == "hello\n"
    assert sb.exec("pwd").stdout == "/workspace\n"
    assert sb.exec("pwd", cwd="/tmp").stdout == "/tmp\n"
    assert sb.exec("id -u", user="nobody").stdout == "65534\n"
    assert sb.exec("id -u").stdout == "0\n"


def test_exit_codes_and_missing_commands(sb: Sandbox) -> None:
    assert sb.exec("exit 3").exit_code == 3
    missing = sb.exec("no-such-command-anywhere")
    assert missing.exit_code == 127 and not missing.success
    assert sb.run("no-such-program", []).exit_code == 127


def test_binary_output_is_byte_exact(sb: Sandbox) -> None:
    r = sb.exec("python3 -c 'import sys; sys.stdout.buffer.write(bytes(range(256)) * 4)'")
    assert r.stdout_bytes == bytes(range(256)) * 4


def test_stderr_is_separate(sb: Sandbox) -> None:
    r = sb.exec("echo out; echo err >&2")
    assert (r.stdout, r.stderr) == ("out\n", "err\n")


@pytest.mark.timeout(120)  # the deadline, far below the 300 s of sleep it must not wait for
def test_timeout_fires_and_kills_the_whole_tree(sb: Sandbox) -> None:
    # Had the timeout not fired, `sleep 303` would have ended normally: no CommandTimeout.
    with pytest.raises(CommandTimeout) as info:
        sb.exec("sleep 300 & sleep 301 & (setsid sleep 302 &); sleep 303", timeout=1)
    assert isinstance(info.value, TimeoutError)
    left = sb.exec("ps -eo args | grep -c '^sleep 30[0-3]' || true").stdout.strip()
    assert left == "0", f"processes survived the timeout: {left}"


def test_exec_stream_delivers_chunks_with_offsets(sb: Sandbox) -> None:
    events = list(sb.exec_stream("for i in 1 2 3; do echo line$i; sleep 0.2; done; echo e >&2"))
    out = [e for e in events if e.type == "stdout"]
    assert b"".join(e.data for e in out) == b"line1\nline2\nline3\n"
    offsets = [e.offset for e in out]
    assert offsets[0] == 0 and all(
        b.offset == a.offset + len(a.data) for a, b in zip(out, out[1:], strict=False)
    )
    assert len(out) >= 3, "output arrived all at once instead of live"
    assert [e.data for e in events if e.type == "stderr"] == [b"e\n"]
    assert events[-1].type == "exit" and events[-1].exit_code == 0


def test_callbacks_receive_output_live(sb: Sandbox) -> None:
    seen: list[tuple[float, str]] = []
    t0 = time.monotonic()
    sb.exec(
        "echo a; sleep 0.5; echo b",
        on_stdout=lambda data: seen.append((time.monotonic() - t0, data)),
    )
    assert "".join(d for _, d in seen) == "a\nb\n"
    assert seen[0][0] < seen[-1][0] - 0.3, "first chunk was not delivered before the second"


def test_get_or_create_and_labels(server: ServerProcess) -> None:
    opts = {"base_url": server.url, "api_key": server.api_key}
    a = Sandbox.get_or_create("user-123", labels={"team": "x"}, **opts)
    try:
        a.exec("echo kept > /workspace/state")
        b = Sandbox.get_or_create("user-123", **opts)
        assert b.id == a.id == "user-123"
        assert b.exec("cat /workspace/state").stdout == "kept\n"
        ids = [s.id for s in Sandbox.list(labels={"team": "x"}, **opts)]
        assert ids == ["user-123"]
        assert Sandbox.connect("user-123", **opts).info().status == "running"
    finally:
        a.destroy()
    with pytest.raises(SandboxNotFound):
        Sandbox.connect("user-123", **opts).exec("true")


def test_context_manager_destroys(server: ServerProcess) -> None:
    opts = {"base_url": server.url, "api_key": server.api_key}
    with Sandbox.create(**opts) as box:
        box_id = box.id
        assert box.exec("echo in").stdout == "in\n"
    with pytest.raises(SandboxNotFound):
        Sandbox.connect(box_id, **opts).info()


def test_any_image_agent_runs_in_bare_busybox(server: ServerProcess, busybox_image: str) -> None:
    with Sandbox.create(image=busybox_image, base_url=server.url, api_key=server.api_key) as box:
        # No libc, no Python in the image: the shell is sh, and python is not there.
        assert box.exec("ls /lib /usr/lib 2>&1; echo $0").stdout.strip().endswith("sh")
        assert box.exec("python3 -V").exit_code == 127
        assert box.run("echo", ["busybox", "ok"]).stdout == "busybox ok\n"
        assert box.exec("cat", stdin=b"x" * 100_000).stdout == "x" * 100_000


def test_sandbox_lifetime_timeout(server: ServerProcess) -> None:
    box = Sandbox.create(timeout=2, base_url=server.url, api_key=server.api_key)
    assert box.info().expires_at is not None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            box.info()
        except SandboxNotFound:
            return
        time.sleep(0.25)
    pytest.fail("sandbox outlived its timeout")


# -- bad input -----------------------------------------------------------------------------


def test_unknown_sandbox_is_404(server: ServerProcess) -> None:
    with server.client() as c:
        r = c.post("/v1/sandboxes/sb-doesnotexist/exec", json={"command": "true"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "sandbox_not_found"
    with pytest.raises(SandboxNotFound):
        Sandbox.connect("sb-nope", base_url=server.url, api_key=server.api_key).info()


def test_malformed_body_is_422_with_fields(server: ServerProcess) -> None:
    with server.client() as c:
        r = c.post("/v1/sandboxes", json={"cpu": "lots", "memmory_mb": 1})
        assert r.status_code == 422
        locs = {tuple(f["loc"]) for f in r.json()["error"]["fields"]}
        assert ("body", "cpu") in locs and ("body", "memmory_mb") in locs
        r = c.post(
            "/v1/sandboxes", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert r.status_code == 422
    with pytest.raises(InvalidRequest):
        Sandbox.create(memory_mb=1, base_url=server.url, api_key=server.api_key)


def test_missing_or_wrong_key_is_401(server: ServerProcess) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "nope"}):
        r = httpx.get(server.url + "/v1/sandboxes", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    with pytest.raises(AuthenticationError):
        Sandbox.list(base_url=server.url, api_key="wrong")


def test_body_over_limit_is_413(server: ServerProcess, sb: Sandbox) -> None:
    with server.client() as c:
        r = c.post(f"/v1/sandboxes/{sb.id}/exec", content=b"x" * (17 * 1024 * 1024))
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_invalid_sandbox_id_is_422_with_the_rule(server: ServerProcess) -> None:
    with server.client() as c:
        for bad in ("UPPER", "-leading", "a" * 64, "under_score"):
            r = c.put(f"/v1/sandboxes/{bad}", json={})
            assert r.status_code == 422, bad
            body = r.json()["error"]
            assert body["code"] == "invalid_sandbox_id" and "a-z" in body["message"]


def test_exec_needs_exactly_one_of_command_or_argv(server: ServerProcess, sb: Sandbox) -> None:
    with server.client() as c:
        for body in ({}, {"command": "true", "argv": ["true"]}, {"argv": []}):
            assert c.post(f"/v1/sandboxes/{sb.id}/exec", json=body).status_code == 422


def test_unknown_image_is_404(server: ServerProcess) -> None:
    with server.client() as c:
        r = c.post("/v1/sandboxes", json={"image": "no-such-image"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "image_not_found"


def test_openapi_document(server: ServerProcess) -> None:
    doc = httpx.get(server.url + "/openapi.json").json()
    assert "/v1/sandboxes/{sandbox_id}/exec/stream" in doc["paths"]
