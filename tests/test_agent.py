"""The real agent, run on the host as a subprocess the way a sandbox runs it, driven through
the server's AgentConnection: processes, output, timeouts, trees, connections, memory."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import pytest

from hutch._wire.agent_ops import OpName
from hutch._wire.frames import FRAME_HEADER, Channel, Frame, Kind, encode_frame
from hutch.agent import AGENT_VERSION
from hutch.agent._exec import CHUNK
from hutch.agent._host import HostAgent
from hutch.agent._ops import STREAM_OPS, UNARY_OPS
from hutch.agent._procs import resolve_user
from hutch.agent._requests import InvalidRequest, parse_exec
from hutch.node._agent_client import (
    AgentConnection,
    AgentConnectionClosed,
    AgentDisconnected,
    AgentError,
    AgentStream,
    AgentUnknownOp,
)

HOST_SHELL = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"


@pytest.fixture(scope="module")
def agent() -> Iterator[HostAgent]:
    # PYTHONHOME is set as in a sandbox, to check that children do not inherit it.
    with HostAgent(env={**os.environ, "PYTHONHOME": "/nonexistent"}) as host:
        yield host


@dataclass
class Ran:
    result: dict[str, Any]
    stdout: bytes = b""
    stderr: bytes = b""
    pid: int | None = None
    frames: list[Frame] = field(default_factory=list)


async def collect(stream: AgentStream, *, keep: bool = True) -> Ran:
    """Read a stream to its RESULT, checking the offsets and EOFs as any reader relies on."""
    ran = Ran(result={})
    out = {Channel.STDOUT: bytearray(), Channel.STDERR: bytearray()}
    offsets = {Channel.STDOUT: 0, Channel.STDERR: 0}
    eofs: set[int] = set()
    async with asyncio.timeout(60):
        async for frame in stream:
            ran.frames.append(frame)
            if frame.kind is Kind.EVENT:
                event = frame.json()
                assert event["event"] == "started"
                ran.pid = event["pid"]
            elif frame.kind is Kind.DATA:
                channel = Channel(frame.channel)
                assert channel not in eofs
                assert frame.offset == offsets[channel], "offsets must be contiguous"
                assert 0 < len(frame.payload) <= CHUNK
                offsets[channel] += len(frame.payload)
                if keep:
                    out[channel] += frame.payload
            elif frame.kind is Kind.EOF:
                assert frame.offset == offsets[Channel(frame.channel)]
                eofs.add(frame.channel)
            elif frame.kind is Kind.RESULT:
                ran.result = frame.json()
    if "ok" in ran.result:
        assert eofs == {Channel.STDOUT, Channel.STDERR}
    ran.stdout, ran.stderr = bytes(out[Channel.STDOUT]), bytes(out[Channel.STDERR])
    ran.result["stdout_bytes"] = offsets[Channel.STDOUT]
    return ran


async def run(conn: AgentConnection, stdin: bytes | None = None, **request: Any) -> Ran:
    stream = conn.open_stream({"op": "exec", **request, "stdin": stdin is not None})
    feeder = None
    if stdin is not None:

        async def feed() -> None:
            await stream.send_stdin(stdin)
            await stream.close_stdin()

        # Concurrently: a process that echoes stdin blocks unless its output is read meanwhile.
        feeder = asyncio.create_task(feed())
    ran = await collect(stream)
    if feeder is not None:
        await feeder
    return ran


def state(pid: int) -> str | None:
    """The process's state letter, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (FileNotFoundError, ProcessLookupError):
        return None


def alive(pid: int) -> bool:
    return state(pid) not in (None, "Z", "X")


def pids_running(token: str) -> list[int]:
    """Live processes whose command line holds ``token`` (a unique sleep duration)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if token.encode() in f.read().split(b"\0") and alive(int(name)):
                        found.append(int(name))
            except OSError:
                pass
    return found


async def wait_until(predicate: Any, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())


def unique_sleep() -> str:
    """A sleep duration no other process on the host has, to find and count its processes."""
    return f"{1000 + time.monotonic_ns() % 10**6 / 10**3:.3f}"


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


# -- basics ------------------------------------------------------------------------------------


async def test_ping(agent: HostAgent, conn: AgentConnection) -> None:
    result = await conn.call("ping")
    assert result["pid"] == agent.pid
    assert result["version"] == AGENT_VERSION
    assert result["shell"] == HOST_SHELL
    assert 0 < result["rss_kb"] < 64 * 1024


async def test_exec_echo(conn: AgentConnection) -> None:
    ran = await run(conn, command="echo hello; echo oops >&2")
    assert ran.stdout == b"hello\n"
    assert ran.stderr == b"oops\n"
    assert ran.pid is not None and ran.frames[0].kind is Kind.EVENT
    assert ran.result["ok"] is True
    assert ran.result["exit_code"] == 0
    assert ran.result["timed_out"] is False
    assert ran.result["signal"] is None
    assert 0 <= ran.result["duration"] < 10


async def test_exec_shell_pipeline_and_exit_code(conn: AgentConnection) -> None:
    ran = await run(conn, command="echo hi | tr a-z A-Z; exit 3")
    assert (ran.stdout, ran.result["exit_code"]) == (b"HI\n", 3)


async def test_argv_is_not_shell_parsed(conn: AgentConnection) -> None:
    ran = await run(conn, argv=["printf", "[%s]", "a b", "$HOME", "*"])
    assert ran.stdout == b"[a b][$HOME][*]"


async def test_signal_death_reports_128_plus_signo(conn: AgentConnection) -> None:
    ran = await run(conn, command="kill -TERM $$")
    assert ran.result["exit_code"] == 128 + signal.SIGTERM
    assert ran.result["signal"] == signal.SIGTERM


async def test_stdin_is_streamed_to_the_process(conn: AgentConnection) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    ran = await run(conn, argv=["cat"], stdin=data)
    assert ran.stdout == data
    assert ran.result["exit_code"] == 0


async def test_without_stdin_the_process_reads_dev_null(conn: AgentConnection) -> None:
    ran = await run(conn, argv=["cat"])
    assert ran.stdout == b""
    assert ran.result["exit_code"] == 0


async def test_env_is_merged_and_agent_settings_are_hidden(conn: AgentConnection) -> None:
    ran = await run(conn, command="env", env={"FOO": "bar baz", "PATH": os.environ["PATH"]})
    env = dict(line.split("=", 1) for line in ran.stdout.decode().splitlines() if "=" in line)
    assert env["FOO"] == "bar baz"
    assert "PYTHONHOME" not in env
    assert not [k for k in env if k.startswith("HUTCH_AGENT_")]


async def test_cwd_relative_to_workspace_and_absolute(
    agent: HostAgent, conn: AgentConnection
) -> None:
    (agent.workspace / "sub").mkdir(exist_ok=True)
    ran = await run(conn, command="pwd", cwd="sub")
    assert ran.stdout.decode().strip() == str(agent.workspace / "sub")
    ran = await run(conn, argv=["pwd"], cwd="/tmp")
    assert ran.stdout == b"/tmp\n"


async def test_missing_cwd_is_an_error_result(conn: AgentConnection) -> None:
    with pytest.raises(AgentError) as e:
        await conn.call("exec", command="true", cwd="/no/such/dir")
    assert e.value.code == "cwd_not_found"
    assert "/no/such/dir" in e.value.message


async def test_missing_program_exits_127_with_a_message(conn: AgentConnection) -> None:
    ran = await run(conn, argv=["no-such-program-hutch"])
    assert ran.result["exit_code"] == 127
    assert b"no-such-program-hutch: command not found" in ran.stderr
    ran = await run(conn, command="no-such-program-hutch")
    assert ran.result["exit_code"] == 127


async def test_non_executable_file_exits_126(agent: HostAgent, conn: AgentConnection) -> None:
    path = agent.workspace / "not-executable"
    path.write_text("#!/bin/sh\necho hi\n")
    ran = await run(conn, argv=[str(path)])
    assert ran.result["exit_code"] == 126
    assert b"ermission denied" in ran.stderr


async def test_argv_program_is_found_on_path_as_the_childs_own_walk_would(
    agent: HostAgent, conn: AgentConnection
) -> None:
    # The agent looks argv[0] up itself (one execve instead of the child's walk): what runs,
    # its argv[0] and every failure must stay what the walk gave.
    first, second, rel = (agent.workspace / d for d in ("path-a", "path-b", "path-rel"))
    for d in (first, second, rel):
        d.mkdir(exist_ok=True)
    (first / "hutch-which").write_text("#!/bin/sh\necho first $0\n")  # no execute bit: skipped
    (first / "hutch-which").chmod(0o644)
    (second / "hutch-which").write_text("#!/bin/sh\necho second $0\n")
    (second / "hutch-which").chmod(0o755)
    (second / "hutch-noexec").write_bytes(b"\x7fELF not really\n")  # no #!: ENOEXEC
    (second / "hutch-noexec").chmod(0o755)
    (rel / "hutch-which").write_text("#!/bin/sh\necho relative $0\n")
    (rel / "hutch-which").chmod(0o755)
    path = f"{first}:{second}:/usr/bin:/bin"
    ran = await run(conn, argv=["hutch-which"], env={"PATH": path})
    assert ran.stdout == f"second {second}/hutch-which\n".encode()
    ran = await run(conn, argv=["hutch-noexec"], env={"PATH": path})
    assert ran.result["exit_code"] == 126
    assert b"hutch: hutch-noexec: Exec format error" in ran.stderr
    ran = await run(conn, argv=["hutch-not-there"], env={"PATH": path})
    assert ran.result["exit_code"] == 127
    # A relative entry is the child's cwd's, not the agent's.
    ran = await run(conn, argv=["hutch-which"], env={"PATH": f"path-rel:{path}"})
    assert ran.stdout == b"relative path-rel/hutch-which\n"


async def test_a_process_starts_as_a_shell_would_start_it(
    agent: HostAgent, conn: AgentConnection
) -> None:
    # The child of an exec: its own session, only fds 0-2 (stdin /dev/null), the cwd asked
    # for, SIGPIPE/SIGXFSZ (which the agent's Python ignores) and libc's thread signals
    # (32, 33) not ignored, nothing blocked. Both the argv and the plain-command path; each
    # probe is the exec'd program itself reading its own /proc entry.
    here = agent.workspace / "here"
    here.mkdir(exist_ok=True)

    async def probe(*argv: str) -> list[list[str]]:
        outputs = []
        for request in ({"argv": list(argv)}, {"command": " ".join(argv)}):
            ran = await run(conn, cwd="here", **request)
            assert ran.result["exit_code"] == 0, (request, ran.stderr)
            outputs.append(ran.stdout.decode().splitlines())
        return outputs

    for lines in await probe("cat", "/proc/self/status"):
        status = dict(line.split(":\t", 1) for line in lines)
        assert int(status["SigIgn"], 16) & (1 << 12 | 1 << 24 | 1 << 31 | 1 << 32) == 0
        assert int(status["SigBlk"], 16) == 0
    for lines in await probe("ls", "-l", "/proc/self/fd"):
        fds = dict(
            line.split(" -> ")[0].split()[-1:] + line.split(" -> ")[1:]
            for line in lines
            if " -> " in line and not line.endswith("/fd")  # ls's own directory
        )
        assert sorted(fds) == ["0", "1", "2"] and fds["0"] == "/dev/null", lines
    for lines in await probe("cat", "/proc/self/stat"):
        fields = lines[0].rsplit(")", 1)[1].split()
        assert fields[3] == lines[0].split()[0]  # session id == pid
    for lines in await probe("readlink", "/proc/self/cwd"):
        assert lines == [str(here)]


async def test_output_is_binary_safe(conn: AgentConnection) -> None:
    every_byte = bytes(range(256)) * 3
    code = f"import sys; sys.stdout.buffer.write({every_byte!r}); sys.stderr.buffer.write(b'\\0')"
    ran = await run(conn, argv=[sys.executable, "-I", "-S", "-c", code])
    assert ran.stdout == every_byte
    assert ran.stderr == b"\0"


async def test_output_is_not_line_buffered_by_the_agent(conn: AgentConnection) -> None:
    # The first chunk must arrive while the process is still running.
    stream = conn.open_stream({"op": "exec", "command": "printf partial; sleep 30"})
    async with asyncio.timeout(10):
        async for frame in stream:
            if frame.kind is Kind.DATA:
                assert frame.payload == b"partial"
                break
    await stream.cancel()
    frames = [f async for f in stream]
    assert frames[-1].json()["signal"] == signal.SIGKILL


async def test_large_output_offsets_are_contiguous(conn: AgentConnection) -> None:
    size = 100_000_000
    ran = await collect(
        conn.open_stream({"op": "exec", "argv": ["head", "-c", str(size), "/dev/zero"]}),
        keep=False,
    )
    assert ran.result["exit_code"] == 0
    assert ran.result["stdout_bytes"] == size


# -- timeouts, cancel and process trees --------------------------------------------------------


async def test_timeout_kills_the_whole_tree(conn: AgentConnection) -> None:
    token = unique_sleep()
    ran = await run(conn, argv=["sh", "-c", f"sleep {token} & sleep {token}"], timeout=0.5)
    assert ran.result["timed_out"] is True
    assert ran.result["exit_code"] == 124
    assert await wait_until(lambda: not pids_running(token)), pids_running(token)


async def test_timeout_kills_a_grandchild_in_its_own_session(conn: AgentConnection) -> None:
    token = unique_sleep()
    command = f"setsid sleep {token} & echo $!; sleep {token}"
    ran = await run(conn, command=command, timeout=0.5)
    assert ran.result["timed_out"] is True
    grandchild = int(ran.stdout)
    assert await wait_until(lambda: not alive(grandchild))
    assert not pids_running(token)


async def test_timeout_fires_when_the_process_ignores_sigterm(conn: AgentConnection) -> None:
    ran = await run(conn, command="trap '' TERM INT HUP; while :; do :; done", timeout=0.3)
    assert (ran.result["timed_out"], ran.result["exit_code"]) == (True, 124)


async def test_cancel_kills_the_tree_and_still_answers(conn: AgentConnection) -> None:
    token = unique_sleep()
    stream = conn.open_stream({"op": "exec", "command": f"sleep {token} & sleep {token}"})
    async with asyncio.timeout(10):
        first = await anext(stream)
    assert first.kind is Kind.EVENT
    assert await wait_until(lambda: len(pids_running(token)) == 2)
    await stream.cancel()
    ran = await collect(stream)
    assert ran.result["exit_code"] == 128 + signal.SIGKILL
    assert ran.result["timed_out"] is False
    assert await wait_until(lambda: not pids_running(token))


async def test_a_background_child_does_not_hold_the_exec_open(conn: AgentConnection) -> None:
    token = unique_sleep()
    # A deadline, not a timing: held open, the exec would last as long as the sleep.
    ran = await asyncio.wait_for(run(conn, command=f"sleep {token} & echo $!"), 30)
    assert ran.result["exit_code"] == 0
    background = int(ran.stdout)
    assert alive(background)  # background work is not killed when its shell exits
    os.kill(background, signal.SIGKILL)


# -- connections -------------------------------------------------------------------------------


async def test_concurrent_execs_on_one_connection(conn: AgentConnection) -> None:
    runs = await asyncio.gather(
        *(run(conn, command=f"sleep 0.{i % 3}; echo {i}; echo e{i} >&2") for i in range(25))
    )
    for i, ran in enumerate(runs):
        assert (ran.stdout, ran.stderr) == (f"{i}\n".encode(), f"e{i}\n".encode())


async def test_several_connections_at_once(agent: HostAgent) -> None:
    conns = [await AgentConnection.connect(agent.socket_path, timeout=5) for _ in range(4)]
    try:
        runs = await asyncio.gather(*(run(c, command=f"echo {i}") for i, c in enumerate(conns)))
        assert [r.stdout for r in runs] == [f"{i}\n".encode() for i in range(4)]
    finally:
        for c in conns:
            await c.close()


async def test_dropped_connection_kills_its_execs_and_agent_accepts_again(
    agent: HostAgent,
) -> None:
    token = unique_sleep()
    first = await AgentConnection.connect(agent.socket_path, timeout=5)
    stream = first.open_stream({"op": "exec", "command": f"sleep {token}; sleep {token}"})
    async with asyncio.timeout(10):
        await anext(stream)
    assert await wait_until(lambda: len(pids_running(token)) == 1)
    await first.close()  # as a crashed server would: no CANCEL, the socket just goes
    with pytest.raises(AgentConnectionClosed):
        await anext(stream)
    assert await wait_until(lambda: not pids_running(token))

    second = await AgentConnection.connect(agent.socket_path, timeout=5)
    try:
        assert (await second.call("ping"))["pid"] == agent.pid
    finally:
        await second.close()


async def test_garbage_frames_close_only_that_connection(agent: HostAgent) -> None:
    bystander = await AgentConnection.connect(agent.socket_path, timeout=5)
    try:
        for garbage in (
            b"\xff" * 64,  # unknown kind
            FRAME_HEADER.pack(Kind.DATA, 0, 1, 0, 2**32 - 1),  # announces a 4 GiB payload
            encode_frame(Kind.RESULT, 1, b"{}"),  # a kind only the agent sends
        ):
            with socket.socket(socket.AF_UNIX) as raw:
                raw.settimeout(5)
                raw.connect(str(agent.socket_path))
                raw.sendall(garbage)
                assert raw.recv(100) == b""  # the agent hung up
        assert (await bystander.call("ping"))["pid"] == agent.pid
    finally:
        await bystander.close()


async def test_invalid_requests_name_the_field(conn: AgentConnection) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"nop": 1}, "op"),
        ({"op": "exec", "argv": "echo hi"}, "argv"),
        ({"op": "exec", "argv": ["echo", 1]}, "argv[1]"),
        ({"op": "exec"}, "command"),
        ({"op": "exec", "command": "x", "argv": ["x"]}, "command"),
        ({"op": "exec", "command": "x", "timeout": "soon"}, "timeout"),
        ({"op": "exec", "command": "x", "env": {"A": 1}}, "env.A"),
        ({"op": "exec", "command": "x", "stdin": "yes"}, "stdin"),
        ({"op": "exec", "command": "x", "colour": "red"}, "colour"),
        ({"op": "ping", "extra": True}, "extra"),
    ]
    for request, field_name in cases:
        op = request.pop("op", None)
        stream = conn.open_stream({"op": op, **request} if op else request)
        [frame] = [f async for f in stream]
        error = frame.json()["error"]
        assert error["code"] == "invalid_request", request
        assert error["message"].startswith(f"{field_name}:"), (request, error)


async def test_an_unknown_op_is_its_own_error_listing_the_known_ones(
    conn: AgentConnection,
) -> None:
    stream = conn.open_stream({"op": "fly"})
    [frame] = [f async for f in stream]
    error = frame.json()["error"]
    assert error["code"] == "unknown_op"
    assert "'fly'" in error["message"]
    assert all(op in error["message"] for op in get_args(OpName))
    with pytest.raises(AgentUnknownOp, match="unknown_op"):  # its own class on the server
        await conn.call_untyped("fly")  # type: ignore[arg-type]  # the point: not an op
    assert (await conn.call("ping"))["pid"] > 0  # the connection is still good


def test_the_agent_serves_exactly_the_ops_declared_in_wire() -> None:
    served = [*UNARY_OPS, *STREAM_OPS]
    assert sorted(served) == sorted(get_args(OpName))
    assert len(served) == len(set(served)), "an op is both unary and a stream"


async def test_bad_json_in_open_is_an_invalid_request(agent: HostAgent) -> None:
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(5)
        raw.connect(str(agent.socket_path))
        raw.sendall(encode_frame(Kind.OPEN, 7, b"{not json"))
        header = raw.recv(FRAME_HEADER.size, socket.MSG_WAITALL)
        kind, _, stream, _, length = FRAME_HEADER.unpack(header)
        body = raw.recv(length, socket.MSG_WAITALL)
    assert (Kind(kind), stream) == (Kind.RESULT, 7)
    assert b"invalid_request" in body


async def test_use_after_close_raises(agent: HostAgent) -> None:
    c = await AgentConnection.connect(agent.socket_path, timeout=5)
    await c.close()
    assert c.closed
    with pytest.raises(AgentConnectionClosed):
        await c.call("ping")


async def test_connect_to_nothing_raises_disconnected(tmp_path: Path) -> None:
    with pytest.raises(AgentDisconnected):
        await AgentConnection.connect(tmp_path / "absent.sock", timeout=1)


# -- users -------------------------------------------------------------------------------------


@pytest.mark.sandbox  # needs root (chown, device nodes, switching users)
async def test_user_by_name_and_by_number(conn: AgentConnection) -> None:
    ran = await run(conn, command="id -u; id -g; echo $HOME", user="nobody")
    uid, gid, home = ran.stdout.decode().split()
    assert int(uid) == 65534 and home == resolve_user("nobody").home
    ran = await run(conn, argv=["id", "-u"], user="4242:4243")
    assert ran.stdout == b"4242\n"  # a uid with no passwd entry still works


async def test_unknown_user_is_an_error_result(conn: AgentConnection) -> None:
    with pytest.raises(AgentError) as e:
        await conn.call("exec", command="true", user="no-such-user-hutch")
    assert e.value.code == "user_not_found"


def test_resolve_user_reads_the_images_files(tmp_path: Path) -> None:
    (tmp_path / "passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/x\n")
    (tmp_path / "group").write_text("root:x:0:\napp:x:1000:\ndocker:x:999:app,bob\n")
    app = resolve_user("app", etc=str(tmp_path))
    assert (app.uid, app.gid, app.groups, app.home) == (1000, 1000, [1000, 999], "/home/app")
    assert resolve_user("app:root", etc=str(tmp_path)).gid == 0
    anon = resolve_user("77", etc=str(tmp_path))
    assert (anon.uid, anon.gid, anon.name, anon.home) == (77, 0, None, "/")
    with pytest.raises(LookupError):
        resolve_user("ghost", etc=str(tmp_path))
    with pytest.raises(LookupError):
        resolve_user("app:ghosts", etc=str(tmp_path))


def test_parse_exec_fills_in_defaults() -> None:
    assert parse_exec({"op": "exec", "command": "true"}) == {
        "op": "exec",
        "command": "true",
        "argv": None,
        "env": None,
        "cwd": None,
        "user": None,
        "timeout": None,
        "stdin": False,
    }
    with pytest.raises(InvalidRequest, match="argv"):
        parse_exec({"op": "exec", "argv": ["a\0b"]})


# -- memory, backpressure, lifecycle -----------------------------------------------------------


async def test_idle_agent_stays_under_15_mb() -> None:
    with HostAgent() as fresh:
        c = await AgentConnection.connect(fresh.socket_path, timeout=5)
        try:
            idle = (await c.call("ping"))["rss_kb"]
            await run(c, argv=["true"])
            after_exec = (await c.call("ping"))["rss_kb"]
        finally:
            await c.close()
    assert idle <= 15 * 1024, f"idle agent RSS {idle} kB"
    assert after_exec <= 15 * 1024, f"agent RSS after one exec {after_exec} kB"


async def test_any_op_but_ping_runs_after_the_deferred_start_up() -> None:
    # The agent answers the server's first ping before it retitles itself, turns
    # non-dumpable and loads the exec path (a cold create waits for that answer); whatever
    # else is asked, it is done first.
    with HostAgent() as fresh:
        c = await AgentConnection.connect(fresh.socket_path, timeout=5)
        try:
            await c.call("process_list")
            title = _title(fresh.pid)
        finally:
            await c.close()
    assert title == (b"hutch-agent\0", b"hutch-agent\n")


async def test_an_agent_asked_nothing_but_ping_settles_once_idle() -> None:
    with HostAgent() as fresh:
        c = await AgentConnection.connect(fresh.socket_path, timeout=5)
        try:
            await c.call("ping")
            title = _settled_title(fresh.pid)
            ran = await run(c, argv=["true"])
        finally:
            await c.close()
    assert title == (b"hutch-agent\0", b"hutch-agent\n")
    assert ran.result["exit_code"] == 0


def _settled_title(pid: int) -> tuple[bytes, bytes]:
    # A hang guard, not a timing: the agent settles at its loop's next idle turn.
    deadline = time.monotonic() + 30
    while _title(pid)[0] != b"hutch-agent\0" and time.monotonic() < deadline:
        time.sleep(0.01)
    return _title(pid)


def _title(pid: int) -> tuple[bytes, bytes]:
    """What ps (cmdline) and top (comm) show of a process."""
    return Path(f"/proc/{pid}/cmdline").read_bytes(), Path(f"/proc/{pid}/comm").read_bytes()


def test_idle_callbacks_wait_for_ready_fds_and_timers() -> None:
    from hutch.agent._loop import Loop

    loop = Loop()
    order: list[str] = []
    r, w = os.pipe()
    try:
        os.write(w, b"x")

        def on_readable() -> None:
            order.append("fd")
            loop.remove_reader(r)

        def last() -> None:
            order.append("idle 2")
            loop.stop()

        loop.call_when_idle(lambda: order.append("idle 1"))
        loop.call_when_idle(last)
        loop.add_reader(r, on_readable)
        loop.call_later(0, lambda: order.append("timer"))
        loop.run()
    finally:
        loop.close()
        os.close(r)
        os.close(w)
    assert order == ["fd", "timer", "idle 1", "idle 2"]


async def test_slow_reader_keeps_agent_memory_bounded(
    agent: HostAgent, conn: AgentConnection
) -> None:
    stream = conn.open_stream({"op": "exec", "argv": ["head", "-c", "500000000", "/dev/zero"]})
    async with asyncio.timeout(10):
        await anext(stream)
    await asyncio.sleep(1.5)  # read nothing: the producer outpaces us by far
    assert rss_kb(agent.pid) < 40 * 1024
    await stream.cancel()  # DATA still in flight is dropped from here on
    frames = [f async for f in stream]
    assert frames[-1].json()["signal"] == signal.SIGKILL


async def test_unread_stdin_does_not_pile_up_in_the_agent(
    agent: HostAgent, conn: AgentConnection
) -> None:
    stream = conn.open_stream({"op": "exec", "command": "sleep 1", "stdin": True})
    feeder = asyncio.create_task(stream.send_stdin(b"x" * 64 * 1024 * 1024))
    await asyncio.sleep(0.5)
    assert not feeder.done()  # held back: the agent stopped reading the connection
    assert rss_kb(agent.pid) < 40 * 1024
    ran = await collect(stream)
    assert ran.result["exit_code"] == 0
    async with asyncio.timeout(10):
        await feeder  # once the RESULT is in, the rest is not sent
    assert (await conn.call("ping"))["pid"] == agent.pid


async def test_sigterm_stops_processes_and_the_agent() -> None:
    fresh = HostAgent()
    fresh.start()
    token = unique_sleep()
    try:
        c = await AgentConnection.connect(fresh.socket_path, timeout=5)
        stream = c.open_stream({"op": "exec", "command": f"sleep {token}"})
        async with asyncio.timeout(10):
            await anext(stream)
        os.kill(fresh.pid, signal.SIGTERM)
        ran = await collect(stream)
        assert ran.result["signal"] == signal.SIGTERM
        await c.close()
        assert await wait_until(lambda: fresh.process is not None and fresh.process.poll() == 0)
    finally:
        fresh.stop()
    assert not pids_running(token)


# -- the client against an untrusted agent -----------------------------------------------------
# An in-process fake that speaks the real wire format, to send what a real agent never would.


class FakeAgent:
    def __init__(self, path: Path, script: Any) -> None:
        self.path = path
        self.script = script  # async (reader, writer) -> None
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> FakeAgent:
        self.server = await asyncio.start_unix_server(self._handle, path=str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self.script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def read_open(reader: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
    header = await reader.readexactly(FRAME_HEADER.size)
    kind, _, stream, _, length = FRAME_HEADER.unpack(header)
    payload = await reader.readexactly(length)
    assert kind == Kind.OPEN
    return stream, Frame(Kind.OPEN, stream, payload).json()


async def stream_breaks(
    socket: Path, script: Any, request: dict[str, Any], match: str
) -> AgentConnection:
    """Open `request` against a fake agent running `script` and check that the stream fails
    with AgentDisconnected matching `match`; returns the (broken) connection."""
    async with FakeAgent(socket, script):
        c = await AgentConnection.connect(socket, timeout=5)
        stream = c.open_stream(request)
        with pytest.raises(AgentDisconnected, match=match):
            async with asyncio.timeout(5):
                [f async for f in stream]
        return c


async def test_client_survives_a_bad_result_body(tmp_path: Path) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream, _ = await read_open(reader)
        writer.write(encode_frame(Kind.RESULT, stream, b"\xff not json"))
        writer.write(encode_frame(Kind.DATA, 999, b"for a stream nobody opened", 1, 0))
        stream, _ = await read_open(reader)
        writer.write(encode_frame(Kind.RESULT, stream, b'{"ok": true, "pid": 1}'))
        await writer.drain()
        await reader.read()

    async with FakeAgent(tmp_path / "a.sock", script):
        c = await AgentConnection.connect(tmp_path / "a.sock", timeout=5)
        with pytest.raises(AgentError) as e:
            await c.call("ping")
        assert e.value.code == "bad_response"
        assert await c.call("ping") == {"pid": 1}
        await c.close()


async def test_client_drops_the_connection_on_an_oversize_frame(tmp_path: Path) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream, _ = await read_open(reader)
        writer.write(FRAME_HEADER.pack(Kind.DATA, 1, stream, 0, 2**31))
        await writer.drain()
        await reader.read()

    c = await stream_breaks(
        tmp_path / "a.sock", script, {"op": "exec", "command": "x"}, "malformed frame"
    )
    assert c.closed
    with pytest.raises(AgentDisconnected):
        c.open_stream({"op": "ping"})
    await c.close()


async def test_client_buffers_a_bounded_amount_for_a_slow_consumer(tmp_path: Path) -> None:
    sent = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        stream, _ = await read_open(reader)
        chunk = b"x" * 65536
        while True:  # a flood, as fast as the client lets us write
            writer.write(encode_frame(Kind.DATA, stream, chunk, 1, sent))
            sent += len(chunk)
            await writer.drain()

    async with FakeAgent(tmp_path / "a.sock", script):
        c = await AgentConnection.connect(tmp_path / "a.sock", timeout=5)
        stream = c.open_stream({"op": "exec", "command": "yes"})
        await asyncio.sleep(0.5)
        # What the client holds is bounded: its per-stream limit, its reader's buffer and the
        # kernel's socket buffers; everything else waits in the (fake) agent.
        assert sent < 16 * 1024 * 1024
        first = await anext(stream)
        assert first.offset == 0
        await c.close()
