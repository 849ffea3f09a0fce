"""envd's ``process.Process`` service on Hutch's background processes (agent ``process_*``
ops): an E2B command is a Hutch process whose pid E2B clients use as its handle."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal as signal_module
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from e2b.envd.process import process_pb as pb
from e2b.envd.process.process_connect import Process
from protobuf import Oneof

from hutch._wire import Kind
from hutch._wire.agent_ops import OpName
from hutch.e2b._errors import connect_error
from hutch.e2b._identity import DEFAULT_USER, E2B_HOME, Users, in_home, sandbox_of, user_of
from hutch.e2b._oneof import oneof
from hutch.e2b._pty import Terminals
from hutch.node import AgentConnection, AgentError, AgentStream, parse_result
from hutch.server.routes import Services

if TYPE_CHECKING:
    from hutch._wire.agent_calls import StreamRequest

KEEPALIVE_HEADER = "keepalive-ping-interval"
DEFAULT_KEEPALIVE = 30.0
R = TypeVar("R")
Event = TypeVar("Event", pb.StartResponse, pb.ConnectResponse)


def _event(kind: type[Event], event: pb.ProcessEvent) -> Event:
    return kind(event=event)


def _start(pid: int) -> pb.ProcessEvent:
    return pb.ProcessEvent(event=oneof("start", pb.ProcessEvent.StartEvent(pid=pid)))


def _data(channel: int, payload: bytes) -> pb.ProcessEvent:
    if channel == 1:
        return pb.ProcessEvent(
            event=oneof("data", pb.ProcessEvent.DataEvent(output=oneof("stdout", payload)))
        )
    return pb.ProcessEvent(
        event=oneof("data", pb.ProcessEvent.DataEvent(output=oneof("stderr", payload)))
    )


def end_event(info: dict[str, Any]) -> pb.ProcessEvent.EndEvent:
    """envd's end event: a signal death is exit code -1 and status ``signal: killed``."""
    sig = info.get("signal")
    if sig:
        try:
            name = signal_module.Signals(sig).name.removeprefix("SIG").lower()
        except ValueError:
            name = str(sig)
        name = "killed" if name == "kill" else name
        status = f"signal: {name}"
        return pb.ProcessEvent.EndEvent(exit_code=-1, exited=False, status=status, error=status)
    code = int(info.get("exit_code") or 0)
    return pb.ProcessEvent.EndEvent(exit_code=code, exited=True, status=f"exit status {code}")


class ProcessService(Process):
    """Implements e2b.envd.process.process_connect.Process."""

    def __init__(self, svc: Services, users: Users) -> None:
        self._svc = svc
        self._users = users
        # (sandbox, pid) -> Hutch process id: pids are E2B's handles.
        self._ids: dict[tuple[str, int], str] = {}
        self._terminals = Terminals(svc)

    async def _guard(self, sandbox_id: str, work: Awaitable[R]) -> R:
        try:
            return await work
        except Exception as exc:
            raise connect_error(exc, sandbox_id) from exc

    async def _call(self, sandbox_id: str, op: OpName, **args: Any) -> dict[str, Any]:
        # NB: `op` passes through untyped; routes/ call `agent_call` with literal ops.
        # NB: `op` passes through untyped here (one forwarding helper); the rest of this module's
        # use of the services is checked.
        call: Callable[..., Awaitable[Any]] = self._svc.sandboxes.agent_call(sandbox_id)
        result: dict[str, Any] = await call(op, **args)
        return result

    async def _process_id(self, sandbox_id: str, selector: pb.ProcessSelector | None) -> str:
        match selector.selector if selector is not None else None:
            case Oneof(field="tag", value=tag):
                return str(tag)
            case Oneof(field="pid", value=pid):
                known = self._ids.get((sandbox_id, int(pid)))
                if known is not None:
                    return known
                listed = await self._call(sandbox_id, "process_list")
                for proc in listed["processes"]:
                    if proc["pid"] == pid and proc["status"] == "running":
                        self._ids[(sandbox_id, int(pid))] = proc["id"]
                        return str(proc["id"])
                raise ConnectError(Code.NOT_FOUND, f"process with pid {pid} not found")
        raise ConnectError(Code.INVALID_ARGUMENT, "select the process by pid or tag")

    @staticmethod
    def _start_args(request: pb.StartRequest, ctx: RequestContext[Any, Any]) -> dict[str, Any]:
        config = request.process
        if config is None or not config.cmd:
            raise ConnectError(Code.INVALID_ARGUMENT, "process.cmd is required")
        args: dict[str, Any] = {
            "argv": [config.cmd, *config.args],
            "env": dict(config.envs) or None,
            "cwd": in_home(config.cwd) if config.cwd else E2B_HOME,
            "stdin": request.stdin if request.stdin is not None else True,
        }
        if request.tag:
            args["id"] = request.tag
        left_ms = ctx.timeout_ms  # what is left of the call's connect-timeout-ms
        if left_ms is not None:
            # As envd: the command is killed at the call's deadline even if the client has
            # already left (it gives up at that same moment), so the agent holds the deadline.
            args["timeout"] = max(left_ms / 1000, 0.001)
        return args

    async def _spawn_pipelined(
        self,
        sandbox_id: str,
        request: pb.StartRequest,
        ctx: RequestContext[Any, Any],
        user: str,
        conn: AgentConnection,
    ) -> tuple[dict[str, Any], AgentStream] | None:
        """An untagged command's start and its logs stream, sent back to back on `conn` (the
        agent takes one connection's requests in order): one round trip to the agent less
        than start, answer, then logs. Its id is chosen here (untagged, as the agent's own
        `proc-N`). None when the image has no `user`: the caller starts it the long way."""
        args = self._start_args(request, ctx)
        args["id"] = f"proc-e2b-{os.urandom(6).hex()}"
        who = self._users.effective(sandbox_id, user)
        # NB: process_start is a unary op; sent as a stream so that its OPEN goes out now.
        starting = conn.open_stream(
            cast("StreamRequest", {"op": "process_start", "user": who, **args})
        )
        logs = conn.open_stream(
            {"op": "process_logs", "id": args["id"], "stdout_offset": 0, "stderr_offset": 0,
             "follow": True}
        )  # fmt: skip
        try:
            async for frame in starting:
                if frame.kind is Kind.RESULT:
                    info: dict[str, Any] = parse_result(frame)["process"]
                    self._ids[(sandbox_id, int(info["pid"]))] = info["id"]
                    return info, logs
            raise AgentError("bad_response", "process_start ended without a RESULT")
        except BaseException as exc:
            await logs.aclose()
            if isinstance(exc, AgentError) and exc.code == "user_not_found" and who == DEFAULT_USER:
                return None
            raise

    async def _spawn(
        self, sandbox_id: str, request: pb.StartRequest, ctx: RequestContext[Any, Any], user: str
    ) -> dict[str, Any]:
        args = self._start_args(request, ctx)
        who = self._users.effective(sandbox_id, user)
        try:
            result = await self._call(sandbox_id, "process_start", user=who, **args)
        except AgentError as exc:
            if exc.code != "user_not_found" or who != DEFAULT_USER:
                raise
            # An image without E2B's `user`: run as its default (root) instead.
            self._users.mark_missing(sandbox_id)
            result = await self._call(sandbox_id, "process_start", user=None, **args)
        info: dict[str, Any] = result["process"]
        self._ids[(sandbox_id, int(info["pid"]))] = info["id"]
        return info

    async def _follow(
        self,
        sandbox_id: str,
        process_id: str,
        kind: type[Event],
        ctx: RequestContext[Any, Any],
        offsets: tuple[int, int] = (0, 0),
        conn: AgentConnection | None = None,
        kill_on_deadline: bool = False,
        stream: AgentStream | None = None,
    ) -> AsyncIterator[Event]:
        """Data events from the process's logs, then its end event; keepalives between.
        The logs stream gets a connection of its own (``conn``, else a new one): a slow
        reader must not stall the sandbox's other requests. `stream`: that logs stream,
        already opened on `conn`."""
        interval = _keepalive(ctx)
        if conn is None:
            conn = await self._svc.sandboxes.dedicated_agent(sandbox_id)
        try:
            if stream is None:
                stream = conn.open_stream(
                    {
                        "op": "process_logs",
                        "id": process_id,
                        "stdout_offset": offsets[0],
                        "stderr_offset": offsets[1],
                        "follow": True,
                    }
                )
            frames = stream.__aiter__()
            loop = asyncio.get_running_loop()
            # NB: connectrpc parses connect-timeout-ms but leaves enforcing it to us.
            deadline = None if not ctx.timeout_ms else loop.time() + ctx.timeout_ms / 1000
            while True:
                wait = interval if deadline is None else min(interval, deadline - loop.time())
                if wait <= 0:
                    if kill_on_deadline:
                        with contextlib.suppress(AgentError):
                            await self._call(sandbox_id, "process_kill", id=process_id, signal=9)
                    raise _past_deadline(kill_on_deadline)
                try:
                    # NB: not wait_for, which makes a task per frame.
                    async with asyncio.timeout(wait):
                        frame = await frames.__anext__()
                except TimeoutError:
                    if deadline is not None and loop.time() >= deadline:
                        continue
                    yield _event(
                        kind, pb.ProcessEvent(event=oneof("keepalive", pb.ProcessEvent.KeepAlive()))
                    )
                    continue
                except StopAsyncIteration:
                    raise ConnectError(Code.UNAVAILABLE, "the process stream ended early") from None
                if frame.kind is Kind.DATA:
                    yield _event(kind, _data(frame.channel, frame.payload))
                elif frame.kind is Kind.RESULT:
                    info = parse_result(frame)["process"]
                    if kill_on_deadline and info.get("timed_out"):
                        raise _past_deadline(True)  # the agent's own kill at that deadline
                    yield _event(kind, pb.ProcessEvent(event=oneof("end", end_event(info))))
                    return
        finally:
            if stream is not None and stream.answered:
                # Kept for the next command: a new agent connection per command was a
                # sizeable part of what a `commands.run` cost over Hutch's own exec.
                await self._svc.sandboxes.release_agent(sandbox_id, conn)
            else:
                if stream is not None and not stream.finished:
                    with contextlib.suppress(Exception):
                        await stream.cancel()
                await conn.close()

    # -- the service --------------------------------------------------------------------

    async def start(
        self, request: pb.StartRequest, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[pb.StartResponse]:
        headers = ctx.request_headers
        sandbox_id = sandbox_of(headers)
        if request.pty is not None:
            async for event in self._start_pty(sandbox_id, request):
                yield event
            return
        conn: AgentConnection = await self._guard(
            sandbox_id, self._svc.sandboxes.dedicated_agent(sandbox_id)
        )
        logs: AgentStream | None = None
        try:
            started = None
            if not request.tag:  # a tag may name a live process: its start must answer first
                started = await self._guard(
                    sandbox_id,
                    self._spawn_pipelined(sandbox_id, request, ctx, user_of(headers), conn),
                )
            if started is not None:
                info, logs = started
            else:
                info = await self._guard(
                    sandbox_id, self._spawn(sandbox_id, request, ctx, user_of(headers))
                )
        except BaseException:
            await conn.close()
            raise
        try:
            yield _event(pb.StartResponse, _start(int(info["pid"])))
        except BaseException:
            await conn.close()  # the client left before the output: _follow never ran
            raise
        try:
            async for event in self._follow(
                sandbox_id,
                info["id"],
                pb.StartResponse,
                ctx,
                conn=conn,
                kill_on_deadline=True,
                stream=logs,
            ):
                yield event
        except Exception as exc:
            raise connect_error(exc, sandbox_id) from exc

    async def _start_pty(
        self, sandbox_id: str, request: pb.StartRequest
    ) -> AsyncIterator[pb.StartResponse]:
        info = await self._guard(sandbox_id, self._terminals.create(sandbox_id, request))
        pid = int(info["pid"])
        yield _event(pb.StartResponse, _start(pid))
        try:
            async for event in self._terminals.follow(sandbox_id, pid, pb.StartResponse):
                yield event
        except Exception as exc:
            raise connect_error(exc, sandbox_id) from exc

    async def connect(
        self, request: pb.ConnectRequest, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[pb.ConnectResponse]:
        sandbox_id = sandbox_of(ctx.request_headers)
        selector = request.process.selector if request.process is not None else None
        match selector:
            case Oneof(field="pid", value=int() as pid) if self._terminals.has(sandbox_id, pid):
                yield _event(pb.ConnectResponse, _start(pid))
                try:
                    async for event in self._terminals.follow(sandbox_id, pid, pb.ConnectResponse):
                        yield event
                except Exception as exc:
                    raise connect_error(exc, sandbox_id) from exc
                return

        async def find() -> dict[str, Any]:
            process_id = await self._process_id(sandbox_id, request.process)
            got = await self._call(sandbox_id, "process_get", id=process_id)
            return dict(got["process"])

        info = await self._guard(sandbox_id, find())
        yield _event(pb.ConnectResponse, _start(int(info["pid"])))
        # envd streams what comes after the connect, not what came before.
        offsets = (int(info["stdout_bytes"]), int(info["stderr_bytes"]))
        try:
            async for event in self._follow(
                sandbox_id, info["id"], pb.ConnectResponse, ctx, offsets
            ):
                yield event
        except Exception as exc:
            raise connect_error(exc, sandbox_id) from exc

    async def list(self, request: pb.ListRequest, ctx: RequestContext[Any, Any]) -> pb.ListResponse:
        sandbox_id = sandbox_of(ctx.request_headers)
        listed = await self._guard(sandbox_id, self._call(sandbox_id, "process_list"))
        processes = []
        for proc in listed["processes"]:
            if proc["status"] != "running":
                continue
            argv = proc.get("argv") or []
            config = pb.ProcessConfig(
                cmd=argv[0] if argv else "", args=argv[1:], cwd=proc.get("cwd")
            )
            tag = None if proc["id"].startswith("proc-") else proc["id"]
            processes.append(pb.ProcessInfo(config=config, pid=proc["pid"], tag=tag))
        return pb.ListResponse(processes=processes)

    async def send_input(
        self, request: pb.SendInputRequest, ctx: RequestContext[Any, Any]
    ) -> pb.SendInputResponse:
        sandbox_id = sandbox_of(ctx.request_headers)
        await self._guard(sandbox_id, self._input(sandbox_id, request.process, request.input))
        return pb.SendInputResponse()

    async def _input(
        self, sandbox_id: str, selector: pb.ProcessSelector | None, data: pb.ProcessInput | None
    ) -> None:
        match data.input if data is not None else None:
            case Oneof(field="stdin", value=raw):
                process_id = await self._process_id(sandbox_id, selector)
                payload = base64.b64encode(raw).decode()
                await self._call(
                    sandbox_id, "process_stdin", id=process_id, data=payload, eof=False
                )
            case Oneof(field="pty", value=raw):
                pid = _pid_of(selector)
                if pid is None or not self._terminals.has(sandbox_id, pid):
                    raise ConnectError(Code.NOT_FOUND, "no PTY with that pid")
                await self._terminals.write(sandbox_id, pid, raw)

    async def stream_input(
        self, request: AsyncIterator[pb.StreamInputRequest], ctx: RequestContext[Any, Any]
    ) -> pb.StreamInputResponse:
        sandbox_id = sandbox_of(ctx.request_headers)
        selector: pb.ProcessSelector | None = None
        async for message in request:
            match message.event:
                case Oneof(value=pb.StreamInputRequest.StartEvent() as start):
                    selector = start.process
                case Oneof(value=pb.StreamInputRequest.DataEvent() as data):
                    if selector is None:
                        raise ConnectError(
                            Code.INVALID_ARGUMENT, "send the start event before any data"
                        )
                    await self._guard(sandbox_id, self._input(sandbox_id, selector, data.input))
        return pb.StreamInputResponse()

    async def close_stdin(
        self, request: pb.CloseStdinRequest, ctx: RequestContext[Any, Any]
    ) -> pb.CloseStdinResponse:
        sandbox_id = sandbox_of(ctx.request_headers)

        async def close() -> None:
            process_id = await self._process_id(sandbox_id, request.process)
            await self._call(sandbox_id, "process_stdin", id=process_id, data="", eof=True)

        await self._guard(sandbox_id, close())
        return pb.CloseStdinResponse()

    async def send_signal(
        self, request: pb.SendSignalRequest, ctx: RequestContext[Any, Any]
    ) -> pb.SendSignalResponse:
        sandbox_id = sandbox_of(ctx.request_headers)
        number = int(request.signal) if request.signal else int(signal_module.SIGKILL)

        async def send() -> None:
            pid = _pid_of(request.process)
            if pid is not None and self._terminals.has(sandbox_id, pid):
                await self._terminals.kill(sandbox_id, pid)
                return
            process_id = await self._process_id(sandbox_id, request.process)
            got = await self._call(sandbox_id, "process_get", id=process_id)
            if got["process"]["status"] != "running":
                # envd knows only running processes: the SDKs' kill() answers False.
                raise ConnectError(Code.NOT_FOUND, f"process {process_id} is not running")
            await self._call(sandbox_id, "process_kill", id=process_id, signal=number)

        await self._guard(sandbox_id, send())
        return pb.SendSignalResponse()

    async def update(
        self, request: pb.UpdateRequest, ctx: RequestContext[Any, Any]
    ) -> pb.UpdateResponse:
        sandbox_id = sandbox_of(ctx.request_headers)
        pid = _pid_of(request.process)
        if pid is None or not self._terminals.has(sandbox_id, pid):
            raise ConnectError(Code.NOT_FOUND, "no PTY with that pid")
        size = request.pty.size if request.pty is not None else None
        await self._guard(sandbox_id, self._terminals.resize(sandbox_id, pid, size))
        return pb.UpdateResponse()


def _pid_of(selector: pb.ProcessSelector | None) -> int | None:
    match selector.selector if selector is not None else None:
        case Oneof(field="pid", value=int() as pid):
            return pid
    return None


def _past_deadline(killed: bool) -> ConnectError:
    return ConnectError(
        Code.DEADLINE_EXCEEDED,
        "the command ran past its timeout" + (" and was killed" if killed else ""),
    )


def _keepalive(ctx: RequestContext[Any, Any]) -> float:
    raw = ctx.request_headers.get(KEEPALIVE_HEADER)
    try:
        value = float(raw) if raw else DEFAULT_KEEPALIVE
    except ValueError:
        value = DEFAULT_KEEPALIVE
    return min(max(value, 1.0), 300.0)
