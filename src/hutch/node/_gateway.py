"""The agent gateway: the one owner of this host's connections to its sandboxes' agents.

Three kinds of use, one place each: the shared connection of a sandbox (multiplexed; most
requests), a dedicated connection for one bulk stream (NB: streams sharing a connection stall
together when one consumer is slow, see _agent_client's backpressure note, so a slow reader of
a 2 GB download must not hold up every other request to the sandbox), and streams on either.

Errors are the agent's (`AgentError`, `AgentDisconnected`), tagged with the sandbox id; the
API turns them into its own errors in one table. A broken shared connection is forgotten here,
so the next request reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from hutch._wire.agent_calls import StreamRequest
from hutch._wire.agent_ops import OpName
from hutch.node._agent_client import AgentConnection, AgentDisconnected, AgentError, AgentStream

# Called on every new shared connection before anyone else gets it (the API sends the
# sandbox's secrets: the agent keeps them in memory only, so a reconnect must resend them).
OnConnect = Callable[[str, AgentConnection], Awaitable[None]]

# How a new connection to a sandbox's agent is made: its unix socket on this host
# (`LocalHost.connect_agent`), or the same byte stream tunnelled through a node daemon.
# The gateway and the agent protocol are the same either way.
AgentOpener = Callable[[str, float], Awaitable[AgentConnection]]

# Dedicated connections whose stream ended cleanly are kept for the next stream, up to this
# many per sandbox: `sb.exec()` is a stream on a dedicated connection, and connecting (the
# connect, the agent's accept, a reader task on each side, the close) was a large share of
# an exec's cost on both sides.
MAX_IDLE_DEDICATED = 8


class AgentUnreachable(AgentDisconnected):
    """No connection could be made to the agent (it does not run, or does not answer)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="agent_unreachable")


class AgentPaused(AgentUnreachable):
    """The sandbox's node refused a connection to its agent: it is paused (frozen) there.
    A replica that had not heard of the pause reads the sandbox's row again and wakes it."""


class AgentGateway:
    def __init__(
        self,
        opener: AgentOpener,
        *,
        timeout: float,
        on_connect: OnConnect | None = None,
    ) -> None:
        self._open = opener  # (sandbox id, timeout) -> a new connection to its agent
        self._timeout = timeout
        self.on_connect = on_connect
        self._shared: dict[str, AgentConnection] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Weakly held: their callers close them; while a stream runs on one, the sandbox is
        # in use (the idle timer must not put it to sleep under a transfer).
        self._dedicated: dict[str, weakref.WeakSet[AgentConnection]] = {}
        self._idle: dict[str, list[AgentConnection]] = {}

    # -- connections ----------------------------------------------------------------------

    async def connect(self, sandbox_id: str) -> AgentConnection:
        """A new shared connection (replacing any), set up with `on_connect`."""
        conn = await self._open(sandbox_id, self._timeout)
        try:
            if self.on_connect is not None:
                await self.on_connect(sandbox_id, conn)
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.close()
            raise
        self._shared[sandbox_id] = conn
        return conn

    def adopt(self, sandbox_id: str, conn: AgentConnection) -> None:
        """Make a connection made elsewhere (a warm pool's) the sandbox's shared one."""
        self._shared[sandbox_id] = conn

    def current(self, sandbox_id: str) -> AgentConnection:
        """The shared connection made by `connect` or `adopt` (KeyError if none)."""
        return self._shared[sandbox_id]

    async def shared(self, sandbox_id: str) -> AgentConnection:
        """The live shared connection, (re)connecting if needed."""
        conn = self._shared.get(sandbox_id)
        if conn is not None and not conn.closed:
            return conn
        async with self._locks.setdefault(sandbox_id, asyncio.Lock()):
            conn = self._shared.get(sandbox_id)
            if conn is not None and not conn.closed:
                return conn
            try:
                return await self.connect(sandbox_id)
            except (OSError, AgentError, TimeoutError) as exc:
                raise self._unreachable(sandbox_id, exc) from exc

    async def dedicated(self, sandbox_id: str) -> AgentConnection:
        """A new connection of its own, for one bulk stream; the caller closes it."""
        # NB: `on_connect` (the sandbox's secrets) sets up the agent, not the connection:
        # make sure the shared connection ran it for this agent first. Otherwise the first
        # request after a server or container restart, if it is a stream, runs without them.
        await self.shared(sandbox_id)
        idle = self._idle.get(sandbox_id)
        while idle:
            conn = idle.pop()
            if not conn.closed:  # NB: one whose agent died since reads EOF and is closed
                self._dedicated.setdefault(sandbox_id, weakref.WeakSet()).add(conn)
                return conn
        try:
            conn = await self._open(sandbox_id, self._timeout)
        except (OSError, AgentError, TimeoutError) as exc:
            raise self._unreachable(sandbox_id, exc) from exc
        self._dedicated.setdefault(sandbox_id, weakref.WeakSet()).add(conn)
        return conn

    async def open_spare(self, sandbox_id: str) -> None:
        """Open a dedicated connection before any stream asks for one, kept idle for the
        first (`sb.exec()`). Where a connection is a round trip to another host (a node's
        tunnel), a create opens it while it waits for the agent, and the first exec does
        not. A failure is left to the first stream to meet again."""
        try:
            conn = await self._open(sandbox_id, self._timeout)
        except Exception:  # NB: whatever the host raises (a cluster's node errors too)
            return
        if sandbox_id not in self._shared:  # forgotten meanwhile (a create that failed)
            await conn.close()
            return
        await self.release(sandbox_id, conn)

    async def release(self, sandbox_id: str, conn: AgentConnection) -> None:
        """Give back a dedicated connection whose streams all ended: kept for the next
        `dedicated()` while the sandbox is known (not forgotten) and few are kept, else
        closed. A connection whose stream did not end (the client left) must be closed."""
        idle = self._idle.get(sandbox_id)
        if idle is None and sandbox_id in self._shared:
            idle = self._idle[sandbox_id] = []
        if (
            idle is not None
            and not conn.closed
            and conn.open_streams == 0
            and len(idle) < MAX_IDLE_DEDICATED
        ):
            idle.append(conn)
            return
        await conn.close()

    def streaming(self) -> list[str]:
        """The sandboxes with a stream in flight through this gateway (`has_open_streams`)."""
        return [sid for sid in {*self._shared, *self._dedicated} if self.has_open_streams(sid)]

    def has_open_streams(self, sandbox_id: str) -> bool:
        """Whether a stream (a command, log stream, transfer, terminal) is in flight."""
        conns = [self._shared.get(sandbox_id), *self._dedicated.get(sandbox_id, ())]
        return any(c is not None and not c.closed and c.open_streams > 0 for c in conns)

    def drop(self, sandbox_id: str, conn: AgentConnection) -> None:
        """Forget a shared connection that broke, so the next request reconnects."""
        if self._shared.get(sandbox_id) is conn:
            del self._shared[sandbox_id]

    async def forget(self, sandbox_id: str) -> None:
        """Close the sandbox's shared connection (it is being destroyed)."""
        self._locks.pop(sandbox_id, None)
        self._dedicated.pop(sandbox_id, None)
        for idle in self._idle.pop(sandbox_id, ()):
            with contextlib.suppress(Exception):
                await idle.close()
        conn = self._shared.pop(sandbox_id, None)
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def close(self) -> None:
        """Close every connection; the sandboxes keep running."""
        idle = [conn for conns in self._idle.values() for conn in conns]
        self._idle.clear()
        for conn in [*self._shared.values(), *idle]:
            with contextlib.suppress(Exception):
                await conn.close()
        self._shared.clear()

    # -- requests -------------------------------------------------------------------------

    async def call_untyped(self, sandbox_id: str, op: OpName, **args: Any) -> dict[str, Any]:
        """One request and its result on the shared connection (the caller types it: see
        `SandboxManager.agent_call`)."""
        conn = await self.shared(sandbox_id)
        try:
            return await conn.call_untyped(op, **args)
        except AgentError as exc:
            if isinstance(exc, AgentDisconnected):
                self.drop(sandbox_id, conn)
            exc.sandbox_id = sandbox_id
            raise

    async def open_stream(
        self, sandbox_id: str, request: StreamRequest, conn: AgentConnection | None = None
    ) -> AgentStream:
        """A stream on `conn`, else on the shared connection."""
        shared = conn is None
        if conn is None:
            conn = await self.shared(sandbox_id)
        try:
            return conn.open_stream(request)
        except AgentDisconnected as exc:
            if shared:
                self.drop(sandbox_id, conn)
            exc.sandbox_id = sandbox_id
            raise

    async def open_own(
        self, sandbox_id: str, request: StreamRequest
    ) -> tuple[AgentConnection, AgentStream]:
        """A stream on a dedicated connection; close the connection when the stream ends."""
        conn = await self.dedicated(sandbox_id)
        try:
            return conn, conn.open_stream(request)
        except AgentDisconnected as exc:
            await conn.close()
            exc.sandbox_id = sandbox_id
            raise

    def _unreachable(self, sandbox_id: str, exc: BaseException) -> AgentUnreachable:
        if isinstance(exc, AgentPaused):  # NB: kept as it is: what to do next differs
            exc.sandbox_id = sandbox_id
            return exc
        error = AgentUnreachable(
            f"the agent of sandbox {sandbox_id} does not answer ({exc}); "
            "retry, or destroy the sandbox"
        )
        error.sandbox_id = sandbox_id
        return error
