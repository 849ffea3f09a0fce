"""A cold create answers once its container runs; its agent's answer and its network settle
after (server/services/_starts.py). Every request on the sandbox waits for that: the first
exec sees the network, a pause or destroy right after the create waits for the start, and a
start that fails after the create answered is a 503 with why on the first call, then gone,
with nothing left behind. HUTCH_AGENT_TIMEOUT is checked here too."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from hutch import Sandbox
from hutch.sdk import SandboxNotFound
from hutch.server import ServerConfig
from tests._server import ServerProcess, serve_refusal
from tests.conftest import _cleanup_home


def _leftovers(server: ServerProcess) -> dict[str, set[str]]:
    storage = server.home / "storage"
    return {
        "subvolumes": {p.name for p in storage.iterdir() if not p.name.startswith(".")},
        "bundles": {p.name for p in (server.home / "sandboxes").iterdir()},
    }


@pytest.mark.sandbox
def test_calls_made_right_after_a_create_wait_for_its_agent_and_network(
    server: ServerProcess, busybox_image: str
) -> None:
    """An exec, a file write and an info sent at once, the moment the create answered: all
    succeed, and the exec already sees eth0 with its address (the attach has settled)."""
    opts = {"base_url": server.url, "api_key": server.api_key}
    for _ in range(3):
        sb = Sandbox.create(image=busybox_image, **opts)
        try:
            with ThreadPoolExecutor(3) as pool:
                addr = pool.submit(sb.exec, "ip -4 -o addr show eth0")
                write = pool.submit(sb.write_file, "/tmp/early", b"early")
                info = pool.submit(sb.info)
                result = addr.result()
                write.result()
                assert info.result().status == "running"
            assert result.exit_code == 0, result.stderr
            assert " inet " in result.stdout and "/31" in result.stdout, result.stdout
            assert sb.read_file("/tmp/early") == b"early"
        finally:
            sb.destroy()


@pytest.mark.sandbox
def test_a_pause_or_destroy_right_after_a_create_waits_for_its_start(
    server: ServerProcess, busybox_image: str
) -> None:
    """A pause sent the moment the create answered must not freeze the agent halfway
    through its start (its start would then time out and the sandbox be removed): it waits
    for the start, the sandbox pauses, resumes and runs commands. A destroy at once leaves
    nothing behind."""
    opts = {"base_url": server.url, "api_key": server.api_key}
    before = _leftovers(server)
    sb = Sandbox.create(image=busybox_image, **opts)
    try:
        sb.pause()
        assert sb.info().status == "paused"
        sb.resume()
        assert sb.exec("echo back").stdout == "back\n"
    finally:
        sb.destroy()
    gone = Sandbox.create(image=busybox_image, **opts)
    gone.destroy()
    assert _leftovers(server) == before
    with pytest.raises(SandboxNotFound):
        gone.info()


@pytest.fixture()
def impatient_server(busybox_image: str) -> Iterator[ServerProcess]:
    """A server that gives an agent 1 ms to answer: no agent starts that fast, so every
    cold start fails after its create answered."""
    srv = ServerProcess(
        Path(tempfile.mkdtemp(prefix="hutch-test-", dir="/var/tmp")),
        extra_env={"HUTCH_AGENT_TIMEOUT": "0.001"},
    )
    srv.start()
    yield srv
    srv.stop()
    _cleanup_home(srv)


@pytest.mark.sandbox
def test_a_start_that_fails_after_the_create_answered_is_a_503_then_gone(
    impatient_server: ServerProcess, busybox_image: str
) -> None:
    server = impatient_server
    headers = {"Authorization": f"Bearer {server.api_key}"}
    before = _leftovers(server)
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as api:
        made = api.post("/v1/sandboxes", json={"image": busybox_image})
        assert made.status_code == 201, made.text
        sandbox_id = made.json()["id"]
        first = api.post(f"/v1/sandboxes/{sandbox_id}/exec", json={"command": "true"})
        assert first.status_code == 503, first.text
        error = first.json()["error"]
        assert error["code"] == "sandbox_start_failed"
        assert f"sandbox {sandbox_id} failed to start" in error["message"], error
        assert "create another" in error["message"], error
        later = api.get(f"/v1/sandboxes/{sandbox_id}")
        assert later.status_code == 404, later.text
    assert _leftovers(server) == before


@pytest.mark.parametrize(
    ("value", "says"),
    [("0", "more than 0"), ("1h", "at most 600"), ("soon", "is not a duration")],
)
def test_a_bad_agent_timeout_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, value: str, says: str
) -> None:
    monkeypatch.setenv("HUTCH_AGENT_TIMEOUT", value)
    with pytest.raises(ValueError, match="HUTCH_AGENT_TIMEOUT") as caught:
        ServerConfig.from_env()
    assert says in str(caught.value)
    monkeypatch.setenv("HUTCH_AGENT_TIMEOUT", "2.5s")
    assert ServerConfig.from_env().agent_connect_timeout == 2.5


def test_hutch_serve_stops_with_the_message_on_a_bad_agent_timeout(tmp_path: Path) -> None:
    said = serve_refusal(tmp_path, HUTCH_AGENT_TIMEOUT="0")
    assert "HUTCH_AGENT_TIMEOUT must be more than 0" in said
