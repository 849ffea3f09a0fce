"""Background processes, their logs, and the sandbox-wide environment: routes that forward
to the agent, which owns the processes (they outlive this server)."""

# ruff: noqa: ASYNC109 -- `timeout` is a query parameter of the API, enforced here.

from __future__ import annotations

import asyncio
import base64
import contextlib
import signal as signal_module
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hutch._wire import Frame, Kind, encode_frame, encode_frame_parts, encode_json_frame
from hutch._wire.agent_calls import PortCheckArgs, ProcessLogsRequest, SessionExecRequest
from hutch.node import AgentConnection, AgentError, AgentStream
from hutch.server._deps import ERROR_RESPONSES, FRAMES_MEDIA_TYPE, Services, Svc, require_key
from hutch.server._errors import (
    InvalidRequest,
    SandboxUnavailable,
)
from hutch.server._models import ExecResult, _check_env
from hutch.server._relay import FramesResponse, gather_exec, relay_on_own

MAX_STDIN_BYTES = 4 * 1024 * 1024
MAX_PROCESS_TIMEOUT = 7 * 24 * 3600  # as an exec's: a week; longer, start it without one
SIGNAL_NAMES = sorted(
    (s.name for s in signal_module.Signals if not s.name.startswith("SIG_")),
    key=lambda n: int(signal_module.Signals[n]),
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProcessStart(_Strict):
    command: str | None = None
    argv: list[str] | None = None
    id: str | None = Field(default=None, description="1-128 of letters, digits, '-', '_', '.'")
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    user: str | None = None
    stdin: bool = Field(default=True, description="give it a stdin pipe (else /dev/null)")
    log_limit: int | None = Field(default=None, ge=4096, description="bytes of output kept")
    timeout: float | None = Field(
        default=None,
        gt=0,
        le=MAX_PROCESS_TIMEOUT,
        description="seconds; at this deadline the process and its children are SIGKILLed "
        "(by the sandbox's agent, so it holds with nobody connected) and its info says "
        "`timed_out`",
    )

    _check_env = field_validator("env")(_check_env)

    @model_validator(mode="after")
    def _one_of(self) -> ProcessStart:
        if (self.command is None) == (self.argv is None):
            raise ValueError("give exactly one of 'command' (a shell string) or 'argv' (a list)")
        return self


class ProcessInfo(BaseModel):
    id: str
    pid: int
    command: str | None
    argv: list[str]
    cwd: str | None
    status: str = Field(description="starting | running | completed | failed | killed")
    exit_code: int | None
    signal: int | None
    oom_killed: bool = Field(
        default=False, description="the kernel's OOM killer ended it (the memory limit)"
    )
    timed_out: bool = Field(
        default=False, description="killed at the `timeout` it was started with"
    )
    started_at: float
    ended_at: float | None
    stdin_open: bool
    stdout_bytes: int
    stderr_bytes: int
    stdout_start: int = Field(description="first stdout offset still kept")
    stderr_start: int
    truncated: bool = Field(description="older output was dropped to stay under the log limit")
    log_write_errors: int


class ProcessList(BaseModel):
    processes: list[ProcessInfo]


class ProcessLogs(BaseModel):
    stdout: str
    stderr: str
    process: ProcessInfo


class SignalBody(_Strict):
    signal: str | int = "SIGTERM"


class KillAllResult(BaseModel):
    killed: list[str]


class WaitForPort(_Strict):
    port: int = Field(ge=1, le=65535)
    mode: Literal["tcp", "http"] = "tcp"
    path: str = Field(default="/", pattern=r"^/")
    status_min: int = Field(default=200, ge=100, le=599)
    status_max: int = Field(default=399, ge=100, le=599)
    timeout: float | None = Field(default=60.0, gt=0, le=3600)


class PortWaitResult(BaseModel):
    ready: bool
    status: int | None = None
    process: ProcessInfo


class SessionCreate(_Strict):
    id: str | None = Field(default=None, description="1-128 of letters, digits, '-', '_', '.'")
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)

    _check_env = field_validator("env")(_check_env)


class SessionInfo(BaseModel):
    id: str
    pid: int
    alive: bool
    busy: bool
    queued: int
    created_at: float


class SessionList(BaseModel):
    sessions: list[SessionInfo]


class SessionExec(_Strict):
    command: str
    timeout: float | None = Field(default=None, gt=0, le=86400)


class EnvBody(_Strict):
    env: dict[str, str | None]

    @field_validator("env")
    @classmethod
    def _names_and_values(cls, env: dict[str, str | None]) -> dict[str, str | None]:
        # NB: in the model, so a bad name is a 422 (it was checked in the route: a 500).
        _check_env({k: v or "" for k, v in env.items()})
        return env


def parse_signal(value: str | int) -> int:
    """A signal name (``SIGTERM``, ``TERM``, ``term``) or number to its number."""
    number: int | None = None
    if isinstance(value, int):
        number = value if 1 <= value <= 64 else None
    elif value.strip().isdigit():
        number = int(value) if 1 <= int(value) <= 64 else None
    else:
        name = value.strip().upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        if name in SIGNAL_NAMES:
            number = int(signal_module.Signals[name])
    if number is None:
        raise InvalidRequest(
            f"invalid signal {value!r}; use a number from 1 to 64 or one of: "
            + ", ".join(SIGNAL_NAMES),
            code="invalid_signal",
            fields=[{"loc": ["body", "signal"], "message": "unknown signal"}],
        )
    return number


async def open_logs(
    svc: Svc, sandbox_id: str, request: ProcessLogsRequest, conn: AgentConnection | None = None
) -> AgentStream:
    """Open the agent's logs stream (on ``conn``, else the shared connection)."""
    return await svc.sandboxes.open_stream(sandbox_id, request, conn)


async def close_when_draining(svc: Services, conn: AgentConnection) -> None:
    """Close a stream's own connection when the server begins to shut down."""
    await svc.draining.wait()
    await conn.close()


async def _first(stream: AgentStream) -> Frame:
    """The stream's first frame; an error RESULT raises the agent's error."""
    frame = await stream.__anext__()
    if frame.kind is Kind.RESULT:
        _raise_error(frame.json())
    return frame


def _raise_error(result: dict[str, Any]) -> None:
    error = result.get("error")
    if isinstance(error, dict):
        raise AgentError(str(error.get("code")), str(error.get("message")))


def build_procs_router() -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], responses=ERROR_RESPONSES)
    base = "/sandboxes/{sandbox_id}/processes"

    @router.post(base, status_code=201, response_model=ProcessInfo)
    async def start_process(svc: Svc, sandbox_id: str, body: ProcessStart) -> Any:
        args = body.model_dump()
        args["env"] = args["env"] or None
        result = await svc.sandboxes.agent_call(sandbox_id)("process_start", **args)
        return result["process"]

    @router.get(base, response_model=ProcessList)
    async def list_processes(svc: Svc, sandbox_id: str) -> Any:
        return await svc.sandboxes.agent_call(sandbox_id)("process_list")

    @router.post(f"{base}/kill", response_model=KillAllResult)
    async def kill_all_processes(svc: Svc, sandbox_id: str, body: SignalBody | None = None) -> Any:
        sig = parse_signal((body or SignalBody()).signal)
        return await svc.sandboxes.agent_call(sandbox_id)("process_kill_all", signal=sig)

    @router.get(base + "/{process_id}", response_model=ProcessInfo)
    async def get_process(svc: Svc, sandbox_id: str, process_id: str) -> Any:
        return (await svc.sandboxes.agent_call(sandbox_id)("process_get", id=process_id))["process"]

    @router.post(base + "/{process_id}/kill", response_model=ProcessInfo)
    async def kill_process(
        svc: Svc, sandbox_id: str, process_id: str, body: SignalBody | None = None
    ) -> Any:
        sig = parse_signal((body or SignalBody()).signal)
        result = await svc.sandboxes.agent_call(sandbox_id)(
            "process_kill", id=process_id, signal=sig
        )
        return result["process"]

    @router.post(base + "/{process_id}/stdin", status_code=204)
    async def write_stdin(
        svc: Svc, sandbox_id: str, process_id: str, request: Request, eof: bool = False
    ) -> Response:
        """The raw request body (any content type) goes to the process's stdin."""
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > MAX_STDIN_BYTES:
                raise InvalidRequest(f"send at most {MAX_STDIN_BYTES} bytes of stdin at a time")
        payload = base64.b64encode(bytes(data)).decode()
        await svc.sandboxes.agent_call(sandbox_id)(
            "process_stdin", id=process_id, data=payload, eof=eof
        )
        return Response(status_code=204)

    @router.post(base + "/{process_id}/stdin/close", status_code=204)
    async def close_stdin(svc: Svc, sandbox_id: str, process_id: str) -> Response:
        await svc.sandboxes.agent_call(sandbox_id)(
            "process_stdin", id=process_id, data="", eof=True
        )
        return Response(status_code=204)

    @router.get(base + "/{process_id}/logs", response_model=ProcessLogs)
    async def get_logs(svc: Svc, sandbox_id: str, process_id: str) -> Any:
        """What is kept, as UTF-8 text (with replacement); the stream form is binary-safe."""
        stream = await open_logs(
            svc, sandbox_id, {"op": "process_logs", "id": process_id, "follow": False}
        )
        out: list[bytes] = []
        err: list[bytes] = []
        await _first(stream)
        async for frame in stream:
            if frame.kind is Kind.DATA:
                (out if frame.channel == 1 else err).append(frame.payload)
            elif frame.kind is Kind.RESULT:
                return {
                    "stdout": b"".join(out).decode("utf-8", "replace"),
                    "stderr": b"".join(err).decode("utf-8", "replace"),
                    "process": frame.json()["process"],
                }
        raise SandboxUnavailable("the logs stream ended early; retry")

    @router.get(
        base + "/{process_id}/logs/stream",
        response_class=StreamingResponse,
        responses={200: {"content": {FRAMES_MEDIA_TYPE: {}}, "description": "binary frames"}},
    )
    async def stream_logs(
        svc: Svc,
        sandbox_id: str,
        process_id: str,
        stdout_offset: Annotated[int, Query(ge=0)] = 0,
        stderr_offset: Annotated[int, Query(ge=0)] = 0,
        follow: bool = True,
        data: bool = True,
        timeout: Annotated[float | None, Query(gt=0, le=86400)] = None,
    ) -> StreamingResponse:
        """Frames as exec/stream: an EVENT ``logs`` (with the process, and ``*_skipped`` when
        asked offsets are no longer kept), DATA at offsets, EOFs, then a RESULT ``{"process"}``.
        ``timeout``: end the stream after that many seconds even if the process still runs
        (the RESULT's process then has status ``running``)."""
        request: ProcessLogsRequest = {
            "op": "process_logs",
            "id": process_id,
            "stdout_offset": stdout_offset,
            "stderr_offset": stderr_offset,
            "follow": follow,
            "data": data,
        }
        # Its own connection: a slow reader here must not stall the sandbox's other requests.
        conn = await svc.sandboxes.dedicated_agent(sandbox_id)
        try:
            stream = await open_logs(svc, sandbox_id, request, conn)
            # The first frame before the 200: an unknown process is a 404, not a broken stream.
            first = await _first(stream)
        except BaseException:
            await conn.close()
            raise

        async def frames() -> AsyncIterator[bytes]:
            done = first.kind is Kind.RESULT
            # A server shutting down ends the body without a RESULT: the SDK resumes from the
            # offsets it has on the next server (the output is kept by the agent).
            drain = asyncio.create_task(close_when_draining(svc, conn))
            try:
                yield encode_frame(first.kind, 0, first.payload, first.channel, first.offset)
                if done:
                    return
                loop = asyncio.get_running_loop()
                deadline = None if timeout is None else loop.time() + timeout
                while not done:
                    try:
                        async with asyncio.timeout_at(deadline):
                            frame = await stream.__anext__()
                    except TimeoutError:
                        deadline = None
                        await stream.cancel()  # the agent ends it with EOFs and a RESULT
                        continue
                    except StopAsyncIteration:
                        break
                    if frame.kind is Kind.RESULT:
                        done = True
                    for part in encode_frame_parts(
                        frame.kind, 0, frame.payload, frame.channel, frame.offset
                    ):
                        yield part
            except AgentError as exc:
                if svc.draining.is_set():
                    return
                done = True
                error = {"error": {"code": "sandbox_unavailable", "message": str(exc)}}
                yield encode_json_frame(Kind.RESULT, 0, error)
            finally:
                drain.cancel()
                await conn.close()

        return StreamingResponse(frames(), media_type=FRAMES_MEDIA_TYPE)

    @router.post(base + "/{process_id}/wait", response_model=ProcessInfo)
    async def wait_process(
        svc: Svc,
        sandbox_id: str,
        process_id: str,
        timeout: Annotated[float, Query(gt=0, le=3600)] = 60.0,
    ) -> Any:
        """Wait until the process has ended (or ``timeout`` seconds); returns its info either
        way: check ``status``."""
        stream = await open_logs(
            svc, sandbox_id, {"op": "process_logs", "id": process_id, "data": False}
        )
        await _first(stream)
        try:
            async with asyncio.timeout(timeout):
                async for frame in stream:
                    if frame.kind is Kind.RESULT:
                        return frame.json()["process"]
        except TimeoutError:
            with contextlib.suppress(Exception):
                await stream.cancel()
        return (await svc.sandboxes.agent_call(sandbox_id)("process_get", id=process_id))["process"]

    @router.post(base + "/{process_id}/wait-for-port", response_model=PortWaitResult)
    async def wait_for_port(svc: Svc, sandbox_id: str, process_id: str, body: WaitForPort) -> Any:
        """Poll the port from inside the sandbox until it is ready, the process ends, or the
        timeout passes; ``ready`` says which (with ``process.status``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (body.timeout or 3600)
        check: PortCheckArgs = {"port": body.port, "mode": body.mode, "path": body.path}
        while True:
            result = await svc.sandboxes.agent_call(sandbox_id)("port_check", **check)
            status = result.get("status")
            ready = bool(result.get("ready")) and (
                status is None or body.status_min <= int(status) <= body.status_max
            )
            info = (await svc.sandboxes.agent_call(sandbox_id)("process_get", id=process_id))[
                "process"
            ]
            if ready or info["status"] not in ("starting", "running"):
                return {"ready": ready, "status": status, "process": info}
            if loop.time() > deadline:
                return {"ready": False, "status": status, "process": info}
            await asyncio.sleep(0.1)

    sessions = "/sandboxes/{sandbox_id}/sessions"

    @router.post(sessions, status_code=201, response_model=SessionInfo)
    async def create_session(svc: Svc, sandbox_id: str, body: SessionCreate | None = None) -> Any:
        args = (body or SessionCreate()).model_dump()
        return (await svc.sandboxes.agent_call(sandbox_id)("session_create", **args))["session"]

    @router.get(sessions, response_model=SessionList)
    async def list_sessions(svc: Svc, sandbox_id: str) -> Any:
        return await svc.sandboxes.agent_call(sandbox_id)("session_list")

    @router.delete(sessions + "/{session_id}", status_code=204)
    async def delete_session(svc: Svc, sandbox_id: str, session_id: str) -> Response:
        """Ends the session's shell and what it started; other processes are untouched."""
        await svc.sandboxes.agent_call(sandbox_id)("session_delete", id=session_id)
        return Response(status_code=204)

    async def open_session_exec(
        svc: Svc,
        sandbox_id: str,
        session_id: str,
        body: SessionExec,
        conn: AgentConnection | None = None,
    ) -> AgentStream:
        request: SessionExecRequest = {
            "op": "session_exec",
            "session": session_id,
            "command": body.command,
            "timeout": body.timeout,
        }
        stream = await svc.sandboxes.open_stream(sandbox_id, request, conn)
        await _first(stream)  # "accepted", or the error (unknown session)
        return stream

    @router.post(sessions + "/{session_id}/exec", response_model=ExecResult)
    async def session_exec(
        svc: Svc, sandbox_id: str, session_id: str, body: SessionExec
    ) -> ExecResult:
        stream = await open_session_exec(svc, sandbox_id, session_id, body)
        gathered, result = await gather_exec(stream)
        _raise_error(result)
        return gathered

    @router.post(
        sessions + "/{session_id}/exec/stream",
        response_class=StreamingResponse,
        responses={200: {"content": {FRAMES_MEDIA_TYPE: {}}, "description": "binary frames"}},
    )
    async def session_exec_stream(
        svc: Svc, sandbox_id: str, session_id: str, body: SessionExec
    ) -> StreamingResponse:
        """As ``exec/stream``; the command waits for the session's previous one to end."""
        # Its own connection, as exec/stream's: a reader that stalls stalls only itself.
        frames = await relay_on_own(
            svc.sandboxes.dedicated_agent(sandbox_id),
            lambda conn: open_session_exec(svc, sandbox_id, session_id, body, conn),
            lambda conn: svc.sandboxes.release_agent(sandbox_id, conn),
        )
        return FramesResponse(frames, media_type=FRAMES_MEDIA_TYPE)

    @router.put("/sandboxes/{sandbox_id}/env", status_code=204)
    async def set_env_vars(svc: Svc, sandbox_id: str, body: EnvBody) -> Response:
        """Set (or, with null, unset) variables for every new command, process and session."""
        await svc.sandboxes.agent_call(sandbox_id)("set_env", env=body.env)
        return Response(status_code=204)

    return router
