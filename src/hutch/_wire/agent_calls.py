"""The agent's contract, op by op: what each unary op takes and returns, and what each stream
op's OPEN frame holds. With agent_ops.py (the exec and file ops, errors, frames' bodies) this
declares every op in `OpName` once.

- `AgentCall` is the typed form of ``call(op, **args)``: one overload per unary op, so that
  mypy checks a call's arguments and what is read from its result. The server's connection
  (`node.AgentConnection.call`) and the gateway's per-sandbox calls are typed by it.
- `StreamRequest` is every stream op's OPEN body: `open_stream` takes only these.
- The agent's handlers are checked against the same types (agent/_ops_typed.py binds each handler
  to its op's types for mypy): a unary handler by what it returns (`UnaryHandlers`), a stream
  handler by what its `send_result` takes (`StreamHandlers`).

Stdlib only, and needed at type-checking time only by the agent (see agent_ops.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal, NotRequired, Protocol, TypedDict, TypeVar, Unpack, overload

from hutch._wire.agent_ops import (
    ExecArgs,
    ExecRequest,
    ExecResult,
    ListRequest,
    MkdirArgs,
    MoveArgs,
    PathResult,
    PingResult,
    ReadRequest,
    RemoveArgs,
    SetSecretsArgs,
    SetSecretsResult,
    StatArgs,
    StatResult,
    WatchRequest,
    WriteRequest,
)


class OkResult(TypedDict):
    """A unary op's RESULT. The agent sends ``ok``; the server's `call` returns the rest."""

    ok: NotRequired[Literal[True]]


class IdArgs(TypedDict):
    """Ops on one thing the agent keeps: a terminal, process, session or code context."""

    id: str


class SetEnvArgs(TypedDict):
    """Set (a string) or unset (None) variables for every process started from now on."""

    env: dict[str, str | None]


class FlushClosesArgs(TypedDict):
    """Under gVisor: have the host close what the sandbox closed every ``every`` seconds and
    after each process exit and op (0: stop), so rclone uploads a bucket's file when the
    sandbox closes it (agent/_close_flush.py). The agent of a runc sandbox does nothing."""

    every: float


class FlushClosesResult(TypedDict):
    ok: NotRequired[Literal[True]]  # sent by the agent; the server's call strips it
    flushing: bool
    flushes: int  # done since the agent started


# -- terminals (agent/_pty.py) -------------------------------------------------------------


class TerminalInfo(TypedDict):
    id: str
    pid: int
    cols: int
    rows: int
    shell: str
    exit_code: int | None  # None while the shell runs
    offset: int  # bytes of output so far: `pty_attach` ``since`` replays from there
    attached: int  # clients attached now


class PtyInfoResult(TerminalInfo, OkResult):
    pass


class PtyCreateArgs(TypedDict):
    cols: int  # 1-1000
    rows: int  # 1-1000
    env: NotRequired[dict[str, str] | None]
    idle_timeout: NotRequired[float | None]  # seconds with no client attached; then closed
    shell: NotRequired[str | None]  # a name or path; None: the image's
    cwd: NotRequired[str | None]


class PtyResizeArgs(IdArgs):
    cols: int
    rows: int


class PtyCloseResult(OkResult):
    id: str
    exit_code: int | None


class PtyListResult(OkResult):
    terminals: list[TerminalInfo]


class PtyAttachRequest(TypedDict):
    """Stream: DATA on channel 1 from byte ``since``, keystrokes as DATA on channel 0; RESULT
    ``{"exit_code"}`` when the shell ends, ``{"detached": true}`` on CANCEL."""

    op: Literal["pty_attach"]
    id: str
    since: NotRequired[int]


# -- code contexts (agent/_code.py) ---------------------------------------------------------


class CodeContextInfo(TypedDict):
    id: str
    language: str
    cwd: str | None  # None: the agent's
    state: str  # starting | ready | dead | deleted
    busy: bool


class CodeContextListResult(OkResult):
    contexts: list[CodeContextInfo]
    pool: dict[str, str]  # language -> state of its warm spare


class CodeContextResult(CodeContextInfo, OkResult):
    pass


class CodeContextCreateArgs(TypedDict):
    """A stream op with only a RESULT, the context's info once its interpreter is ready: so
    the server runs it as a unary call."""

    language: NotRequired[str | None]
    cwd: NotRequired[str | None]
    env: NotRequired[dict[str, str] | None]


class CodeContextCreateRequest(CodeContextCreateArgs):
    op: Literal["code_context_create"]


class CodeContextListArgs(TypedDict):
    """`defaults`: languages whose default context is started now if there is none (E2B
    lists its default Python and JavaScript contexts from the start), in `cwd`; the
    defaults then come first."""

    defaults: NotRequired[list[str]]
    cwd: NotRequired[str | None]


class CodeContextRestartRequest(IdArgs):
    """As `CodeContextCreateArgs`, for an existing context (or "default")."""

    op: Literal["code_context_restart"]


class CodeRunRequest(TypedDict):
    """Stream: EVENT per output (stdout, stderr, result, error), then RESULT ``{"status",
    "context_id", "duration"}``."""

    op: Literal["code_run"]
    code: str
    context_id: NotRequired[str | None]  # None: the language's default context
    language: NotRequired[str | None]
    timeout: NotRequired[float | None]
    env: NotRequired[dict[str, str]]  # set for this run only, then put back


# -- background processes (agent/_bgprocs.py) -----------------------------------------------


class ProcessInfo(TypedDict):
    id: str
    pid: int | None
    command: str | None
    argv: list[str]
    cwd: str | None  # None: the agent's
    status: str  # starting | running | exited | killed
    exit_code: int | None
    signal: int | None
    oom_killed: bool
    timed_out: bool  # SIGKILLed (with its tree) at the `timeout` it was started with
    started_at: float | None
    ended_at: float | None
    stdin_open: bool
    stdout_bytes: int  # the end offsets of its logs
    stderr_bytes: int
    stdout_start: int  # the first offsets still kept (older output was dropped)
    stderr_start: int
    truncated: bool
    log_write_errors: int


class ProcessStartArgs(ExecArgs):
    id: NotRequired[str | None]  # None: the agent makes one
    log_limit: NotRequired[int | None]  # bytes of output kept


class ProcessResult(OkResult):
    process: ProcessInfo


class ProcessListResult(OkResult):
    processes: list[ProcessInfo]


class ProcessKillArgs(IdArgs):
    signal: NotRequired[int]  # 1-64; SIGTERM if left out


class ProcessKillAllArgs(TypedDict):
    signal: NotRequired[int]


class ProcessKillAllResult(OkResult):
    killed: list[str]  # the ids of the processes signalled


class ProcessStdinArgs(IdArgs):
    data: NotRequired[str]  # base64
    eof: NotRequired[bool]


class ProcessLogsRequest(TypedDict):
    """Stream: EVENT ``{"event": "logs", "process"}``, DATA from the offsets, then (with
    ``follow``) live output until the process ends; RESULT ``{"process"}``."""

    op: Literal["process_logs"]
    id: str
    stdout_offset: NotRequired[int | None]
    stderr_offset: NotRequired[int | None]
    follow: NotRequired[bool]
    data: NotRequired[bool]  # False: the events only


class PortCheckArgs(TypedDict):
    port: int
    mode: NotRequired[Literal["tcp", "http"]]
    path: NotRequired[str]  # http: the path to GET


class PortCheckResult(OkResult):
    ready: bool
    status: NotRequired[int]  # http: the status the server answered


# -- sessions (agent/_sessions.py) ----------------------------------------------------------


class SessionInfo(TypedDict):
    id: str
    pid: int | None
    alive: bool
    busy: bool
    queued: int
    created_at: float


class SessionCreateArgs(TypedDict):
    id: NotRequired[str | None]
    cwd: NotRequired[str | None]
    env: NotRequired[dict[str, str] | None]


class SessionResult(OkResult):
    session: SessionInfo


class SessionListResult(OkResult):
    sessions: list[SessionInfo]


class SessionExecRequest(TypedDict):
    """Stream: as exec (DATA on channels 1 and 2, RESULT an `ExecResult`), in the session's
    shell, after the commands queued before it."""

    op: Literal["session_exec"]
    session: str
    command: str
    timeout: NotRequired[float | None]


# -- what stream ops end with (their RESULT frame; the server relays or reads it) ----------


class SessionExecResult(ExecResult):
    session_restarted: bool  # the session's shell had died and was started afresh first


class PtyAttachResult(OkResult):
    exit_code: NotRequired[int | None]  # the shell ended
    closed: NotRequired[bool]  # ...because of pty_close
    detached: NotRequired[bool]  # CANCEL: the shell runs on


class CodeRunResult(OkResult):
    status: str  # ok | error | interrupted | timeout | dead
    context_id: str | None
    duration: float
    execution_count: NotRequired[int]  # the kernel's cell number (Python)


class ReadResult(OkResult):
    size: int


class WriteResult(OkResult):
    path: str
    size: int


class ListResult(OkResult):
    count: int
    truncated: bool  # more entries than ``limit``


class WatchResult(OkResult):
    reason: str


class StreamResults(TypedDict):
    """Each stream op's RESULT (an error RESULT aside)."""

    exec: ExecResult
    pty_attach: PtyAttachResult
    code_context_create: CodeContextResult
    code_context_restart: CodeContextResult
    code_run: CodeRunResult
    process_logs: ProcessResult
    session_exec: SessionExecResult
    read: ReadResult
    write: WriteResult
    list: ListResult
    watch: WatchResult


StreamRequest = (
    ExecRequest
    | PtyAttachRequest
    | CodeContextCreateRequest
    | CodeContextRestartRequest
    | CodeRunRequest
    | ProcessLogsRequest
    | SessionExecRequest
    | ReadRequest
    | WriteRequest
    | ListRequest
    | WatchRequest
)
"""Every stream op's OPEN body (`open_stream` takes only these)."""


ResultT = TypeVar("ResultT", contravariant=True)


class SendsResult(Protocol[ResultT]):
    """A stream op's handler as far as its RESULT goes: a success RESULT is sent only through
    `send_result` (an error RESULT has its own path), so typing that one method types them all."""

    def send_result(self, result: ResultT) -> None: ...


StreamOpener = Callable[[Any, Any, int, dict[str, Any]], SendsResult[ResultT]]
"""``(agent, connection, stream id, OPEN body) -> handler``, as the agent dispatches it."""


class StreamHandlers(TypedDict):
    """What the agent's opener of each stream op returns: a handler whose `send_result` takes
    the op's RESULT (as in `StreamResults`). agent/_ops_typed.py binds its openers to this."""

    exec: StreamOpener[ExecResult]
    pty_attach: StreamOpener[PtyAttachResult]
    code_context_create: StreamOpener[CodeContextResult]
    code_context_restart: StreamOpener[CodeContextResult]
    code_run: StreamOpener[CodeRunResult]
    process_logs: StreamOpener[ProcessResult]
    session_exec: StreamOpener[SessionExecResult]
    read: StreamOpener[ReadResult]
    write: StreamOpener[WriteResult]
    list: StreamOpener[ListResult]
    watch: StreamOpener[WatchResult]


class UnaryHandlers(TypedDict):
    """What the agent's handler of each unary op is: ``(agent, request) -> RESULT``. The
    request is the OPEN body as received (the handler checks every field; it is JSON from
    another process); the RESULT is the op's, ``ok`` included. agent/_ops_typed.py binds its
    handlers to this for mypy."""

    ping: Callable[[Any, dict[str, Any]], PingResult]
    set_secrets: Callable[[Any, dict[str, Any]], SetSecretsResult]
    pty_create: Callable[[Any, dict[str, Any]], PtyInfoResult]
    pty_resize: Callable[[Any, dict[str, Any]], PtyInfoResult]
    pty_close: Callable[[Any, dict[str, Any]], PtyCloseResult]
    pty_list: Callable[[Any, dict[str, Any]], PtyListResult]
    pty_info: Callable[[Any, dict[str, Any]], PtyInfoResult]
    code_context_list: Callable[[Any, dict[str, Any]], CodeContextListResult]
    code_context_delete: Callable[[Any, dict[str, Any]], OkResult]
    process_start: Callable[[Any, dict[str, Any]], ProcessResult]
    process_list: Callable[[Any, dict[str, Any]], ProcessListResult]
    process_get: Callable[[Any, dict[str, Any]], ProcessResult]
    process_kill: Callable[[Any, dict[str, Any]], ProcessResult]
    process_kill_all: Callable[[Any, dict[str, Any]], ProcessKillAllResult]
    process_stdin: Callable[[Any, dict[str, Any]], OkResult]
    set_env: Callable[[Any, dict[str, Any]], OkResult]
    flush_closes: Callable[[Any, dict[str, Any]], FlushClosesResult]
    port_check: Callable[[Any, dict[str, Any]], PortCheckResult]
    session_create: Callable[[Any, dict[str, Any]], SessionResult]
    session_list: Callable[[Any, dict[str, Any]], SessionListResult]
    session_delete: Callable[[Any, dict[str, Any]], OkResult]
    stat: Callable[[Any, dict[str, Any]], StatResult]
    mkdir: Callable[[Any, dict[str, Any]], PathResult]
    remove: Callable[[Any, dict[str, Any]], PathResult]
    move: Callable[[Any, dict[str, Any]], PathResult]


class AgentCall(Protocol):
    """``call(op, **args)`` for every unary op: its arguments and its result, checked."""

    @overload
    def __call__(self, op: Literal["ping"], /) -> Awaitable[PingResult]: ...
    @overload
    def __call__(
        self, op: Literal["set_secrets"], /, **a: Unpack[SetSecretsArgs]
    ) -> Awaitable[SetSecretsResult]: ...
    @overload
    def __call__(
        self, op: Literal["set_env"], /, **a: Unpack[SetEnvArgs]
    ) -> Awaitable[OkResult]: ...
    @overload
    def __call__(
        self, op: Literal["flush_closes"], /, **a: Unpack[FlushClosesArgs]
    ) -> Awaitable[FlushClosesResult]: ...
    @overload
    def __call__(
        self, op: Literal["pty_create"], /, **a: Unpack[PtyCreateArgs]
    ) -> Awaitable[PtyInfoResult]: ...
    @overload
    def __call__(
        self, op: Literal["pty_resize"], /, **a: Unpack[PtyResizeArgs]
    ) -> Awaitable[PtyInfoResult]: ...
    @overload
    def __call__(
        self, op: Literal["pty_close"], /, **a: Unpack[IdArgs]
    ) -> Awaitable[PtyCloseResult]: ...
    @overload
    def __call__(self, op: Literal["pty_list"], /) -> Awaitable[PtyListResult]: ...
    @overload
    def __call__(
        self, op: Literal["pty_info"], /, **a: Unpack[IdArgs]
    ) -> Awaitable[PtyInfoResult]: ...
    @overload
    def __call__(
        self, op: Literal["code_context_list"], /, **a: Unpack[CodeContextListArgs]
    ) -> Awaitable[CodeContextListResult]: ...
    @overload
    def __call__(
        self, op: Literal["code_context_create"], /, **a: Unpack[CodeContextCreateArgs]
    ) -> Awaitable[CodeContextResult]: ...
    @overload
    def __call__(
        self, op: Literal["code_context_restart"], /, **a: Unpack[IdArgs]
    ) -> Awaitable[CodeContextResult]: ...
    @overload
    def __call__(
        self, op: Literal["code_context_delete"], /, **a: Unpack[IdArgs]
    ) -> Awaitable[OkResult]: ...
    @overload
    def __call__(
        self, op: Literal["process_start"], /, **a: Unpack[ProcessStartArgs]
    ) -> Awaitable[ProcessResult]: ...
    @overload
    def __call__(self, op: Literal["process_list"], /) -> Awaitable[ProcessListResult]: ...
    @overload
    def __call__(
        self, op: Literal["process_get"], /, **a: Unpack[IdArgs]
    ) -> Awaitable[ProcessResult]: ...
    @overload
    def __call__(
        self, op: Literal["process_kill"], /, **a: Unpack[ProcessKillArgs]
    ) -> Awaitable[ProcessResult]: ...
    @overload
    def __call__(
        self, op: Literal["process_kill_all"], /, **a: Unpack[ProcessKillAllArgs]
    ) -> Awaitable[ProcessKillAllResult]: ...
    @overload
    def __call__(
        self, op: Literal["process_stdin"], /, **a: Unpack[ProcessStdinArgs]
    ) -> Awaitable[OkResult]: ...
    @overload
    def __call__(
        self, op: Literal["port_check"], /, **a: Unpack[PortCheckArgs]
    ) -> Awaitable[PortCheckResult]: ...
    @overload
    def __call__(
        self, op: Literal["session_create"], /, **a: Unpack[SessionCreateArgs]
    ) -> Awaitable[SessionResult]: ...
    @overload
    def __call__(self, op: Literal["session_list"], /) -> Awaitable[SessionListResult]: ...
    @overload
    def __call__(
        self, op: Literal["session_delete"], /, **a: Unpack[IdArgs]
    ) -> Awaitable[OkResult]: ...
    @overload
    def __call__(self, op: Literal["stat"], /, **a: Unpack[StatArgs]) -> Awaitable[StatResult]: ...
    @overload
    def __call__(
        self, op: Literal["mkdir"], /, **a: Unpack[MkdirArgs]
    ) -> Awaitable[PathResult]: ...
    @overload
    def __call__(
        self, op: Literal["remove"], /, **a: Unpack[RemoveArgs]
    ) -> Awaitable[PathResult]: ...
    @overload
    def __call__(self, op: Literal["move"], /, **a: Unpack[MoveArgs]) -> Awaitable[PathResult]: ...
