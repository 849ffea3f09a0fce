"""Checking OPEN requests (sans-I/O): every bad field becomes an ``InvalidRequest`` naming it."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Container
    from typing import Any

    from hutch._wire.agent_ops import ExecRequest, OpName

_EXEC_FIELDS = ("op", "command", "argv", "env", "cwd", "user", "timeout", "stdin")


class InvalidRequest(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _check_text(field: str, value: str) -> None:
    # NUL cannot cross execve(); say so here rather than as a spawn failure.
    if "\0" in value:
        raise InvalidRequest(field, "must not contain NUL characters")


def _optional_str(request: dict[str, Any], field: str) -> str | None:
    value = request.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(field, f"must be a string or null, not {type(value).__name__}")
    _check_text(field, value)
    return value


class UnknownOp(InvalidRequest):
    """The op is not one the agent serves (the error RESULT's code is ``unknown_op``)."""


def parse_op(request: dict[str, Any], known: Container[str]) -> OpName:
    op = request.get("op")
    if not isinstance(op, str):
        raise InvalidRequest("op", "missing or not a string")
    if op not in known:
        raise UnknownOp("op", f"unknown op {op!r}")
    return op  # type: ignore[return-value]  # NB: `known` holds the tables keyed by OpName


def parse_exec(request: dict[str, Any]) -> ExecRequest:
    """Return a complete ``ExecRequest`` (absent fields filled in) or raise ``InvalidRequest``."""
    for field in request:
        if field not in _EXEC_FIELDS:
            raise InvalidRequest(field, f"unknown field; exec takes {', '.join(_EXEC_FIELDS)}")
    command = _optional_str(request, "command")
    argv = request.get("argv")
    if argv is not None:
        if not isinstance(argv, list) or not argv:
            raise InvalidRequest("argv", "must be a non-empty list of strings")
        for i, arg in enumerate(argv):
            if not isinstance(arg, str):
                raise InvalidRequest(f"argv[{i}]", "must be a string")
            _check_text(f"argv[{i}]", arg)
        if not argv[0]:
            raise InvalidRequest("argv[0]", "must not be empty")
    if (command is None) == (argv is None):
        raise InvalidRequest("command", "give exactly one of command (a shell string) or argv")
    env = request.get("env")
    if env is not None:
        if not isinstance(env, dict):
            raise InvalidRequest("env", "must be an object of strings")
        for key, value in env.items():
            if not key or "=" in key:
                raise InvalidRequest(f"env.{key}", "is not a valid variable name")
            if not isinstance(value, str):
                raise InvalidRequest(f"env.{key}", "must be a string")
            _check_text(f"env.{key}", key + value)
    timeout = request.get("timeout")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise InvalidRequest("timeout", "must be a number of seconds or null")
        if not 0 < timeout < 1e9:
            raise InvalidRequest("timeout", "must be greater than 0")
    stdin = request.get("stdin", False)
    if stdin is None:
        stdin = False
    if not isinstance(stdin, bool):
        raise InvalidRequest("stdin", "must be true or false")
    cwd = _optional_str(request, "cwd")
    user = _optional_str(request, "user")
    if user is not None and not user:
        raise InvalidRequest("user", "must not be empty")
    return {
        "op": "exec",
        "command": command,
        "argv": argv,
        "env": env,
        "cwd": cwd,
        "user": user,
        "timeout": None if timeout is None else float(timeout),
        "stdin": stdin,
    }


def parse_ping(request: dict[str, Any]) -> None:
    for field in request:
        if field != "op":
            raise InvalidRequest(field, "unknown field; ping takes no arguments")
