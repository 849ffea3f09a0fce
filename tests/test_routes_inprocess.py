"""The HTTP routes, in-process: the real FastAPI routers and error handlers, called through
httpx's ASGI transport, in front of a fake host whose one sandbox is the real agent run as a
host process (`HostAgent`) and reached through the real agent gateway and frames.

No runc and no root: what these check is the API's side (routing, auth, the agent-error table,
streaming), not isolation.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from hutch.agent._host import HostAgent
from hutch.node import (
    AgentConnection,
    AgentConnectionClosed,
    AgentError,
    AgentGateway,
    AgentStream,
    AgentUnreachable,
)
from hutch.node._gateway import MAX_IDLE_DEDICATED
from hutch.sdk._exec import ExecStreamDecoder, OutputCollector
from hutch.server._agent_errors import api_error_for
from hutch.server._app import install_error_handlers
from hutch.server._deps import require_key
from hutch.server._errors import SandboxNotFound
from hutch.server._relay import relay_on_own
from hutch.server.routes._exec import build_exec_router
from hutch.server.routes._files import build_files_router
from hutch.server.routes._procs import build_procs_router
from hutch.server.services._keys import KeyChecker
from hutch.server.services._ratelimit import RateLimits
from hutch.server.services._teams import Teams
from hutch.server.store._sqlite import SqliteStore

KEY = "test-key-" + "x" * 32
LIVE = "sb-live"
GONE = "sb-gone"  # a sandbox whose agent socket is not there: its agent does not answer


class FakeSandboxes:
    """The part of SandboxManager the routes use, over a real AgentGateway: one running
    sandbox served by a host agent, one whose agent is unreachable, and no others."""

    def __init__(self, socket: Path, missing: Path) -> None:
        sockets = {LIVE: socket, GONE: missing}
        self._sockets = sockets
        self.opened = 0  # connections made to an agent

        async def connect(sandbox_id: str, limit: float) -> AgentConnection:
            self.opened += 1
            return await AgentConnection.connect(sockets[sandbox_id], timeout=limit)

        self.gateway = AgentGateway(connect, timeout=2)

    def _check(self, sandbox_id: str) -> None:
        if sandbox_id not in self._sockets:
            raise SandboxNotFound(sandbox_id)

    async def agent(self, sandbox_id: str) -> AgentConnection:
        self._check(sandbox_id)
        return await self.gateway.shared(sandbox_id)

    def agent_call(self, sandbox_id: str) -> Any:
        async def call(op: Any, **args: Any) -> dict[str, Any]:
            self._check(sandbox_id)
            return await self.gateway.call_untyped(sandbox_id, op, **args)

        return call

    async def open_stream(
        self, sandbox_id: str, request: dict[str, Any], conn: AgentConnection | None = None
    ) -> AgentStream:
        self._check(sandbox_id)
        return await self.gateway.open_stream(sandbox_id, request, conn)

    async def open_own(
        self, sandbox_id: str, request: dict[str, Any]
    ) -> tuple[AgentConnection, AgentStream]:
        self._check(sandbox_id)
        return await self.gateway.open_own(sandbox_id, request)

    async def dedicated_agent(self, sandbox_id: str) -> AgentConnection:
        self._check(sandbox_id)
        return await self.gateway.dedicated(sandbox_id)

    async def release_agent(self, sandbox_id: str, conn: AgentConnection) -> None:
        await self.gateway.release(sandbox_id, conn)


class FakeServices:
    def __init__(self, sandboxes: FakeSandboxes, store: SqliteStore) -> None:
        self.sandboxes = sandboxes
        self.store = store
        self.keys = KeyChecker(store, KEY)
        self.teams = Teams(store)
        self.rate_limits = RateLimits(None, None)
        self.background: set[Any] = set()


@pytest.fixture(scope="module")
def agent() -> Iterator[HostAgent]:
    with HostAgent() as host:
        yield host


@pytest.fixture()
def sandboxes(agent: HostAgent, tmp_path: Path) -> FakeSandboxes:
    return FakeSandboxes(agent.socket_path, tmp_path / "no-agent.sock")


@pytest.fixture()
async def client(sandboxes: FakeSandboxes, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    store = SqliteStore(tmp_path / "hutch.db")
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(build_exec_router())
    app.include_router(build_procs_router())
    app.include_router(build_files_router(require_key))
    app.state.services = FakeServices(sandboxes, store)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://hutch.test",
        headers={"Authorization": f"Bearer {KEY}"},
    ) as c:
        yield c
    await sandboxes.gateway.close()
    store.close()


async def test_exec_runs_in_the_agent_and_returns_its_output(client: httpx.AsyncClient) -> None:
    stdin = base64.b64encode(b"from stdin").decode()
    r = await client.post(
        f"/v1/sandboxes/{LIVE}/exec", json={"command": "cat; echo oops >&2; exit 3", "stdin": stdin}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["stdout"] == "from stdin"
    assert body["stderr"] == "oops\n"
    assert body["exit_code"] == 3


async def test_a_request_without_the_key_is_refused(client: httpx.AsyncClient) -> None:
    r = await client.post(
        f"/v1/sandboxes/{LIVE}/exec", json={"command": "true"}, headers={"Authorization": ""}
    )
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"


async def test_an_unknown_sandbox_is_a_404(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/sandboxes/sb-nobody/exec", json={"command": "true"})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "sandbox_not_found"


async def test_an_agent_that_does_not_answer_is_a_503(client: httpx.AsyncClient) -> None:
    r = await client.post(f"/v1/sandboxes/{GONE}/exec", json={"command": "true"})
    assert r.status_code == 503
    error = r.json()["error"]
    assert error["code"] == "sandbox_unavailable"
    assert GONE in error["message"] and "retry" in error["message"]


async def test_files_round_trip_and_agent_errors_map_through_the_table(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    path = str(tmp_path / "hello.txt")
    data = bytes(range(256)) * 1000
    r = await client.put(f"/v1/sandboxes/{LIVE}/files/content", params={"path": path}, content=data)
    assert r.status_code == 200, r.text
    assert r.json()["size"] == len(data)
    r = await client.get(f"/v1/sandboxes/{LIVE}/files/content", params={"path": path})
    assert r.status_code == 200
    assert r.content == data

    missing = str(tmp_path / "missing.txt")
    r = await client.get(f"/v1/sandboxes/{LIVE}/files/content", params={"path": missing})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "file_not_found"
    r = await client.get(f"/v1/sandboxes/{LIVE}/files/stat", params={"path": str(tmp_path)})
    assert r.json()["type"] == "directory"
    r = await client.post(
        f"/v1/sandboxes/{LIVE}/files/mkdir", json={"path": str(tmp_path), "recursive": False}
    )
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "file_exists"


async def test_a_foreign_process_id_is_a_404(client: httpx.AsyncClient) -> None:
    r = await client.get(f"/v1/sandboxes/{LIVE}/processes/no-such-process")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "process_not_found"


def test_the_table_looks_errors_up_by_class_then_by_code() -> None:
    closed = AgentConnectionClosed()
    closed.sandbox_id = "sb-1"
    assert (api_error_for(closed).status, api_error_for(closed).code) == (
        503,
        "sandbox_unavailable",
    )
    assert "sb-1" in api_error_for(closed).message
    unreachable = api_error_for(AgentUnreachable("the agent of sandbox sb-1 does not answer"))
    assert (unreachable.status, unreachable.message) == (
        503,
        "the agent of sandbox sb-1 does not answer",
    )
    assert api_error_for(AgentError("permission_denied", "no")).status == 403
    assert api_error_for(AgentError("no_space", "full")).status == 507
    assert api_error_for(AgentError("context_dead", "dead")).code == "context_dead"
    internal = api_error_for(AgentError("internal", "agent bug"))
    assert (internal.status, internal.code) == (500, "internal")
    # A code the table does not know keeps the agent's code, as bad input.
    other = api_error_for(AgentError("user_not_found", "no user bob"))
    assert (other.status, other.code, other.message) == (422, "user_not_found", "no user bob")


async def test_a_bad_env_name_is_a_422_not_a_500(client: httpx.AsyncClient) -> None:
    """Regression (schemathesis): the name was checked in the route, and its ValueError was
    a 500."""
    r = await client.put(f"/v1/sandboxes/{LIVE}/env", json={"env": {"x-not-a-name": None}})
    assert r.status_code == 422, r.text
    assert "x-not-a-name" in r.json()["error"]["message"]


async def _exec_stream(client: httpx.AsyncClient, command: str) -> tuple[str, int | None]:
    decoder, collector = ExecStreamDecoder(), OutputCollector()
    r = await client.post(f"/v1/sandboxes/{LIVE}/exec/stream", json={"command": command})
    assert r.status_code == 200, r.text
    for event in decoder.feed(r.content):
        collector.add(event)
    decoder.close()
    result = collector.result()
    return result.stdout, result.exit_code


async def test_exec_streams_reuse_their_agent_connection(
    client: httpx.AsyncClient, sandboxes: FakeSandboxes
) -> None:
    """Each exec streams on a connection of its own, made once and then reused: 20 execs in
    a row make 2 connections (the shared one and one dedicated), not 21."""
    for i in range(20):
        assert await _exec_stream(client, f"echo {i}; exit {i % 3}") == (f"{i}\n", i % 3)
    assert sandboxes.opened == 2


async def test_a_stream_left_early_never_lends_its_connection(
    client: httpx.AsyncClient, sandboxes: FakeSandboxes
) -> None:
    """A client that leaves mid-command: its connection still carries that command's
    frames, so it is closed, not lent to the next stream; the next exec sees only its own
    output. Many at once each get their own connection, and at most MAX_IDLE_DEDICATED are
    kept."""
    gateway = sandboxes.gateway
    used: list[AgentConnection] = []

    async def connecting() -> AgentConnection:
        used.append(await gateway.dedicated(LIVE))
        return used[-1]

    request: Any = {"op": "exec", "command": "echo early; sleep 1; echo late", "stdin": False}
    frames = await relay_on_own(
        connecting(),
        lambda conn: gateway.open_stream(LIVE, request, conn),
        lambda conn: gateway.release(LIVE, conn),
    )
    while b"early" not in await anext(frames):  # the command runs and has written
        pass
    await frames.aclose()  # what the server does when the client leaves
    assert used[0].closed and not gateway._idle.get(LIVE)
    opened = sandboxes.opened
    assert await _exec_stream(client, "echo next") == ("next\n", 0)
    assert sandboxes.opened == opened + 1
    await asyncio.sleep(1.2)  # the left command would have written "late" by now
    assert await _exec_stream(client, "echo again") == ("again\n", 0)

    n = MAX_IDLE_DEDICATED + 4
    results = await asyncio.gather(
        *(_exec_stream(client, f"sleep 0.3; echo {i}") for i in range(n))
    )
    assert results == [(f"{i}\n", 0) for i in range(n)]
    idle = gateway._idle[LIVE]
    assert len(idle) == MAX_IDLE_DEDICATED
    await gateway.forget(LIVE)  # the sandbox is stopped or destroyed
    assert all(conn.closed for conn in idle)


async def test_the_gateway_names_the_sandboxes_whose_streams_are_open(
    client: httpx.AsyncClient, sandboxes: FakeSandboxes
) -> None:
    """What every replica marks as in use on each reconciler pass (Lifecycle.keep_streams_awake):
    a sandbox while a command streams from it, and not once it has ended."""
    gateway = sandboxes.gateway
    assert gateway.streaming() == []
    running = asyncio.ensure_future(_exec_stream(client, "sleep 0.5; echo done"))
    for _ in range(200):
        if gateway.streaming():
            break
        await asyncio.sleep(0.01)
    assert gateway.streaming() == [LIVE]
    assert await running == ("done\n", 0)
    assert gateway.streaming() == []
