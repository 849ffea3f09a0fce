"""E2B PTY commands on Hutch's terminals (agent ``pty_*`` ops): a Start with ``pty`` set
makes a terminal and streams it; SendInput, Update and SendSignal find it by pid."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from e2b.envd.process import process_pb as pb

from hutch._wire import Kind
from hutch._wire.agent_ops import OpName
from hutch.e2b._identity import E2B_HOME, in_home
from hutch.e2b._oneof import oneof
from hutch.node import AgentConnection, AgentStream, parse_result
from hutch.server.routes import Services


class Terminals:
    """The terminals started through E2B, by (sandbox, pid), with the stream that shows each
    (its stdin channel is the terminal's keyboard)."""

    def __init__(self, svc: Services) -> None:
        self._svc = svc
        self._ids: dict[tuple[str, int], str] = {}
        self._streams: dict[tuple[str, int], AgentStream] = {}

    def has(self, sandbox_id: str, pid: int) -> bool:
        return (sandbox_id, pid) in self._ids

    async def _call(self, sandbox_id: str, op: OpName, **args: Any) -> dict[str, Any]:
        # NB: `op` passes through untyped; routes/ call `agent_call` with literal ops.
        # NB: `op` passes through untyped here (one forwarding helper); the rest of this module's
        # use of the services is checked.
        call: Callable[..., Awaitable[Any]] = self._svc.sandboxes.agent_call(sandbox_id)
        result: dict[str, Any] = await call(op, **args)
        return result

    async def create(self, sandbox_id: str, request: pb.StartRequest) -> dict[str, Any]:
        config = request.process
        size = request.pty.size if request.pty is not None else None
        info = await self._call(
            sandbox_id,
            "pty_create",
            cols=(size.cols if size else 0) or 80,
            rows=(size.rows if size else 0) or 24,
            shell=config.cmd if config is not None and config.cmd else None,
            cwd=in_home(config.cwd) if config is not None and config.cwd else E2B_HOME,
            env=dict(config.envs) if config is not None else None,
        )
        self._ids[(sandbox_id, int(info["pid"]))] = str(info["id"])
        return info

    async def follow(
        self, sandbox_id: str, pid: int, kind: type[Any], since: int = 0
    ) -> AsyncIterator[Any]:
        terminal_id = self._ids[(sandbox_id, pid)]
        conn: AgentConnection
        stream: AgentStream
        conn, stream = await self._svc.sandboxes.open_own(
            sandbox_id, {"op": "pty_attach", "id": terminal_id, "since": since}
        )
        self._streams[(sandbox_id, pid)] = stream
        try:
            async for frame in stream:
                if frame.kind is Kind.DATA:
                    data = pb.ProcessEvent.DataEvent(output=oneof("pty", frame.payload))
                    yield kind(event=pb.ProcessEvent(event=oneof("data", data)))
                elif frame.kind is Kind.RESULT:
                    result = parse_result(frame)
                    if result.get("detached"):
                        return
                    code = int(result.get("exit_code") or 0)
                    end = pb.ProcessEvent.EndEvent(
                        exit_code=code, exited=True, status=f"exit status {code}"
                    )
                    yield kind(event=pb.ProcessEvent(event=oneof("end", end)))
                    return
        finally:
            if self._streams.get((sandbox_id, pid)) is stream:
                del self._streams[(sandbox_id, pid)]
            if not stream.finished:
                with contextlib.suppress(Exception):
                    await stream.cancel()
            await conn.close()

    async def write(self, sandbox_id: str, pid: int, data: bytes) -> None:
        stream = self._streams.get((sandbox_id, pid))
        if stream is not None and not stream.finished:
            await stream.send_stdin(data)
            return
        # Nobody watches it now: a short attach to type into it.
        info = await self._call(sandbox_id, "pty_info", id=self._ids[(sandbox_id, pid)])
        short: AgentStream = await self._svc.sandboxes.open_stream(
            sandbox_id, {"op": "pty_attach", "id": info["id"], "since": int(info["offset"])}
        )
        await short.send_stdin(data)
        await short.cancel()
        with contextlib.suppress(Exception):
            async for _ in short:
                pass

    async def resize(self, sandbox_id: str, pid: int, size: pb.PTY.Size | None) -> None:
        if size is None or not size.cols or not size.rows:
            raise ConnectError(Code.INVALID_ARGUMENT, "give the PTY size (cols and rows)")
        await self._call(
            sandbox_id,
            "pty_resize",
            id=self._ids[(sandbox_id, pid)],
            cols=size.cols,
            rows=size.rows,
        )

    async def kill(self, sandbox_id: str, pid: int) -> None:
        terminal_id = self._ids.pop((sandbox_id, pid))
        await self._call(sandbox_id, "pty_close", id=terminal_id)
