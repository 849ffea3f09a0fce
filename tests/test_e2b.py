"""The unmodified e2b SDK (PyPI, pinned) against a real Hutch server and real sandboxes."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from e2b import (
    AsyncSandbox,
    CommandExitException,
    NotFoundException,
    Sandbox,
    SandboxQuery,
)
from e2b.exceptions import AuthenticationException, SandboxException

from tests._server import HUTCH_BIN, ServerProcess

pytestmark = pytest.mark.sandbox


@pytest.fixture()
def e2b_env(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> ServerProcess:
    monkeypatch.setenv("E2B_API_URL", server.url)
    monkeypatch.setenv("E2B_SANDBOX_URL", server.url)
    monkeypatch.setenv("E2B_API_KEY", server.api_key)
    return server


@pytest.fixture()
def sbx(e2b_env: ServerProcess) -> Iterator[Sandbox]:
    sb = Sandbox.create(timeout=300)
    yield sb
    try:
        sb.kill()
    except SandboxException:
        pass


def test_create_info_list_and_kill(e2b_env: ServerProcess) -> None:
    sb = Sandbox.create(metadata={"suite": "e2b", "n": "1"}, envs={"GREETING": "hi"}, timeout=120)
    other = Sandbox.create(metadata={"suite": "e2b", "n": "2"}, allow_internet_access=False)
    try:
        info = sb.get_info()
        assert info.sandbox_id == sb.sandbox_id
        assert info.template_id == "base"
        assert info.metadata == {"suite": "e2b", "n": "1"}
        assert info.state.value == "running"
        assert 100 < (info.end_at - info.started_at).total_seconds() <= 121
        assert sb.commands.run("echo $GREETING").stdout == "hi\n"

        found = Sandbox.list(query=SandboxQuery(metadata={"suite": "e2b", "n": "1"})).next_items()
        assert [s.sandbox_id for s in found] == [sb.sandbox_id]

        pages = Sandbox.list(query=SandboxQuery(metadata={"suite": "e2b"}), limit=1)
        seen = []
        while pages.has_next:
            items = pages.next_items()
            assert len(items) <= 1
            seen += [s.sandbox_id for s in items]
        assert sorted(seen) == sorted([sb.sandbox_id, other.sandbox_id])

        again = Sandbox.connect(sb.sandbox_id)
        assert again.commands.run("echo again").stdout == "again\n"
    finally:
        sb.kill()
        other.kill()
    assert not Sandbox.list(query=SandboxQuery(metadata={"suite": "e2b"})).next_items()
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sb.sandbox_id)


def test_control_plane_errors_have_e2b_shape(e2b_env: ServerProcess) -> None:
    base = e2b_env.url
    key = {"X-API-Key": e2b_env.api_key}
    r = httpx.post(f"{base}/sandboxes", json={"templateID": "no-such-template"}, headers=key)
    assert r.status_code == 404
    body = r.json()
    assert body["code"] == 404 and "no-such-template" in body["message"]

    r = httpx.post(f"{base}/v2/sandboxes", json={"templateID": "base"})
    assert r.status_code == 401 and r.json()["code"] == 401
    r = httpx.get(f"{base}/v2/sandboxes", headers={"X-API-Key": "e2b_" + "0" * 40})
    assert r.status_code == 401

    r = httpx.post(f"{base}/v2/sandboxes", content=b"{not json", headers=key)
    assert r.status_code == 400 and r.json()["code"] == 400
    r = httpx.get(f"{base}/v2/sandboxes", params={"limit": "0"}, headers=key)
    assert r.status_code == 400
    r = httpx.delete(f"{base}/sandboxes/sb-nothere", headers=key)
    assert r.status_code == 404 and "sb-nothere" in r.json()["message"]

    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key="e2b_" + "1" * 40)


def test_commands(sbx: Sandbox) -> None:
    out: list[str] = []
    r = sbx.commands.run("echo out; echo err >&2; printf 'a\\nb\\n'", on_stdout=out.append)
    assert r.stdout == "out\na\nb\n" and r.stderr == "err\n" and r.exit_code == 0
    assert "".join(out) == "out\na\nb\n"

    with pytest.raises(CommandExitException) as exc:
        sbx.commands.run("echo bad >&2; exit 3")
    assert exc.value.exit_code == 3 and exc.value.stderr == "bad\n"

    assert sbx.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"
    assert sbx.commands.run("pwd").stdout == "/home/user\n"  # E2B's home, made if missing
    assert sbx.commands.run("echo $A-$B", envs={"A": "1", "B": "2"}).stdout == "1-2\n"

    h = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.send_stdin(h.pid, "from stdin\n")
    sbx.commands.close_stdin(h.pid)
    assert h.wait().stdout == "from stdin\n"


def test_the_login_shell_of_every_command_is_cheap_and_keeps_its_path(sbx: Sandbox) -> None:
    """Every E2B command runs in `bash -l -c`: the default image's profiles give Debian's
    PATH for `user` and for root, without forking `id` or `mesg` on each command."""
    user_path = "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games"
    root_path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert sbx.commands.run("echo $PATH").stdout == user_path + "\n"
    assert sbx.commands.run("echo $PATH", user="root").stdout == root_path + "\n"
    # What the login shell runs before the command (bash -x traces every command it runs).
    for user in ("user", "root"):
        trace = sbx.commands.run("bash -l -x -c true 2>&1", user=user).stdout
        assert "id -u" not in trace and "mesg" not in trace, trace
    assert sbx.commands.run("sh -l -c 'echo $PATH'", user="root").stdout == root_path + "\n"


def test_background_connect_list_kill(sbx: Sandbox) -> None:
    h = sbx.commands.run("sleep 600", background=True)
    assert h.pid in [p.pid for p in sbx.commands.list()]
    # Started without a tag: listed without one (its Hutch id is chosen by the E2B layer).
    assert next(p for p in sbx.commands.list() if p.pid == h.pid).tag is None
    attached = sbx.commands.connect(h.pid)
    assert sbx.commands.kill(h.pid)
    with pytest.raises(CommandExitException) as exc:
        attached.wait()
    assert "killed" in (exc.value.error or "")
    assert h.pid not in [p.pid for p in sbx.commands.list()]
    assert not sbx.commands.kill(h.pid)

    later = sbx.commands.run("sleep 0.5; echo late", background=True)
    again = sbx.commands.connect(later.pid)
    assert again.wait().stdout == "late\n"


def test_files(sbx: Sandbox) -> None:
    assert sbx.files.write("rel.txt", "r").path == "/home/user/rel.txt"  # relative: home
    assert sbx.commands.run("cat rel.txt").stdout == "r"
    info = sbx.files.write("/tmp/e2b/a.txt", "hello")
    assert info.path == "/tmp/e2b/a.txt"
    assert sbx.files.read("/tmp/e2b/a.txt") == "hello"
    assert sbx.files.read("/tmp/e2b/a.txt", format="bytes") == bytearray(b"hello")
    data = bytes(range(256)) * 1000
    sbx.files.write("/tmp/e2b/b.bin", data)
    assert bytes(sbx.files.read("/tmp/e2b/b.bin", format="bytes")) == data
    sbx.files.write("/tmp/e2b/z.txt", b"zipped" * 1000, gzip=True)
    assert sbx.files.read("/tmp/e2b/z.txt", gzip=True) == "zipped" * 1000
    sbx.files.write_files(
        [{"path": "/tmp/e2b/m1", "data": "1"}, {"path": "/tmp/e2b/m2", "data": "2"}]
    )
    assert sbx.files.read("/tmp/e2b/m2") == "2"

    assert sbx.files.make_dir("/tmp/e2b/sub/deeper") is True
    assert sbx.files.make_dir("/tmp/e2b/sub/deeper") is False
    names = sorted(e.name for e in sbx.files.list("/tmp/e2b"))
    assert names == ["a.txt", "b.bin", "m1", "m2", "sub", "z.txt"]
    deep = sorted(e.path for e in sbx.files.list("/tmp/e2b", depth=2) if e.type.value == "dir")
    assert deep == ["/tmp/e2b/sub", "/tmp/e2b/sub/deeper"]

    stat = sbx.files.get_info("/tmp/e2b/a.txt")
    assert stat.size == 5 and stat.type.value == "file" and stat.permissions.startswith("-rw")
    moved = sbx.files.rename("/tmp/e2b/a.txt", "/tmp/e2b/c.txt")
    assert moved.path == "/tmp/e2b/c.txt"
    assert not sbx.files.exists("/tmp/e2b/a.txt") and sbx.files.exists("/tmp/e2b/c.txt")
    sbx.files.remove("/tmp/e2b/sub")
    sbx.files.remove("/tmp/e2b/never-was")  # as envd: removing nothing succeeds
    assert not sbx.files.exists("/tmp/e2b/sub/deeper")
    with pytest.raises(NotFoundException):
        sbx.files.read("/tmp/e2b/missing")
    with pytest.raises(NotFoundException):
        sbx.files.get_info("/tmp/e2b/missing")


def test_data_plane_bad_input(e2b_env: ServerProcess, sbx: Sandbox) -> None:
    base = e2b_env.url
    route = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983"}
    token = {"X-Access-Token": sbx._envd_access_token or ""}
    assert httpx.get(f"{base}/health", headers=route).status_code == 204

    r = httpx.get(f"{base}/health", headers={**route, "E2b-Sandbox-Id": "sb-gone"})
    assert r.status_code == 502 and "sandbox sb-gone was not found" in r.json()["message"]

    r = httpx.get(f"{base}/files", params={"path": "/etc/hostname"}, headers=route)
    assert r.status_code == 401
    r = httpx.get(
        f"{base}/files",
        params={"path": "/etc/hostname"},
        headers={**route, "X-Access-Token": "wrong"},
    )
    assert r.status_code == 401

    r = httpx.post(
        f"{base}/filesystem.Filesystem/Stat",
        content=b"{not json",
        headers={**route, **token, "Content-Type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["code"] == "invalid_argument"
    r = httpx.post(
        f"{base}/filesystem.Filesystem/Stat",
        json={"path": "/nope"},
        headers={**route, **token, "Content-Type": "application/json"},
    )
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_signed_urls(e2b_env: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    sb = Sandbox.create()
    try:
        sb.files.write("/tmp/signed.txt", "signed!")
        url = sb.download_url("/tmp/signed.txt", use_signature_expiration=60)
        assert httpx.get(url, headers={"E2b-Sandbox-Id": sb.sandbox_id}).text == "signed!"
        tampered = url.replace("signed.txt", "other.txt")
        r = httpx.get(tampered, headers={"E2b-Sandbox-Id": sb.sandbox_id})
        assert r.status_code == 401
    finally:
        sb.kill()


def test_killed_sandbox_is_reported_gone(e2b_env: ServerProcess) -> None:
    sb = Sandbox.create()
    sb.kill()
    with pytest.raises(SandboxException, match="was not found"):
        sb.commands.run("true")


async def test_async_sdk(e2b_env: ServerProcess) -> None:
    sb = await AsyncSandbox.create()
    try:
        r = await sb.commands.run("echo async")
        assert r.stdout == "async\n"
        await sb.files.write("/tmp/x", "y")
        assert await sb.files.read("/tmp/x") == "y"
    finally:
        await sb.kill()


def test_keys_create_e2b_shape(server: ServerProcess) -> None:
    env = {"HUTCH_URL": server.url, "HUTCH_API_KEY": server.api_key, "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [str(HUTCH_BIN), "keys", "create", "e2b-ci", "--e2b"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    key = out.stdout.strip()
    assert key.startswith("e2b_") and len(key) == 44 and int(key[4:], 16) >= 0
    r = httpx.get(f"{server.url}/v2/sandboxes", headers={"X-API-Key": key})
    assert r.status_code == 200 and isinstance(r.json(), list)


def test_pty(sbx: Sandbox) -> None:
    from e2b import PtySize

    seen = bytearray()
    term = sbx.pty.create(PtySize(rows=30, cols=100))
    sbx.pty.send_stdin(term.pid, b"stty size; echo pty-$((6 * 7)); exit 7\n")
    with pytest.raises(CommandExitException) as exc:
        term.wait(on_pty=seen.extend)
    assert exc.value.exit_code == 7
    text = seen.decode(errors="replace")
    assert "pty-42" in text and "30 100" in text

    seen.clear()
    other = sbx.pty.create(PtySize(rows=24, cols=80))
    sbx.pty.resize(other.pid, PtySize(rows=40, cols=120))
    sbx.pty.send_stdin(other.pid, b"stty size; exit\n")
    other.wait(on_pty=seen.extend)
    assert "40 120" in seen.decode(errors="replace")

    third = sbx.pty.create(PtySize(rows=24, cols=80))
    assert sbx.pty.kill(third.pid)


def test_watch_dir(sbx: Sandbox) -> None:
    sbx.files.make_dir("/tmp/watched")
    handle = sbx.files.watch_dir("/tmp/watched")
    try:
        sbx.files.write("/tmp/watched/new.txt", "x")
        sbx.files.remove("/tmp/watched/new.txt")
        deadline = time.monotonic() + 10
        events: list[tuple[str, str]] = []
        while time.monotonic() < deadline:
            events += [(e.name, e.type.value) for e in handle.get_new_events()]
            if any(kind == "remove" for _, kind in events):
                break
            time.sleep(0.2)
    finally:
        handle.stop()
    names = {name for name, _ in events}
    kinds = {kind for _, kind in events}
    assert "new.txt" in names and "remove" in kinds, events


def test_create_timeout_is_enforced(e2b_env: ServerProcess) -> None:
    sb = Sandbox.create(timeout=2)
    assert sb.is_running()
    deadline = time.monotonic() + 30
    while sb.sandbox_id in [s.sandbox_id for s in Sandbox.list().next_items()]:
        assert time.monotonic() < deadline, "the sandbox outlived its timeout"
        time.sleep(0.5)
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sb.sandbox_id)
    assert not sb.is_running()


def test_command_timeout_fires_and_kills(sbx: Sandbox) -> None:
    from e2b import TimeoutException

    t0 = time.monotonic()
    with pytest.raises(TimeoutException):
        sbx.commands.run("sleep 30; echo never", timeout=1)
    assert time.monotonic() - t0 < 15
    # The client gives up at the deadline and the server kills at that same deadline: allow
    # the kill the moment it takes to land, never the 30 s of the command.
    deadline = time.monotonic() + 3
    while "sleep 30" in sbx.commands.run("ps -eo args").stdout:
        assert time.monotonic() < deadline, "the command outlived its timeout"
        time.sleep(0.1)


def _seconds_left(sandbox_id: str) -> float:
    return (Sandbox.get_info(sandbox_id).end_at - datetime.now(UTC)).total_seconds()


def _hutch_status(server: ServerProcess, sandbox_id: str) -> str:
    """What Hutch's own API says: the two APIs share one lifecycle."""
    answer = httpx.get(
        f"{server.url}/v1/sandboxes/{sandbox_id}",
        headers={"Authorization": f"Bearer {server.api_key}"},
    )
    answer.raise_for_status()
    return str(answer.json()["status"])


def test_pause_keeps_processes_and_files_and_connect_resumes(e2b_env: ServerProcess) -> None:
    sb = Sandbox.create(timeout=300)
    try:
        sleeper = sb.commands.run("sleep 600", background=True)
        sb.files.write("/tmp/mark", "kept")

        assert sb.pause() is True
        assert Sandbox.get_info(sb.sandbox_id).state.value == "paused"
        assert _hutch_status(e2b_env, sb.sandbox_id) == "paused"
        assert Sandbox.pause(sb.sandbox_id) is False  # paused already: E2B's 409

        resumed = Sandbox.connect(sb.sandbox_id, timeout=120)
        assert Sandbox.get_info(sb.sandbox_id).state.value == "running"
        assert _hutch_status(e2b_env, sb.sandbox_id) == "running"
        assert 100 < _seconds_left(sb.sandbox_id) <= 121
        assert resumed.files.read("/tmp/mark") == "kept"
        # Memory was kept: the process started before the pause still runs.
        assert str(sleeper.pid) in resumed.commands.run("ps -eo pid").stdout.split()
    finally:
        sb.kill()


def test_pause_without_memory_keeps_the_disk(e2b_env: ServerProcess) -> None:
    sb = Sandbox.create(timeout=300)
    try:
        sb.files.write("/tmp/mark", "on disk")
        assert sb.pause(keep_memory=False) is True
        assert Sandbox.get_info(sb.sandbox_id).state.value == "paused"
        assert _hutch_status(e2b_env, sb.sandbox_id) == "stopped"
        resumed = Sandbox.connect(sb.sandbox_id)
        assert resumed.files.read("/tmp/mark") == "on disk"
    finally:
        sb.kill()


def test_set_timeout_and_connect_move_the_end(sbx: Sandbox) -> None:
    sbx.set_timeout(30)
    assert 20 < _seconds_left(sbx.sandbox_id) <= 31
    Sandbox.connect(sbx.sandbox_id, timeout=600)
    assert 590 < _seconds_left(sbx.sandbox_id) <= 601
    Sandbox.connect(sbx.sandbox_id, timeout=60)  # connect only ever extends a running one
    assert _seconds_left(sbx.sandbox_id) > 590
    assert sbx.commands.run("echo still").stdout == "still\n"


def test_set_timeout_is_enforced(sbx: Sandbox) -> None:
    sbx.set_timeout(1)
    deadline = time.monotonic() + 30
    while sbx.sandbox_id in [s.sandbox_id for s in Sandbox.list().next_items()]:
        assert time.monotonic() < deadline, "the sandbox outlived its new timeout"
        time.sleep(0.5)


def test_auto_pause_at_the_timeout(e2b_env: ServerProcess) -> None:
    sb = Sandbox.create(timeout=2, lifecycle={"on_timeout": "pause"})
    try:
        deadline = time.monotonic() + 30
        while Sandbox.get_info(sb.sandbox_id).state.value != "paused":
            assert time.monotonic() < deadline, "the sandbox did not pause at its timeout"
            time.sleep(0.5)
        assert Sandbox.connect(sb.sandbox_id).commands.run("echo back").stdout == "back\n"
    finally:
        sb.kill()


def test_list_started_after_counts_a_sandbox_started_at_that_instant(sbx: Sandbox) -> None:
    started = sbx.get_info().started_at
    query = SandboxQuery(started_after=started)
    assert sbx.sandbox_id in [s.sandbox_id for s in Sandbox.list(query=query).next_items()]
    later = SandboxQuery(started_after=started + timedelta(seconds=1))
    assert sbx.sandbox_id not in [s.sandbox_id for s in Sandbox.list(query=later).next_items()]


def test_command_of_a_killed_sandbox_says_it_was_killed(e2b_env: ServerProcess) -> None:
    """The command's stream is cut when its sandbox goes (as E2B's proxy cuts it); the SDK
    then probes the sandbox and says it was killed, not that a connection broke."""
    from e2b.exceptions import SandboxNotRunningException

    sb = Sandbox.create(timeout=120)
    handle = sb.commands.run("sleep 60", background=True)
    sb.kill()
    with pytest.raises(
        SandboxNotRunningException, match="killed or reached its end of life"
    ) as exc:
        handle.wait()
    # Cut with a TCP reset, as E2B's proxy resets the stream: a read error, which every e2b
    # release takes for a dropped connection (2.45 probes the sandbox only then), not a
    # malformed chunked body (2.45 then blamed the sandbox's timeout).
    from e2b.envd.rpc import is_transport_failure

    assert is_transport_failure(exc.value.__context__), repr(exc.value.__context__.__cause__)
