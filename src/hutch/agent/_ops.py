"""The agent's op table: op name -> the module and function that handle it.

Handlers are imported on first use, so an idle agent pays (in memory and startup time) only
for the ops it has been asked to run. To add an op, write its handler in a module named for
what it holds (``_files.py``, ``_pty.py``, ...) and add one line below.

- Unary ops: ``handler(agent, request) -> dict`` of RESULT fields. Raise ``OpError(code,
  message)`` for an error result, ``InvalidRequest(field, message)`` for a bad field.
- Stream ops: ``factory(agent, conn, stream, request) -> StreamOp``: an object with
  ``start()``, ``on_frame(kind, channel, payload)``, ``cancel()``, ``terminate(sig)`` and
  ``connection_lost()``; it sends exactly one RESULT and then calls
  ``conn.stream_finished(stream, op)``.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Protocol

    from hutch._wire.agent_ops import OpName

    class StreamOp(Protocol):
        """What the connection asks of a stream op (ExecOp, the file, pty, code ops, ...).
        NB: typed here, not in _server, so that the op modules and _server need not import
        each other."""

        def start(self) -> None: ...
        def on_frame(self, kind: int, channel: int, payload: bytes) -> None: ...
        def cancel(self) -> None: ...
        def terminate(self, sig: int) -> None: ...
        def connection_lost(self) -> None: ...
        def pause_output(self) -> None: ...
        def resume_output(self) -> None: ...

    class Killable(Protocol):
        def kill(self, sig: int) -> object: ...

    class ClosesFlusher(Protocol):
        """_close_flush.CloseFlusher, as the agent and its op see it."""

        flushes: int

        @property
        def every(self) -> float | None: ...
        def enable(self, every: float | None) -> None: ...
        def poke(self) -> None: ...

    class RunningProcesses(Protocol):
        """The background-process table, as shutdown sees it (_bgprocs.ProcessTable)."""

        def all_running(self) -> Iterable[Killable]: ...


UNARY_OPS: dict[OpName, tuple[str, str]] = {
    "ping": ("_server", "ping_op"),
    "set_secrets": ("_secrets", "set_secrets_op"),
    "pty_create": ("_pty", "pty_create"),
    "pty_resize": ("_pty", "pty_resize"),
    "pty_close": ("_pty", "pty_close"),
    "pty_list": ("_pty", "pty_list"),
    "pty_info": ("_pty", "pty_info"),
    "code_context_list": ("_code", "list_op"),
    "code_context_delete": ("_code", "delete_op"),
    "process_start": ("_bgprocs", "start_op"),
    "process_list": ("_bgprocs", "list_op"),
    "process_get": ("_bgprocs", "get_op"),
    "process_kill": ("_bgprocs", "kill_op"),
    "process_kill_all": ("_bgprocs", "kill_all_op"),
    "process_stdin": ("_bgprocs", "stdin_op"),
    "set_env": ("_bgprocs", "set_env_op"),
    "flush_closes": ("_close_flush", "flush_closes_op"),
    "port_check": ("_bgprocs", "port_check_op"),
    "session_create": ("_sessions", "create_op"),
    "session_list": ("_sessions", "list_op"),
    "session_delete": ("_sessions", "delete_op"),
    "stat": ("_files", "stat_op"),
    "mkdir": ("_files", "mkdir_op"),
    "remove": ("_files", "remove_op"),
    "move": ("_files", "move_op"),
}

STREAM_OPS: dict[OpName, tuple[str, str]] = {
    "exec": ("_exec", "open_exec"),
    "pty_attach": ("_pty", "open_attach"),
    "code_context_create": ("_code", "open_create"),
    "code_context_restart": ("_code", "open_restart"),
    "code_run": ("_code_run", "open_run"),
    "process_logs": ("_proc_log_stream", "open_logs"),
    "session_exec": ("_sessions", "open_session_exec"),
    "read": ("_file_transfer", "open_read"),
    "write": ("_file_transfer", "open_write"),
    "list": ("_files", "open_list"),
    "watch": ("_watch", "open_watch"),
}


class OpError(Exception):
    """An op failed in a way the caller should hear about as an error RESULT."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def load_handler(table: dict[OpName, tuple[str, str]], op: OpName) -> object:
    module, name = table[op]
    return getattr(__import__(f"hutch.agent.{module}", fromlist=[name]), name)
