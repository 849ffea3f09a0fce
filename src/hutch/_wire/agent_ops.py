"""The agent's operations: the JSON bodies of OPEN, EVENT and RESULT frames.

Typed once here and shared by the agent (inside the sandbox) and the server's client for it.
Every stream starts with an OPEN frame holding one of the ``*Request`` dicts, may carry EVENT
and DATA/EOF frames, and ends with exactly one RESULT frame: ``{"ok": true, ...fields}`` or
``{"error": {"code": ..., "message": ...}}``.

Stdlib only. The agent imports this module for type checking only (``typing`` costs memory
in a process that must idle at a few MB), so nothing here may be needed at run time.
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

OpName = Literal[
    "exec",
    "ping",
    "set_env",
    "set_secrets",
    "pty_create",
    "pty_resize",
    "pty_close",
    "pty_list",
    "pty_info",
    "pty_attach",
]

ErrorCode = Literal[
    "invalid_request",  # unknown op, bad JSON, a field of the wrong type; the message names it
    "cwd_not_found",  # exec: the working directory does not exist
    "user_not_found",  # exec: no such user (or group) in the image's /etc/passwd (/etc/group)
    "spawn_failed",  # exec: the process could not be set up (setuid, setgroups, ...)
    "terminal_not_found",  # pty_*: no terminal with that id (closed, idled out, never made)
    "shell_not_found",  # pty_create: the shell is not installed in the image
    "unknown_language",  # code: not python, javascript or typescript; the message lists them
    "language_unavailable",  # code: the image lacks the interpreter (python3+ipykernel, node)
    "context_not_found",  # code: no such code context
    "context_dead",  # code: the context's interpreter died; restart it
    "context_failed",  # code: the interpreter did not start (the message says why)
    "shutting_down",  # the agent got SIGTERM and accepts no new work
    "internal",  # a bug in the agent
]


class ErrorBody(TypedDict):
    code: ErrorCode
    message: str


class ErrorResult(TypedDict):
    error: ErrorBody


class PingRequest(TypedDict):
    op: Literal["ping"]


class PingResult(TypedDict):
    ok: Literal[True]
    pid: int
    rss_kb: int
    version: str
    shell: str  # "/bin/bash" if the image has it, else "/bin/sh"


class SetSecretsRequest(TypedDict):
    """Merge ``env`` into the environment of every process started from now on."""

    op: Literal["set_secrets"]
    env: dict[str, str]


class SetSecretsResult(TypedDict):
    ok: Literal[True]
    names: list[str]


class ExecRequest(TypedDict):
    """Run one process: exactly one of ``command`` (through the shell) or ``argv`` (no shell).

    Fields left out mean None (``stdin``: False).
    """

    op: Literal["exec"]
    command: NotRequired[str | None]
    argv: NotRequired[list[str] | None]
    env: NotRequired[dict[str, str] | None]  # merged over the sandbox's env
    cwd: NotRequired[str | None]  # relative to /workspace if relative; None: the agent's cwd
    user: NotRequired[str | None]  # "name", "uid", "name:group", "uid:gid"; None: the agent's
    timeout: NotRequired[float | None]  # seconds; kills the whole process tree, exit_code 124
    stdin: NotRequired[bool]  # True: the opener sends DATA/EOF on channel 0; else /dev/null


class StartedEvent(TypedDict):
    """The process exists. Not sent when it could not be started (exit_code 126/127)."""

    event: Literal["started"]
    pid: int


class ExecResult(TypedDict):
    ok: Literal[True]
    exit_code: int  # 128 + signo after a signal death; 124 after a timeout; 127 not found
    duration: float  # seconds from spawn to exit
    timed_out: bool
    signal: int | None  # the signal that ended the process, if one did


AgentRequest = PingRequest | ExecRequest
