"""Background processes in the real agent (run on the host): logs with offsets, replay and
follow, truncation, stdin, kill, and processes outliving the connection that started them."""

from __future__ import annotations

import asyncio
import base64
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from hutch._wire import Kind
from hutch.agent._host import HostAgent
from hutch.node._agent_client import AgentConnection, AgentError


@pytest.fixture(scope="module")
def agent() -> Iterator[HostAgent]:
    state = tempfile.mkdtemp(prefix="hutch-agent-state-")
    with HostAgent(env={**os.environ, "HUTCH_AGENT_STATE_DIR": state}) as host:
        yield host


async def logs(
    conn: AgentConnection, pid: str, **request: Any
) -> tuple[bytes, bytes, dict[str, Any], list[dict[str, Any]]]:
    stream = conn.open_stream({"op": "process_logs", "id": pid, **request})
    out = {1: bytearray(), 2: bytearray()}
    events = []
    expected = {1: request.get("stdout_offset", 0), 2: request.get("stderr_offset", 0)}
    async for frame in stream:
        if frame.kind is Kind.DATA:
            assert frame.offset >= expected[frame.channel]
            expected[frame.channel] = frame.offset + len(frame.payload)
            out[frame.channel] += frame.payload
        elif frame.kind is Kind.EVENT:
            events.append(frame.json())
        elif frame.kind is Kind.RESULT:
            return bytes(out[1]), bytes(out[2]), frame.json(), events
    raise AssertionError("no result")


async def test_start_logs_and_exit(conn: AgentConnection) -> None:
    r = await conn.call("process_start", command="seq 1 200000; echo err >&2; exit 3")
    pid = r["process"]["id"]
    out, err, result, _ = await logs(conn, pid)
    assert out == b"".join(b"%d\n" % i for i in range(1, 200001))
    assert err == b"err\n"
    assert result["process"]["status"] == "failed"
    assert result["process"]["exit_code"] == 3
    # replay from an offset
    out2, _, _, _ = await logs(conn, pid, stdout_offset=len(out) - 7, follow=False)
    assert out2 == b"200000\n"


async def test_process_outlives_its_connection(agent: HostAgent) -> None:
    c1 = await AgentConnection.connect(agent.socket_path, timeout=5)
    await c1.call(
        "process_start", id="ticker", command="for i in 1 2 3 4 5; do echo $i; sleep 0.1; done"
    )
    await c1.close()
    c2 = await AgentConnection.connect(agent.socket_path, timeout=5)
    out, _, result, _ = await logs(c2, "ticker")
    assert out == b"1\n2\n3\n4\n5\n"
    assert result["process"]["status"] == "completed"
    listed = await c2.call("process_list")
    assert "ticker" in [p["id"] for p in listed["processes"]]
    await c2.close()


async def test_timeout_kills_the_tree_with_nobody_connected(agent: HostAgent) -> None:
    c1 = await AgentConnection.connect(agent.socket_path, timeout=5)
    await c1.call("process_start", id="late", command="sleep 30 & sleep 30", timeout=0.5)
    await c1.close()  # its starter is gone: the deadline is the agent's to keep
    c2 = await AgentConnection.connect(agent.socket_path, timeout=5)
    _, _, result, _ = await asyncio.wait_for(logs(c2, "late"), 10)
    await c2.close()
    assert result["process"]["status"] == "killed"
    assert result["process"]["signal"] == 9
    assert result["process"]["ended_at"] - result["process"]["started_at"] < 5


async def test_truncation_is_reported(conn: AgentConnection) -> None:
    r = await conn.call("process_start", command="head -c 100000 /dev/zero", log_limit=8192)
    await logs(conn, r["process"]["id"], data=False)  # waits for the end
    out, _, result, events = await logs(conn, r["process"]["id"])
    info = result["process"]
    assert events[0]["stdout_skipped"] == [0, info["stdout_start"]]
    assert info["truncated"] and info["stdout_bytes"] == 100000
    assert info["stdout_start"] > 0
    assert len(out) == 100000 - info["stdout_start"]


async def test_stdin_and_kill(conn: AgentConnection) -> None:
    r = await conn.call("process_start", command="cat")
    pid = r["process"]["id"]
    await conn.call("process_stdin", id=pid, data=base64.b64encode(b"hello\n").decode())
    await conn.call("process_stdin", id=pid, data="", eof=True)
    out, _, result, _ = await logs(conn, pid)
    assert out == b"hello\n" and result["process"]["status"] == "completed"
    with pytest.raises(AgentError) as e:
        await conn.call("process_stdin", id=pid, data="eA==")
    assert e.value.code == "process_not_running"
    r = await conn.call("process_start", command="sleep 100 & sleep 100; wait")
    pid = r["process"]["id"]
    await conn.call("process_kill", id=pid, signal=9)
    _, _, result, _ = await logs(conn, pid)
    assert result["process"]["status"] == "killed"
    with pytest.raises(AgentError) as e:
        await conn.call("process_get", id="nope")
    assert e.value.code == "process_not_found"


async def test_set_env(conn: AgentConnection) -> None:
    await conn.call("set_env", env={"HUTCH_T_VAR": "yes"})
    r = await conn.call("process_start", command="echo $HUTCH_T_VAR")
    out, _, _, _ = await logs(conn, r["process"]["id"])
    assert out == b"yes\n"
    await conn.call("set_env", env={"HUTCH_T_VAR": None})
    await asyncio.sleep(0)


async def session_exec(
    conn: AgentConnection, sid: str, command: str, **kw: Any
) -> tuple[bytes, bytes, dict[str, Any]]:
    stream = conn.open_stream({"op": "session_exec", "session": sid, "command": command, **kw})
    out = {1: bytearray(), 2: bytearray()}
    async for frame in stream:
        if frame.kind is Kind.DATA:
            out[frame.channel] += frame.payload
        elif frame.kind is Kind.RESULT:
            return bytes(out[1]), bytes(out[2]), frame.json()
    raise AssertionError("no result")


async def test_session_state_persists_and_timeouts_recover(conn: AgentConnection) -> None:
    await conn.call("session_create", id="s1", cwd="/tmp")
    assert (await session_exec(conn, "s1", "pwd"))[0] == b"/tmp\n"
    await session_exec(
        conn, "s1", "cd / && export A=1 && f() { echo fn$1; }; alias hi='echo alias'"
    )
    out, err, result = await session_exec(conn, "s1", "pwd; echo $A; f 2; hi; echo e >&2; false")
    assert out == b"/\n1\nfn2\nalias\n" and err == b"e\n" and result["exit_code"] == 1
    out, _, result = await session_exec(conn, "s1", "echo -n partial; sleep 30", timeout=0.5)
    assert result["timed_out"] and out == b"partial"
    assert (await session_exec(conn, "s1", "echo $A"))[0] == b"1\n"
    _, _, result = await session_exec(conn, "s1", "while :; do :; done", timeout=0.5)
    assert result["timed_out"] and result["session_restarted"]
    assert (await session_exec(conn, "s1", "echo alive"))[0] == b"alive\n"
    # one at a time: the second waits for the first
    first = asyncio.create_task(session_exec(conn, "s1", "sleep 0.3; echo one"))
    second = asyncio.create_task(session_exec(conn, "s1", "echo two"))
    assert (await first)[0] == b"one\n" and (await second)[0] == b"two\n"
    _, _, result = await session_exec(conn, "s1", "exit 7")
    assert result["exit_code"] == 7
    assert (await session_exec(conn, "s1", "echo again"))[0] == b"again\n"
    await conn.call("session_delete", id="s1")
    with pytest.raises(AgentError):
        await conn.call("session_delete", id="s1")
