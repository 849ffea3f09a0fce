"""Interactive terminals: PTYs in the agent, the WebSocket, the SDK and bad input."""

from __future__ import annotations

import json
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from hutch import InvalidRequest, Sandbox
from hutch.sdk import NotFoundError
from tests._server import ServerProcess

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def sb(server: ServerProcess) -> Sandbox:
    box = Sandbox.create(base_url=server.url, api_key=server.api_key, labels={"suite": "term"})
    yield box
    box.destroy()


def _ws_url(server: ServerProcess, path: str) -> str:
    return "ws://" + server.url.split("://", 1)[1] + path


def test_shell_runs_commands_with_a_real_tty(sb: Sandbox) -> None:
    t = sb.terminal(cols=100, rows=30, shell="bash")
    try:
        t.send("echo $TERM; stty size; tty; printf 'caf\\xc3\\xa9 \\xe2\\x9c\\x93\\n'\n")
        out = t.read_until("café ✓\r\n".encode())
        assert b"xterm-256color" in out
        assert b"30 100" in out
        assert b"/dev/pts/" in out
    finally:
        t.close()


def test_resize_reaches_the_program(sb: Sandbox) -> None:
    t = sb.terminal(cols=80, rows=24)
    try:
        t.resize(132, 43)
        t.send("stty size\n")
        t.read_until(b"43 132")
        with pytest.raises(InvalidRequest):
            t.resize(0, 24)
        with pytest.raises(InvalidRequest):
            t.resize(80, 100_000)
    finally:
        t.close()


def test_ctrl_c_reaches_the_foreground_job_and_exit_code_is_reported(sb: Sandbox) -> None:
    t = sb.terminal()
    # Wait for the job to run (the echo prints before it): a ^C that comes first reaches the
    # shell instead, and a loaded machine (or gVisor) can take longer than any fixed pause.
    t.send("echo st''arted; sleep 1000\n")
    t.read_until(b"started")
    time.sleep(0.5)
    t.send(b"\x03")
    t.send("echo after-$?\n")
    t.read_until(b"after-130")
    t.send("exit 7\n")
    assert t.wait(timeout=30) == 7
    assert t.exit_code == 7


def test_several_terminals_and_replay_after_a_dropped_client(sb: Sandbox) -> None:
    a = sb.terminal()
    b = sb.terminal()
    try:
        assert a.id != b.id
        ids = {t["id"] for t in sb.list_terminals()}
        assert {a.id, b.id} <= ids
        # 300 KiB of output while attached, then the client drops without closing.
        a.send("head -c 307200 /dev/zero | tr '\\0' x; echo; echo END-OF-OUTPUT\n")
        a.read_until(b"END-OF-OUTPUT\r\n")
        a.detach()
        b.send("echo only-in-b\n")
        b.read_until(b"only-in-b\r\n")
        again = sb.attach_terminal(a.id)
        replay = bytearray()
        while b"END-OF-OUTPUT\r\n" not in replay[-100:] or replay.count(b"x") < 307200:
            replay += again.recv(timeout=30)
        assert replay.count(b"x") >= 300 * 1024  # >= 256 KiB replayed, shell still there
        again.send("echo still-alive\n")
        again.read_until(b"still-alive\r\n")
        again.close()
    finally:
        b.close()
    with pytest.raises(NotFoundError):
        sb.attach_terminal(a.id)


def test_idle_terminal_is_closed(sb: Sandbox) -> None:
    t = sb.terminal(idle_timeout=1)
    t.detach()
    time.sleep(2.5)
    assert t.id not in {x["id"] for x in sb.list_terminals()}


def test_websocket_without_a_valid_key_is_closed_4401_and_starts_nothing(
    sb: Sandbox, server: ServerProcess
) -> None:
    before = sb.list_terminals()
    t = sb.terminal()
    try:
        path = f"/v1/sandboxes/{sb.id}/terminals/{t.id}/ws"
        for headers, protocols in (
            ({}, ["hutch.terminal.v1"]),
            ({"Authorization": "Bearer hk_wrong"}, ["hutch.terminal.v1"]),
            ({}, ["hutch.terminal.v1", "hutch.key.hk_wrong"]),
        ):
            with connect(
                _ws_url(server, path), additional_headers=headers, subprotocols=protocols
            ) as ws:
                with pytest.raises(ConnectionClosed) as info:
                    ws.recv(timeout=10)
                assert info.value.rcvd is not None and info.value.rcvd.code == 4401
        # The key as a subprotocol (what a browser does) works.
        with connect(
            _ws_url(server, path),
            subprotocols=["hutch.terminal.v1", f"hutch.key.{server.api_key}"],
        ) as ws:
            hello = json.loads(ws.recv(timeout=10))
            assert hello["type"] == "attached" and hello["id"] == t.id
            assert ws.subprotocol == "hutch.terminal.v1"
            ws.send(json.dumps({"type": "resize", "cols": 0, "rows": 10}))
            while True:
                msg = ws.recv(timeout=10)
                if isinstance(msg, str):
                    error = json.loads(msg)
                    break
            assert error["type"] == "error" and error["code"] == "invalid_size"
        assert len(sb.list_terminals()) == len(before) + 1
    finally:
        t.close()


def test_unknown_terminal_is_404(sb: Sandbox, server: ServerProcess) -> None:
    with server.client() as http:
        r = http.post(
            f"/v1/sandboxes/{sb.id}/terminals/pty-nope/resize", json={"cols": 8, "rows": 8}
        )
        assert r.status_code == 404 and r.json()["error"]["code"] == "terminal_not_found"
        r = http.post(f"/v1/sandboxes/{sb.id}/terminals", json={"cols": 0, "rows": 24})
        assert r.status_code == 422
        t = sb.terminal()
        for size, field in (
            ({"cols": 0, "rows": 24}, "cols"),
            ({"cols": 80, "rows": 10**5}, "rows"),
        ):
            r = http.post(f"/v1/sandboxes/{sb.id}/terminals/{t.id}/resize", json=size)
            assert r.status_code == 422 and field in r.json()["error"]["message"]
        t.close()
        r = http.post(f"/v1/sandboxes/{sb.id}/terminals", json={"shell": "no-such-shell"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "shell_not_found"
        assert (
            "/v1/sandboxes/{sandbox_id}/terminals/{terminal_id}/ws"
            in http.get("/openapi.json").json()["paths"]
        )
    path = f"/v1/sandboxes/{sb.id}/terminals/pty-nope/ws"
    with connect(
        _ws_url(server, path), additional_headers={"Authorization": f"Bearer {server.api_key}"}
    ) as ws:
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
        assert info.value.rcvd is not None and info.value.rcvd.code == 4404
    with pytest.raises(NotFoundError):
        sb.attach_terminal("pty-nope")


def _tmux(*args: str) -> str:
    import subprocess

    return subprocess.run(
        ["tmux", "-L", "hutch-test", *args], check=True, capture_output=True, text=True
    ).stdout


def _wait_for_pane(session: str, text: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = _tmux("capture-pane", "-p", "-t", session)
        if text in screen:
            return screen
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared on the screen:\n{screen}")


def test_cli_shell_in_tmux_renders_top_resizes_and_exits_with_the_code(
    sb: Sandbox, server: ServerProcess
) -> None:
    import shlex
    import sys
    from pathlib import Path

    hutch = Path(sys.executable).parent / "hutch"
    session = "hutch-shell"
    command = (
        f"HUTCH_URL={server.url} HUTCH_API_KEY={server.api_key} "
        f"{shlex.quote(str(hutch))} shell {sb.id}; echo SHELL-EXITED-$?; sleep 600"
    )
    _tmux("new-session", "-d", "-s", session, "-x", "100", "-y", "30", command)
    try:
        _wait_for_pane(session, ":/workspace#")  # the remote prompt
        _tmux("send-keys", "-t", session, "stty size", "Enter")
        _wait_for_pane(session, "30 100")
        _tmux("send-keys", "-t", session, "top", "Enter")
        screen = _wait_for_pane(session, "load average")
        assert "PID" in screen and "COMMAND" in screen
        _tmux("send-keys", "-t", session, "q")
        _tmux("resize-window", "-t", session, "-x", "120", "-y", "40")
        # NB: the new size travels tmux -> the CLI -> the server -> the agent; a `stty size`
        # run before it arrived prints the old one (seen under gVisor on a busy host), so
        # ask again until the program sees the new size, for 30 s at most.
        deadline = time.monotonic() + 30
        while True:
            _tmux("send-keys", "-t", session, "clear; stty size", "Enter")
            try:
                _wait_for_pane(session, "40 120", timeout=2.0)
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
        _tmux("send-keys", "-t", session, "exit 3", "Enter")
        _wait_for_pane(session, "SHELL-EXITED-3")
    finally:
        _tmux("kill-server")


def test_a_terminal_is_reachable_only_through_its_own_sandbox(
    sb: Sandbox, server: ServerProcess
) -> None:
    other = Sandbox.create(base_url=server.url, api_key=server.api_key, labels={"suite": "term"})
    t = sb.terminal()
    try:
        with pytest.raises(NotFoundError):
            other.attach_terminal(t.id)
        with server.client() as http:
            r = http.delete(f"/v1/sandboxes/{other.id}/terminals/{t.id}")
            assert r.status_code == 404
        # A process in the terminal is seen in its own sandbox (the positive control) and not
        # from inside the other one.
        marker = "term-marker-" + t.id
        t.send(f"sh -c 'echo started; sleep 600' {marker}\n")
        t.read_until(b"started\r\n")
        assert marker in sb.exec("ps -eo args").stdout
        assert marker not in other.exec("ps -eo args").stdout
        assert other.exec("ls /dev/pts").stdout.split() == ["ptmx"]
        t.send("\x03echo mine\n")
        t.read_until(b"mine\r\n")
    finally:
        t.close()
        other.destroy()


async def test_async_sdk_terminal(sb: Sandbox, server: ServerProcess) -> None:
    from hutch import AsyncClient, AsyncSandbox

    async with AsyncClient(base_url=server.url, api_key=server.api_key) as client:
        asb = AsyncSandbox(sb.id, client=client)
        t = await asb.terminal(cols=90, rows=20, shell="bash")
        await t.send("stty size; exit 5\n")
        out = await t.read_until(b"20 90")
        assert b"20 90" in out
        assert await t.wait(timeout=30) == 5
        again = await asb.attach_terminal(t.id)  # an exited terminal still replays, then ends
        replay = await again.read_until(b"20 90")
        assert b"stty size" in replay
        assert await again.wait(timeout=30) == 5
        await again.close()


def test_closing_a_terminal_ends_every_attached_client(sb: Sandbox) -> None:
    t = sb.terminal()
    watcher = sb.attach_terminal(t.id)
    t.send("sleep 1000 &\n")  # a background job dies with the terminal too
    t.close()
    assert watcher.wait(timeout=30) == -1 and watcher.exit_code is None
    watcher.close()  # already gone: a no-op
    assert t.id not in {x["id"] for x in sb.list_terminals()}
    # SIGKILL is sent by then; the process may take a moment to be gone on a loaded machine.
    deadline = time.monotonic() + 10
    while "sleep 1000" in sb.exec("ps -eo args").stdout:
        assert time.monotonic() < deadline, "the terminal's background job outlived it"
        time.sleep(0.1)


def test_cli_shell_with_piped_input_and_bad_input(sb: Sandbox, server: ServerProcess) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    hutch = str(Path(sys.executable).parent / "hutch")
    env = dict(os.environ, HUTCH_URL=server.url, HUTCH_API_KEY=server.api_key)
    r = subprocess.run(
        [hutch, "shell", sb.id],
        input=b"echo piped-$((2+2))\nexit 4\n",
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 4 and b"piped-4" in r.stdout
    r = subprocess.run(
        [hutch, "shell", sb.id, "--shell", "zsh"], capture_output=True, env=env, timeout=120
    )
    assert r.returncode == 1 and b"shell_not_found" in r.stderr
    r = subprocess.run([hutch, "shell", "sb-nope"], capture_output=True, env=env, timeout=120)
    assert r.returncode == 1 and b"sandbox_not_found" in r.stderr
