"""Sessions: persistent shells. ``cd``, ``export``, functions and aliases persist between
commands because every command runs in the same shell process, one at a time.

Each command is sent to the shell's stdin as ``eval '<command>' </dev/null`` followed by two
sentinels carrying a random token: one on stdout (with the exit status) and one on stderr.
Output before a channel's sentinel belongs to the command; once both have been seen the
command is over. ``</dev/null`` keeps a command from eating the shell's own input.

A timeout kills the command's process tree but not the shell; if the shell itself is stuck
(a builtin loop such as ``while :; do :; done``), it is replaced by a fresh one and the result
says ``session_restarted`` (the old shell's state is lost).
"""

from __future__ import annotations

import os
import time
from collections import deque

from hutch._wire.frames import Channel, Kind, encode_frame, encode_json_frame

from ._ops import OpError
from ._procs import (
    EXEC_TAG_VAR,
    _scan_processes,
    command_cwd,
    command_env,
    command_identity,
    kill_tree,
    spawn,
)
from ._requests import InvalidRequest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from hutch._wire.agent_calls import (
        OkResult,
        SessionExecResult,
        SessionInfo,
        SessionListResult,
        SessionResult,
    )

    from ._child import Started
    from ._loop import Timer
    from ._server import Agent, Connection

READ_CHUNK = 256 * 1024
KILL_GRACE = 1.0  # after killing a timed-out command's children, how long the shell may take
SIGKILL = 9
ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


class Session:
    def __init__(self, table: SessionTable, sid: str, cwd: str | None, env: dict[str, str]):
        self.id = sid
        self._table = table
        self._cwd = cwd
        self._env = env
        self.pid = 0
        self._popen: Started | None = None
        self._stdin_fd = -1
        self._out_fds: dict[int, int] = {}
        self._tag = b""
        self.queue: deque[SessionExecOp] = deque()
        self.current: SessionExecOp | None = None
        self.alive = False
        self.created_at = time.time()

    def info(self) -> SessionInfo:
        return {
            "id": self.id,
            "pid": self.pid,
            "alive": self.alive,
            "busy": self.current is not None,
            "queued": len(self.queue),
            "created_at": self.created_at,
        }

    def start(self) -> None:
        agent = self._table.agent
        identity = command_identity(None)
        env = command_env(agent.base_env, identity, self._env)
        self._tag = os.urandom(8).hex().encode()
        env[EXEC_TAG_VAR] = self._tag.decode()
        stdin_r, stdin_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        # NB: never interactive: a prompt on stderr would land in the commands' output.
        shell = non_interactive(agent.interactive_shell())
        try:
            self._popen = spawn(
                shell, env=env, cwd=self._cwd, identity=identity, stdin=stdin_r, stdout=out_w,
                stderr=err_w,
            )  # fmt: skip
        except OSError as e:
            for fd in (stdin_r, stdin_w, out_r, out_w, err_r, err_w):
                os.close(fd)
            raise OpError("spawn_failed", f"could not start the session's shell: {e}") from None
        for fd in (stdin_r, out_w, err_w):
            os.close(fd)
        self.pid = self._popen.pid
        self.alive = True
        self._stdin_fd = stdin_w
        os.set_inheritable(stdin_w, False)
        popen = self._popen
        agent.reaper.watch(self.pid, lambda status: self._on_exit(popen, status))
        self._write(b"shopt -s expand_aliases 2>/dev/null\n")
        self._out_fds = {out_r: Channel.STDOUT, err_r: Channel.STDERR}
        for fd in self._out_fds:
            os.set_blocking(fd, False)
            agent.loop.add_reader(fd, lambda fd=fd: self._read(fd))  # type: ignore[misc]

    def _read(self, fd: int) -> None:
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._table.agent.loop.remove_fd(fd)
            os.close(fd)
            self._out_fds.pop(fd, None)
            return
        if self.current is not None:
            self.current.on_output(self._out_fds[fd], data)
        # else: a background job of an earlier command writing between commands: dropped

    def submit(self, op: SessionExecOp) -> None:
        self.queue.append(op)
        self._next()

    def _next(self) -> None:
        if self.current is not None or not self.queue:
            return
        if not self.alive:
            try:
                self.start()
            except OpError as e:
                while self.queue:
                    self.queue.popleft().fail("spawn_failed", e.message)
                return
        self.current = self.queue.popleft()
        token = self.current.token
        script = (
            f"eval {_quote(self.current.command)} </dev/null; __hutch_rc=$?; "
            f"printf '%s:%d\\n' {token} \"$__hutch_rc\"; printf '%s\\n' {token} >&2\n"
        )
        self._write(script.encode())
        self.current.begin()

    def _write(self, data: bytes) -> None:
        # A command line is small; the pipe takes it whole unless the shell is wedged, in
        # which case the command times out like any other.
        view = memoryview(data)
        os.set_blocking(self._stdin_fd, True)
        try:
            while view:
                view = view[os.write(self._stdin_fd, view) :]
        except OSError:
            pass

    def finished(self, op: SessionExecOp) -> None:
        if self.current is op:
            self.current = None
        elif op in self.queue:
            self.queue.remove(op)
        self._next()

    def kill_command(self) -> None:
        """SIGKILL everything below the shell, not the shell."""
        procs = _scan_processes()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in procs.items():
            children.setdefault(ppid, []).append(pid)
        stack = list(children.get(self.pid, ()))
        found: set[int] = set()
        while stack:
            pid = stack.pop()
            if pid not in found:
                found.add(pid)
                stack.extend(children.get(pid, ()))
        for pid in found:
            try:
                os.kill(pid, SIGKILL)
            except OSError:
                pass

    def restart(self) -> None:
        """Replace a stuck shell (its state is lost); the next command starts a new one."""
        self.kill()
        self.alive = False
        self._popen = None

    def kill(self) -> None:
        if self.alive:
            kill_tree(self.pid, self.pid, self._tag)
        self._close_fds()

    def _close_fds(self) -> None:
        loop = self._table.agent.loop
        for fd in list(self._out_fds):
            loop.remove_fd(fd)
            os.close(fd)
        self._out_fds.clear()
        if self._stdin_fd >= 0:
            os.close(self._stdin_fd)
            self._stdin_fd = -1

    def _on_exit(self, popen: Started, status: int) -> None:
        popen.returncode = os.waitstatus_to_exitcode(status)
        if popen is not self._popen:
            return  # a shell replaced after a stuck command
        self._popen = None
        self.alive = False
        code = os.waitstatus_to_exitcode(status)
        current = self.current
        if current is not None:
            # `exit` in a command ends the shell: the command is over, the next one gets a
            # fresh shell.
            current.shell_exited(128 - code if code < 0 else code)
        self._close_fds()


class SessionTable:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.sessions: dict[str, Session] = {}
        self._counter = 0

    def get(self, sid: Any) -> Session:
        if not isinstance(sid, str):
            raise InvalidRequest("session", "must be a string")
        session = self.sessions.get(sid)
        if session is None:
            raise OpError(
                "session_not_found", f"no session {sid!r} in this sandbox; create it first"
            )
        return session


def sessions_of(agent: Agent) -> SessionTable:
    table = agent.sessions
    if not isinstance(table, SessionTable):  # NB: typed loosely on Agent, which must not import us
        table = SessionTable(agent)
        agent.sessions = table
    return table


def create_op(agent: Agent, request: dict[str, Any]) -> SessionResult:
    table = sessions_of(agent)
    sid = request.get("id")
    if sid is None:
        table._counter += 1
        sid = f"session-{table._counter}"
        while sid in table.sessions:
            table._counter += 1
            sid = f"session-{table._counter}"
    if not isinstance(sid, str) or not 1 <= len(sid) <= 128 or not set(sid) <= ID_CHARS:
        raise InvalidRequest("id", "must be 1-128 characters of letters, digits, '-', '_', '.'")
    if sid in table.sessions:
        raise OpError("session_exists", f"session {sid!r} exists; delete it or pick another id")
    cwd = request.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise InvalidRequest("cwd", "must be a string")
    cwd = command_cwd(agent.workspace, cwd)
    env = request.get("env") or {}
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and "=" not in k for k, v in env.items()
    ):
        raise InvalidRequest("env", "must be an object of strings")
    session = Session(table, sid, cwd, env)
    session.start()
    table.sessions[sid] = session
    return {"ok": True, "session": session.info()}


def list_op(agent: Agent, request: dict[str, Any]) -> SessionListResult:
    return {"ok": True, "sessions": [s.info() for s in sessions_of(agent).sessions.values()]}


def delete_op(agent: Agent, request: dict[str, Any]) -> OkResult:
    table = sessions_of(agent)
    session = table.get(request.get("id"))
    del table.sessions[session.id]
    for op in [session.current, *session.queue]:
        if op is not None:
            op.fail("session_not_found", f"session {session.id!r} was deleted")
    session.kill()
    return {"ok": True}


class SessionExecOp:
    """One command in a session: queued, then run; output as DATA frames; one RESULT."""

    def __init__(self, agent: Agent, conn: Connection, stream: int, request: dict[str, Any]):
        self._agent = agent
        self._conn = conn
        self._stream = stream
        self._session = sessions_of(agent).get(request.get("session"))
        command = request.get("command")
        if not isinstance(command, str) or "\0" in command:
            raise InvalidRequest("command", "must be a string without NUL characters")
        timeout = request.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            raise InvalidRequest("timeout", "must be a number of seconds > 0 or null")
        self.command = command
        self._timeout = timeout
        self.token = "__hutch_" + os.urandom(8).hex()
        self._token = self.token.encode()
        self._pending: dict[int, bytes] = {Channel.STDOUT: b"", Channel.STDERR: b""}
        self._offsets: dict[int, int] = {Channel.STDOUT: 0, Channel.STDERR: 0}
        self._done_channels: set[int] = set()
        self._exit_code: int | None = None
        self._started = 0.0
        self._timer: Timer | None = None
        self._timed_out = False
        self._restarted = False
        self.finished = False

    def start(self) -> None:
        # At once, even if the command must wait its turn: the opener knows it was accepted.
        event = {"event": "accepted", "session": self._session.id}
        self._conn.send(encode_json_frame(Kind.EVENT, self._stream, event))
        self._session.submit(self)

    def begin(self) -> None:
        self._started = time.monotonic()
        if self._timeout is not None:
            self._timer = self._agent.loop.call_later(self._timeout, self._on_timeout)

    def on_output(self, channel: int, data: bytes) -> None:
        if channel in self._done_channels:
            return
        buf = self._pending[channel] + data
        at = buf.find(self._token)
        if at >= 0:
            end = buf.find(b"\n", at)
            if end < 0:
                self._pending[channel] = buf  # the sentinel's line is not complete yet
                return
            self._emit(channel, buf[:at])
            if channel == Channel.STDOUT:
                rest = buf[at + len(self._token) : end]
                try:
                    self._exit_code = int(rest.lstrip(b":"))
                except ValueError:
                    self._exit_code = 1
            self._done_channels.add(channel)
            self._pending[channel] = b""
            if len(self._done_channels) == 2:
                self._complete()
            return
        # Hold back what could be the start of the sentinel.
        keep = len(self._token) - 1
        self._emit(channel, buf[:-keep] if len(buf) > keep else b"")
        self._pending[channel] = buf[-keep:] if len(buf) > keep else buf

    def _emit(self, channel: int, data: bytes) -> None:
        if data:
            self._conn.send(
                encode_frame(Kind.DATA, self._stream, data, channel, self._offsets[channel])
            )
            self._offsets[channel] += len(data)

    def _on_timeout(self) -> None:
        self._timer = None
        if self.finished:
            return
        self._timed_out = True
        self._session.kill_command()
        self._timer = self._agent.loop.call_later(KILL_GRACE, self._on_stuck)

    def _on_stuck(self) -> None:
        self._timer = None
        if self.finished:
            return
        # The shell itself is busy (a builtin loop): replace it.
        self._restarted = True
        session = self._session
        session.current = None  # so its exit is not taken for this command's
        session.restart()
        self._complete()

    def shell_exited(self, code: int) -> None:
        for channel in (Channel.STDOUT, Channel.STDERR):
            if channel not in self._done_channels:
                self._emit(channel, self._pending[channel])
        self._exit_code = code
        self._complete()

    def _complete(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for channel in (Channel.STDOUT, Channel.STDERR):
            self._conn.send(
                encode_frame(Kind.EOF, self._stream, b"", channel, self._offsets[channel])
            )
        code = 124 if self._timed_out else (self._exit_code if self._exit_code is not None else 1)
        result: SessionExecResult = {
            "ok": True,
            "exit_code": code,
            "duration": round(time.monotonic() - self._started, 6),
            "timed_out": self._timed_out,
            "signal": None,
            "oom_killed": False,  # the session's shell reports only an exit code
            "session_restarted": self._restarted,
        }
        self.send_result(result)

    def send_result(self, result: SessionExecResult) -> None:
        self._conn.send(encode_json_frame(Kind.RESULT, self._stream, dict(result)))
        self._conn.stream_finished(self._stream, self)
        self._session.finished(self)

    def fail(self, code: str, message: str) -> None:
        if self.finished:
            return
        self.finished = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        error = {"error": {"code": code, "message": message}}
        self._conn.send(encode_json_frame(Kind.RESULT, self._stream, error))
        self._conn.stream_finished(self._stream, self)

    # -- the connection's hooks ----------------------------------------------------------------

    def on_frame(self, kind: int, channel: int, payload: bytes) -> None:
        if kind == Kind.CANCEL:
            self.cancel()

    def cancel(self) -> None:
        if self.finished:
            return
        if self._session.current is self:
            self._on_timeout()
        else:
            self.fail("cancelled", "the command was cancelled before it ran")
            self._session.finished(self)

    def terminate(self, sig: int) -> None:
        pass

    def pause_output(self) -> None:
        pass  # a session's output is small by nature; the connection buffers it

    def resume_output(self) -> None:
        pass

    def connection_lost(self) -> None:
        # Nobody will read the output: stop the command, keep the session.
        self._conn = _NullConnection()  # type: ignore[assignment]
        self.cancel()


class _NullConnection:
    output_paused = False

    def send(self, data: bytes) -> None:
        pass

    def stream_finished(self, stream: int, op: object) -> None:
        pass


def open_session_exec(
    agent: Agent, conn: Connection, stream: int, request: dict[str, Any]
) -> SessionExecOp:
    return SessionExecOp(agent, conn, stream, request)


# Shell options that take the next argument as their value.
_VALUE_OPTIONS = frozenset({"--rcfile", "--init-file"})


def non_interactive(argv: list[str]) -> list[str]:
    """`argv` (a shell and its options, e.g. an image's `["bash", "-il"]`) without what makes
    it interactive: `-i`, `--interactive`, and the `i` of an option cluster (`-il` -> `-l`).
    Options end at `--`, `-` or the first operand (a script, or `-c`'s command)."""
    out = argv[:1]
    args = iter(argv[1:])
    for arg in args:
        if arg in ("--", "-") or arg[:1] not in ("-", "+"):
            out += [arg, *args]
            break
        if arg == "--interactive":
            continue
        out.append(arg)
        if arg.startswith("--"):
            if arg in _VALUE_OPTIONS and (value := next(args, None)) is not None:
                out.append(value)
            continue
        if arg[0] == "-" and "i" in arg:
            out[-1] = arg.replace("i", "")
            if out[-1] == "-":
                out.pop()
        if arg[-1] in ("o", "O") and (value := next(args, None)) is not None:
            out.append(value)  # `-o NAME`, `+O shopt`: the option's value
    return out
