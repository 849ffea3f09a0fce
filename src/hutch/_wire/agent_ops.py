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
    # unary: one RESULT
    "ping",
    "set_secrets",
    "set_env",
    "flush_closes",
    "pty_create",
    "pty_resize",
    "pty_close",
    "pty_list",
    "pty_info",
    "code_context_list",
    "code_context_delete",
    "process_start",
    "process_list",
    "process_get",
    "process_kill",
    "process_kill_all",
    "process_stdin",
    "port_check",
    "session_create",
    "session_list",
    "session_delete",
    "stat",
    "mkdir",
    "remove",
    "move",
    # streams: EVENT/DATA/EOF frames, then one RESULT
    "exec",
    "pty_attach",
    "code_context_create",
    "code_context_restart",
    "code_run",
    "process_logs",
    "session_exec",
    "read",
    "write",
    "list",
    "watch",
]
"""Every op the agent serves (agent/_ops.py's tables are keyed by it, and a test checks that
they serve exactly these); the server's `AgentConnection.call` takes only these names."""

ErrorCode = Literal[
    "invalid_request",  # bad JSON, a field of the wrong type; the message names it
    "unknown_op",  # the op is not one of OpName; the message lists the ones the agent knows
    "cwd_not_found",  # exec: the working directory does not exist
    "user_not_found",  # exec: no such user (or group) in the image's /etc/passwd (/etc/group)
    "spawn_failed",  # exec: the process could not be set up (setuid, setgroups, ...)
    "terminal_not_found",  # pty_*: no terminal with that id (closed, idled out, never made)
    "shell_not_found",  # pty_create: the shell is not installed in the image
    "unknown_language",  # code: not python, javascript, typescript or bash; the message lists them
    "language_unavailable",  # code: the image lacks the interpreter (python3+ipykernel, node)
    "context_not_found",  # code: no such code context
    "context_dead",  # code: the context's interpreter died; restart it
    "context_failed",  # code: the interpreter did not start (the message says why)
    "shutting_down",  # the agent got SIGTERM and accepts no new work
    # file ops (agent/_files.py, agent/_watch.py): from the errno, see _files._ERRNO_CODES
    "file_not_found",
    "not_a_directory",
    "is_a_directory",
    "file_exists",
    "directory_not_empty",
    "not_a_regular_file",  # a FIFO, device or socket: never opened for data
    "read_only",
    "permission_denied",
    "no_space",
    "invalid_path",
    "too_many_links",
    "busy",
    "io_error",
    "cancelled",
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
    ok: NotRequired[Literal[True]]  # sent by the agent; the server's call strips it
    pid: int
    rss_kb: int
    version: str
    shell: str  # "/bin/bash" if the image has it, else "/bin/sh"


class SetSecretsArgs(TypedDict):
    """Merge ``env`` into the environment of every process started from now on."""

    env: dict[str, str]


class SetSecretsRequest(SetSecretsArgs):
    op: Literal["set_secrets"]


class SetSecretsResult(TypedDict):
    ok: NotRequired[Literal[True]]  # sent by the agent; the server's call strips it
    names: list[str]


class ExecArgs(TypedDict):
    """Run one process: exactly one of ``command`` (through the shell) or ``argv`` (no shell).

    Fields left out mean None (``stdin``: False).
    """

    command: NotRequired[str | None]
    argv: NotRequired[list[str] | None]
    env: NotRequired[dict[str, str] | None]  # merged over the sandbox's env
    cwd: NotRequired[str | None]  # relative to /workspace if relative; None: the agent's cwd
    user: NotRequired[str | None]  # "name", "uid", "name:group", "uid:gid"; None: the agent's
    timeout: NotRequired[float | None]  # seconds; kills the whole process tree, exit_code 124
    stdin: NotRequired[bool]  # True: the opener sends DATA/EOF on channel 0; else /dev/null


class ExecRequest(ExecArgs):
    op: Literal["exec"]


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
    oom_killed: bool  # the kernel's OOM killer ended it (the sandbox's memory limit)


class StatArgs(TypedDict):
    """Unary. RESULT: ``{"exists": true, **FileEntry}`` (``{"exists": false}`` with
    ``missing_ok`` when nothing is there). Paths: relative ones start at the workspace."""

    path: str
    missing_ok: NotRequired[bool]
    xattr_prefix: NotRequired[str]  # "user.…": return those attributes as ``xattrs``


class StatRequest(StatArgs):
    op: Literal["stat"]


FileType = Literal["file", "directory", "symlink", "other"]


class FileEntry(TypedDict):
    name: str
    path: str  # relative to the listed directory
    absolute_path: str
    type: FileType
    size: int
    mode: int  # permission bits
    mtime: float
    target: str | None  # a symlink's target
    owner: str  # user name from the image's /etc/passwd, else the uid as text
    group: str  # group name from /etc/group, else the gid as text
    xattrs: NotRequired[dict[str, str]]  # with ``xattr_prefix``: those attributes, prefix cut


class StatResult(TypedDict):
    """`FileEntry`'s fields are there when ``exists`` is true."""

    ok: NotRequired[Literal[True]]  # sent by the agent; the server's call strips it
    exists: bool
    name: NotRequired[str]
    path: NotRequired[str]
    absolute_path: NotRequired[str]
    type: NotRequired[FileType]
    size: NotRequired[int]
    mode: NotRequired[int]
    mtime: NotRequired[float]
    target: NotRequired[str | None]
    owner: NotRequired[str]
    group: NotRequired[str]
    xattrs: NotRequired[dict[str, str]]


class PathResult(TypedDict):
    """mkdir, remove, move: the absolute path made, removed, or moved to."""

    ok: NotRequired[Literal[True]]  # sent by the agent; the server's call strips it
    path: str


class MkdirArgs(TypedDict):
    """Unary. RESULT: ``{"path": absolute path}``."""

    path: str
    recursive: NotRequired[bool]
    mode: NotRequired[int | None]
    owner: NotRequired[str]  # user (name or uid) the new directories belong to


class MkdirRequest(MkdirArgs):
    op: Literal["mkdir"]


class RemoveArgs(TypedDict):
    """Unary. ``file_only`` refuses directories (``is_a_directory``). RESULT: ``{"path"}``."""

    path: str
    recursive: NotRequired[bool]
    file_only: NotRequired[bool]


class RemoveRequest(RemoveArgs):
    op: Literal["remove"]


class MoveArgs(TypedDict):
    """Unary (rename; a copy and delete across filesystems). RESULT: ``{"path"}``."""

    source: str
    destination: str
    overwrite: NotRequired[bool]
    into: NotRequired[bool]  # a destination ending in "/": move into that directory


class MoveRequest(MoveArgs):
    op: Literal["move"]


class ReadRequest(TypedDict):
    """Stream. EVENT ``{"event": "opened", "size", "length"}`` (null for kernel files, read up
    to 16 MiB), DATA on channel 1 (stdout) at byte offsets, EOF, RESULT ``{"size"}``."""

    op: Literal["read"]
    path: str
    offset: NotRequired[int]
    length: NotRequired[int | None]


class WriteRequest(TypedDict):
    """Stream. EVENT ``{"event": "ready"}``; then the opener sends DATA on channel 0 and EOF;
    RESULT ``{"path", "size"}`` once the file is renamed into place."""

    op: Literal["write"]
    path: str
    mode: NotRequired[int | None]
    parents: NotRequired[bool]
    owner: NotRequired[str]  # user (name or uid) a new file and new parents belong to
    xattrs: NotRequired[dict[str, str]]  # ``user.*`` attributes set on the written file
    xattr_prefix: NotRequired[str]  # in place: drop old attributes under it first
    in_place: NotRequired[bool]  # open and truncate the file itself (E2B's envd semantics)


class ListRequest(TypedDict):
    """Stream. DATA frames on channel 1, each a JSON array of ``FileEntry``; RESULT
    ``{"count", "truncated"}``. Symlinks are listed, never followed."""

    op: Literal["list"]
    path: str
    recursive: NotRequired[bool]
    include_hidden: NotRequired[bool]
    limit: NotRequired[int]
    xattr_prefix: NotRequired[str]  # "user.…": each entry gets those attributes as ``xattrs``


class WatchRequest(TypedDict):
    """Stream. EVENT ``{"event": "watching", "path"}``, then EVENT ``{"event": "create" |
    "modify" | "delete" | "move" | "attrib" | "overflow", "path", "is_directory", "old_path"?}``
    until CANCEL (RESULT ``{"reason"}``)."""

    op: Literal["watch"]
    path: str
    recursive: NotRequired[bool]
    include: NotRequired[list[str]]
    exclude: NotRequired[list[str]]


AgentRequest = (
    PingRequest
    | ExecRequest
    | StatRequest
    | MkdirRequest
    | RemoveRequest
    | MoveRequest
    | ReadRequest
    | WriteRequest
    | ListRequest
    | WatchRequest
)
