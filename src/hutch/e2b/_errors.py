"""Errors in E2B's shapes: REST bodies ``{"code": int, "message": str}`` and Connect codes.

E2B's SDKs read ``message`` from REST errors and map Connect codes to their exception classes
(``NOT_FOUND`` -> ``NotFoundException``, ``UNAVAILABLE`` + "was not found" ->
``SandboxNotRunningException``), so the words matter as much as the numbers.
"""

from __future__ import annotations

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from starlette.responses import JSONResponse

from hutch.node import AgentDisconnected, AgentError
from hutch.server.routes import ApiError


class E2bError(Exception):
    """An answer in E2B's REST error shape."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self) -> JSONResponse:
        return JSONResponse({"code": self.status, "message": self.message}, self.status)


def sandbox_gone_message(sandbox_id: str) -> str:
    # NB: the SDKs look for "was not found" to tell a killed sandbox from a network fault.
    return f"The sandbox {sandbox_id} was not found: it was killed or reached its timeout"


def from_api_error(exc: ApiError) -> E2bError:
    """Hutch's own errors (a 422 for bad input, 404 for a missing sandbox) in E2B's shape."""
    status = 400 if exc.status == 422 else exc.status
    return E2bError(status, exc.message)


# Agent error codes (hutch._wire.agent_ops.ErrorCode) -> Connect codes, as envd answers them.
_AGENT_CODES: dict[str, Code] = {
    "file_not_found": Code.NOT_FOUND,
    "process_not_found": Code.NOT_FOUND,
    "cwd_not_found": Code.NOT_FOUND,
    "context_not_found": Code.NOT_FOUND,
    "file_exists": Code.ALREADY_EXISTS,
    "process_exists": Code.ALREADY_EXISTS,
    "permission_denied": Code.PERMISSION_DENIED,
    "read_only": Code.PERMISSION_DENIED,
    "no_space": Code.RESOURCE_EXHAUSTED,
    "not_a_directory": Code.INVALID_ARGUMENT,
    "is_a_directory": Code.INVALID_ARGUMENT,
    "directory_not_empty": Code.FAILED_PRECONDITION,
    "process_not_running": Code.FAILED_PRECONDITION,
    "user_not_found": Code.INVALID_ARGUMENT,
    "shutting_down": Code.UNAVAILABLE,
}


# An envd stream ending with this is cut instead (_stream_cut.py): the sandbox went away.
LOST_CONNECTION = "lost the connection to sandbox"


def connect_error(exc: Exception, sandbox_id: str) -> ConnectError:
    """Any failure below an envd handler as a Connect error (never an unmapped exception:
    connectrpc would answer those with a bare 500)."""
    if isinstance(exc, ConnectError):
        return exc
    if isinstance(exc, AgentDisconnected):
        return ConnectError(Code.UNAVAILABLE, f"{LOST_CONNECTION} {sandbox_id}")
    if isinstance(exc, AgentError):
        return ConnectError(_AGENT_CODES.get(exc.code, Code.INVALID_ARGUMENT), exc.message)
    if isinstance(exc, ApiError):
        if exc.status == 404 and exc.code == "sandbox_not_found":
            return ConnectError(Code.UNAVAILABLE, sandbox_gone_message(sandbox_id))
        code = _AGENT_CODES.get(exc.code)
        if code is None:
            code = {404: Code.NOT_FOUND, 409: Code.FAILED_PRECONDITION, 503: Code.UNAVAILABLE}.get(
                exc.status, Code.INVALID_ARGUMENT
            )
        return ConnectError(code, exc.message)
    return ConnectError(Code.INTERNAL, f"internal error: {exc}")
