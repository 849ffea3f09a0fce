"""Background processes end to end: real server, real runc sandboxes, the sync SDK."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hutch import CommandTimeout, InvalidRequest, Sandbox, SessionNotFound
from hutch.sdk import (
    LogEvent,
    ProcessExited,
    ProcessNotFound,
    ProcessNotRunning,
    ProcessTimeout,
)
from tests._server import HUTCH_BIN, ServerProcess, wait_for
from tests.conftest import _cleanup_home

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def sb(server: ServerProcess) -> Iterator[Sandbox]:
    box = Sandbox.create(base_url=server.url, api_key=server.api_key)
    yield box
    box.destroy()


def test_start_list_get_wait_and_logs(sb: Sandbox) -> None:
    p = sb.start_process("echo out; echo err >&2; exit 3", process_id="three")
    assert p.id == "three" and p.pid > 0
    info = p.wait(timeout=30)
    assert info.status == "failed" and info.exit_code == 3
    logs = p.logs()
    assert logs.stdout == "out\n" and logs.stderr == "err\n"
    assert "three" in [q.id for q in sb.list_processes()]
    assert sb.get_process("three").status == "failed"
    ok = sb.start_process(["sh", "-c", "exit 0"])
    assert ok.wait(timeout=30).status == "completed"


def test_logs_are_kept_on_the_sandbox_disk_not_in_user_dirs(sb: Sandbox) -> None:
    p = sb.start_process("echo kept-on-disk")
    p.wait(timeout=30)
    r = sb.exec(f"cat /var/lib/hutch-agent/procs/{p.id}/stdout.0; ls -ld /var/lib/hutch-agent")
    assert r.stdout.startswith("kept-on-disk\n") and "drwx------" in r.stdout


def test_stream_logs_replays_then_follows(sb: Sandbox) -> None:
    p = sb.start_process("for i in 1 2 3; do echo line$i; sleep 0.3; done")
    events = list(p.stream_logs(since=0))
    assert b"".join(e.data for e in events if e.type == "stdout") == b"line1\nline2\nline3\n"
    again = list(p.stream_logs(since=6))
    assert b"".join(e.data for e in again) == b"line2\nline3\n"
    assert again[0].offset == 6
    assert p.status == "completed"


def test_wait_for_log_sees_earlier_output_and_regex(sb: Sandbox) -> None:
    p = sb.start_process("echo ready at 42; sleep 30")
    time.sleep(0.5)
    assert p.wait_for_log("ready", timeout=30) == "ready"
    assert p.wait_for_log(re.compile(r"at (\d+)"), timeout=30) == "at 42"
    with pytest.raises(ProcessTimeout):
        p.wait_for_log("never", timeout=0.5)
    p.kill("SIGKILL")
    assert p.wait(timeout=30).status == "killed"
    q = sb.start_process("echo bye")
    with pytest.raises(ProcessExited):
        q.wait_for_log("hello", timeout=30)
    with pytest.raises(ProcessTimeout):
        sb.start_process("sleep 30").wait(timeout=0.5)


def test_kill_reaches_the_whole_tree_with_any_signal(sb: Sandbox) -> None:
    p = sb.start_process(
        "trap 'echo got-usr1; exit 0' USR1; sleep 300 & (setsid sleep 301 &); "
        "while :; do sleep 0.1; done"
    )
    time.sleep(0.5)
    p.kill("USR1")
    assert p.wait(timeout=30).status == "completed"
    assert "got-usr1" in p.logs().stdout
    q = sb.start_process("sleep 302 & (setsid sleep 303 &) ; sleep 304")
    time.sleep(0.5)
    q.kill(9)
    assert q.wait(timeout=30).status == "killed"
    time.sleep(0.3)
    left = sb.exec("ps -eo args | grep -c '^sleep 30[234]' || true").stdout.strip()
    assert left == "0"
    with pytest.raises(InvalidRequest) as e:
        q.kill("SIGNOPE")
    assert "SIGTERM" in str(e.value)


def test_a_timeout_kills_the_tree_at_its_deadline_with_nobody_connected(
    sb: Sandbox, server: ServerProcess
) -> None:
    # Its children go too, one of them in a session of its own; nothing follows its logs or
    # waits on it meanwhile (only short GETs), so the sandbox itself must hold the deadline.
    count = "pgrep -c -f '^sleep 31[123]$' || true"
    p = sb.start_process("sleep 311 & (setsid sleep 312 &); echo up; sleep 313", timeout=2)
    started = time.monotonic()
    assert p.wait_for_log("up", timeout=30) == "up"
    running = sb.exec(count).stdout
    if time.monotonic() - started < 1.5:  # the control: the tree really ran (a quiet machine)
        assert running == "3\n"
        assert sb.get_process(p.id).status == "running"
    wait_for(lambda: not sb.get_process(p.id).info.running, 30)
    info = p.refresh()
    assert (info.status, info.signal, info.timed_out) == ("killed", 9, True), info
    assert info.ended_at is not None and info.ended_at - info.started_at >= 2.0  # not before
    assert sb.exec(count).stdout == "0\n"
    assert any(q.id == p.id and q.info.timed_out for q in sb.list_processes())

    # Only the deadline says timed_out: not a process that ended first, nor one killed by a
    # caller before its deadline.
    quick = sb.start_process("exit 3", timeout=60)
    assert (quick.wait(timeout=30).status, quick.timed_out) == ("failed", False)
    killed = sb.start_process("sleep 314", timeout=60)
    killed.kill("SIGKILL")
    info = killed.wait(timeout=30)
    assert (info.status, info.timed_out) == ("killed", False)

    with server.client() as c:
        base = f"/v1/sandboxes/{sb.id}/processes"
        for bad in (0, -1, "soon", 7 * 24 * 3600 + 1):
            r = c.post(base, json={"command": "sleep 315", "timeout": bad})
            assert r.status_code == 422, (bad, r.text)
            assert r.json()["error"]["code"] == "invalid_request"
            assert "timeout" in r.json()["error"]["message"]
    assert sb.exec("pgrep -c -f '^sleep 315$' || true").stdout == "0\n"  # none started


def test_stdin_drives_a_repl(sb: Sandbox) -> None:
    p = sb.start_process(["python3", "-i", "-q", "-u"])
    p.write_stdin("print(6 * 7)\n")
    assert p.wait_for_log("42", timeout=30) == "42"
    p.close_stdin()
    assert p.wait(timeout=30).status == "completed"
    with pytest.raises(ProcessNotRunning):
        p.write_stdin(b"more")


def test_wait_for_port(sb: Sandbox) -> None:
    p = sb.start_process("sleep 0.5; exec python3 -m http.server 8123 --bind 127.0.0.1")
    p.wait_for_port(8123, mode="http", path="/", timeout=30)
    p.wait_for_port(8123, timeout=30)
    p.kill()
    q = sb.start_process("sleep 0.2")
    with pytest.raises(ProcessExited):
        q.wait_for_port(8124, timeout=30)


def test_truncation_is_reported(sb: Sandbox) -> None:
    p = sb.start_process("head -c 200000 /dev/zero", log_limit=16384)
    info = p.wait(timeout=30)
    assert info.truncated and info.stdout_bytes == 200000 and info.stdout_start > 0
    data = b"".join(e.data for e in p.stream_logs(since=0))
    assert len(data) == 200000 - info.stdout_start


def test_set_env_vars_applies_to_new_commands(sb: Sandbox) -> None:
    sb.set_env_vars({"HUTCH_GREETING": "hello"})
    assert sb.exec("echo $HUTCH_GREETING").stdout == "hello\n"
    p = sb.start_process("echo $HUTCH_GREETING")
    p.wait(timeout=30)
    assert p.logs().stdout == "hello\n"
    sb.set_env_vars({"HUTCH_GREETING": None})
    assert sb.exec("echo ${HUTCH_GREETING:-unset}").stdout == "unset\n"


def test_bad_input_codes(sb: Sandbox, server: ServerProcess) -> None:
    with pytest.raises(ProcessNotFound):
        sb.get_process("no-such-process")
    with server.client() as c:
        _bad_input_codes(sb, c)


def _bad_input_codes(sb: Sandbox, c: httpx.Client) -> None:
    base = f"/v1/sandboxes/{sb.id}/processes"
    r = c.post(f"{base}/nope/kill", json={"signal": "SIGTERM"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "process_not_found"
    p = sb.start_process("sleep 30")
    r = c.post(f"{base}/{p.id}/kill", json={"signal": "SIGBOGUS"})
    assert r.status_code == 422 and "SIGKILL" in r.json()["error"]["message"]
    r = c.post(f"{base}/{p.id}/wait-for-port", json={"port": 70000})
    assert r.status_code == 422
    r = c.post(f"{base}/{p.id}/wait-for-port", json={"port": 0})
    assert r.status_code == 422
    p.kill("KILL")
    p.wait(timeout=30)
    r = c.post(f"{base}/{p.id}/stdin", content=b"x")
    assert r.status_code == 409 and r.json()["error"]["code"] == "process_not_running"
    # kill_all_processes ends every running background process, says which, and spares the
    # finished ones (a positive control that it does not just return every id it knows).
    done = sb.start_process("true")
    done.wait(timeout=30)
    running = [sb.start_process(f"sleep 600{i}") for i in (1, 2)]
    count = "pgrep -c -f '^sleep 600[12]$' || true"
    wait_for(lambda: sb.exec(count).stdout == "2\n", 30)  # both really run (the control)
    killed = sb.kill_all_processes()
    assert {q.id for q in running} <= set(killed) and done.id not in killed, killed
    for q in running:
        assert q.wait(timeout=30).status == "killed"
    assert sb.exec(count).stdout == "0\n"
    assert sb.get_process(done.id).status == "completed"


def test_sandbox_code_cannot_read_other_process_logs_as_a_user(sb: Sandbox) -> None:
    # The state dir is root-only: an unprivileged user in the sandbox cannot read it.
    r = sb.exec("ls /var/lib/hutch-agent/procs", user="nobody")
    assert r.exit_code != 0


# -- never lose a byte across a server kill -9 ---------------------------------------------------


@pytest.fixture()
def own_server(busybox_image: str) -> Iterator[ServerProcess]:
    srv = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-procs-", dir="/var/tmp")))
    srv.start()
    yield srv
    srv.stop()
    _cleanup_home(srv)


def test_stream_survives_server_kill_9_exactly_once(own_server: ServerProcess) -> None:
    box = Sandbox.create(base_url=own_server.url, api_key=own_server.api_key)
    try:
        p = box.start_process(
            "for i in $(seq 1 20); do seq $((($i-1)*100000+1)) $(($i*100000)); sleep 0.15; done"
        )
        got = bytearray()
        events: list[LogEvent] = []
        killed = threading.Event()

        def kill_and_restart() -> None:
            while len(got) < 2_000_000:
                time.sleep(0.01)
            own_server.kill9()
            time.sleep(0.5)
            own_server.start()
            killed.set()

        t = threading.Thread(target=kill_and_restart)
        t.start()
        for event in p.stream_logs(since=0):
            assert event.offset == len(got), "a byte was lost or repeated"
            got += event.data
            events.append(event)
        t.join()
        assert killed.is_set()
        assert bytes(got) == b"".join(b"%d\n" % i for i in range(1, 2_000_001))
    finally:
        box.destroy()


# -- sessions -----------------------------------------------------------------------------------


def test_session_keeps_state_and_survives_a_timeout(sb: Sandbox) -> None:
    s = sb.create_session(cwd="/tmp", env={"B": "2"})
    assert s.exec("pwd; echo $B").stdout == "/tmp\n2\n"
    s.exec("cd / && export A=1 && greet() { echo hi $1; }")
    assert s.exec("pwd; echo $A; greet you").stdout == "/\n1\nhi you\n"
    with pytest.raises(CommandTimeout):
        s.exec("sleep 60", timeout=0.5)
    assert s.exec("echo $A").stdout == "1\n"
    other = sb.start_process("sleep 60")
    sb.delete_session(s.id)
    assert other.refresh().status == "running", "deleting a session killed another process"
    other.kill("KILL")
    with pytest.raises(SessionNotFound):
        s.exec("true")


def test_session_runs_one_command_at_a_time(sb: Sandbox) -> None:
    s = sb.create_session()
    log = "/tmp/session-order.log"

    def run(tag: str) -> None:
        s.exec(f"echo start-{tag} >> {log}; sleep 0.4; echo end-{tag} >> {log}")

    threads = [threading.Thread(target=run, args=(tag,)) for tag in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = sb.read_file(log, text=True).split()
    # Whatever order they were queued in, no command started before the previous one ended.
    assert len(lines) == 6
    for i in range(0, 6, 2):
        assert lines[i].startswith("start-") and lines[i + 1] == "end-" + lines[i][6:], lines
    s.delete()


def test_cli_start_ps_logs_kill(sb: Sandbox, server: ServerProcess) -> None:
    env = {**os.environ, "HUTCH_URL": server.url, "HUTCH_API_KEY": server.api_key}

    def hutch(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(HUTCH_BIN), *args], env=env, capture_output=True, text=True, timeout=60
        )

    # NB: it must outlive the test: with `sleep 60` a loaded CI machine once took over 60 s
    # for the CLI calls below, and the kill found a process that had completed by itself.
    r = hutch("start", sb.id, "--name", "cli-proc", "--", "echo from-cli; sleep 600")
    assert r.returncode == 0 and r.stdout.strip() == "cli-proc", r.stderr
    sb.get_process("cli-proc").wait_for_log("from-cli", timeout=30)
    r = hutch("ps", sb.id)
    assert "cli-proc" in r.stdout and "running" in r.stdout
    assert hutch("logs", sb.id, "cli-proc").stdout == "from-cli\n"
    assert hutch("logs", sb.id, "cli-proc", "--since", "5").stdout == "cli\n"
    r = hutch("kill", sb.id, "cli-proc", "-s", "KILL")
    assert r.returncode == 0, r.stderr
    r = hutch("logs", sb.id, "cli-proc", "-f")
    assert r.stdout == "from-cli\n"
    assert sb.get_process("cli-proc").status == "killed"
    r = hutch("kill", sb.id, "cli-proc", "-s", "NOPE")
    assert r.returncode == 1 and "SIGTERM" in r.stderr
    r = hutch("logs", sb.id, "nope")
    assert r.returncode == 1 and "nope" in r.stderr
    r = hutch("start", sb.id, "--name", "cli-brief", "--timeout", "0.5", "--", "sleep 600")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: not sb.get_process("cli-brief").info.running, 30)
    row = [line for line in hutch("ps", sb.id).stdout.splitlines() if "cli-brief" in line]
    assert row and "timed out" in row[0], row


# -- backpressure ---------------------------------------------------------------------------------


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _agent_host_pid(sandbox_id: str) -> int:
    """The sandbox's agent as the host sees it: in the sandbox's cgroup, running Python."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if sandbox_id not in (entry / "cgroup").read_text():
                continue
            if (entry / "cmdline").read_bytes() == b"hutch-agent\0":
                return int(entry.name)
        except OSError:
            continue
    raise AssertionError(f"no agent process found for {sandbox_id}")


def test_2gb_to_a_slow_reader_keeps_memory_bounded(sb: Sandbox, server: ServerProcess) -> None:
    assert server.proc is not None
    server_pid = server.proc.pid
    agent_pid = _agent_host_pid(sb.id)
    server_before, agent_before = _rss_mb(server_pid), _rss_mb(agent_pid)
    size = 2 << 30
    got = 0
    peak_server = peak_agent = 0.0
    slow_until = time.monotonic() + 4.0
    for i, event in enumerate(sb.exec_stream(f"head -c {size} /dev/zero")):
        got += len(event.data)
        if time.monotonic() < slow_until:
            time.sleep(0.05)  # a slow reader: the server and the agent must not buffer for it
            if i % 10 == 0:
                peak_server = max(peak_server, _rss_mb(server_pid))
                peak_agent = max(peak_agent, _rss_mb(agent_pid))
        elif i % 200 == 0:
            peak_server = max(peak_server, _rss_mb(server_pid))
    assert got == size
    assert peak_server - server_before < 100, (server_before, peak_server)
    assert peak_agent - agent_before < 100, (agent_before, peak_agent)


def test_a_stalled_logs_reader_does_not_stall_the_sandbox(sb: Sandbox) -> None:
    p = sb.start_process("head -c 50000000 /dev/zero", log_limit=64 << 20)
    p.wait(timeout=60)
    stream = p.stream_logs(since=0)
    first = next(iter(stream))
    assert first.offset == 0
    # The stream is open and unread (its buffers are full); other requests still answer.
    assert sb.exec("echo still-here", timeout=30).stdout == "still-here\n"
    got = len(first.data) + sum(len(e.data) for e in stream)
    assert got == 50_000_000


def test_process_ids_cannot_escape_and_sandboxes_do_not_share_processes(
    sb: Sandbox, server: ServerProcess
) -> None:
    for bad in ("../../etc", ".hidden", "a/b", "x" * 200):
        with pytest.raises(InvalidRequest):
            sb.start_process("true", process_id=bad)
    p = sb.start_process("sleep 30", process_id="private")
    other = Sandbox.create(base_url=server.url, api_key=server.api_key)
    try:
        with pytest.raises(ProcessNotFound):
            other.get_process("private")
        r = other.exec("ls /var/lib/hutch-agent/procs 2>&1; true")
        assert "private" not in r.stdout
    finally:
        other.destroy()
        p.kill("KILL")
