"""The one table from the agent's errors to the API's.

Looked up like starlette's exception handlers: first by the error's class, walking its MRO
(a lost connection is `AgentDisconnected`, whatever its code), then, for an error the agent
answered, by its `code`. An error the table does not know keeps the agent's code as a 422:
the agent's codes describe bad input (a missing file, a foreign process id).

Routes do not catch agent errors: they propagate to the app's handler, which calls
`api_error_for`. Code that must act on an error (drain an upload first, close a WebSocket)
catches `ApiError` after converting with `api_error_for`.
"""

from __future__ import annotations

from collections.abc import Callable

from hutch.node import AgentDisconnected, AgentError, AgentUnreachable
from hutch.server._errors import (
    ApiError,
    CodeContextDead,
    CodeContextFailed,
    CodeContextNotFound,
    FileError,
    InvalidRequest,
    ProcessExists,
    ProcessNotFound,
    ProcessNotRunning,
    SandboxUnavailable,
    SessionExists,
    SessionNotFound,
    TerminalNotFound,
)

Mapper = Callable[[AgentError], ApiError]


def _whose(error: AgentError) -> str:
    return f"sandbox {error.sandbox_id}" if error.sandbox_id else "the sandbox"


def _unavailable(error: AgentError) -> ApiError:
    return SandboxUnavailable(f"lost the connection to {_whose(error)}'s agent ({error}); retry")


def _file(status: int) -> Mapper:
    return lambda e: FileError(e.message, code=e.code, status=status)


def _as(cls: type[ApiError]) -> Mapper:
    return lambda e: cls(e.message, code=e.code)


def _internal(error: AgentError) -> ApiError:
    return ApiError(f"the agent failed: {error.message}", code="internal")


BY_CODE: dict[str, Mapper] = {
    # files (the agent's _files.py)
    "file_not_found": _file(404),
    "not_a_directory": _file(409),
    "is_a_directory": _file(409),
    "file_exists": _file(409),
    "directory_not_empty": _file(409),
    "not_a_regular_file": _file(409),
    "read_only": _file(409),
    "busy": _file(409),
    "permission_denied": _file(403),
    "no_space": _file(507),
    "invalid_path": _file(422),
    "too_many_links": _file(422),
    "io_error": _file(422),
    "shutting_down": _file(503),
    # processes and sessions
    "process_not_found": _as(ProcessNotFound),
    "process_not_running": _as(ProcessNotRunning),
    "stdin_full": _as(ProcessNotRunning),
    "process_exists": _as(ProcessExists),
    "session_not_found": _as(SessionNotFound),
    "session_exists": _as(SessionExists),
    # code contexts
    "context_not_found": _as(CodeContextNotFound),
    "context_dead": _as(CodeContextDead),
    "context_failed": _as(CodeContextFailed),
    # terminals
    "terminal_not_found": lambda e: TerminalNotFound(
        f"{e.message} (it was closed, idled out, or never existed); list them with "
        "GET /v1/sandboxes/{id}/terminals"
    ),
    "internal": _internal,
}


def _by_code(error: AgentError) -> ApiError:
    mapper = BY_CODE.get(error.code)
    if mapper is not None:
        return mapper(error)
    return InvalidRequest(error.message, code=error.code)


BY_CLASS: dict[type[AgentError], Mapper] = {
    AgentUnreachable: lambda e: SandboxUnavailable(e.message),
    AgentDisconnected: _unavailable,
    AgentError: _by_code,
}


def api_error_for(error: AgentError) -> ApiError:
    """The API error a client gets for an agent's error."""
    for cls in type(error).__mro__:
        mapper = BY_CLASS.get(cls)
        if mapper is not None:
            return mapper(error)
    return _by_code(error)


def as_api_error(error: BaseException) -> ApiError | None:
    """What a client is told for an error of the API or of an agent; None for any other."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, AgentError):
        return api_error_for(error)
    return None
