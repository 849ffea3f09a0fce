"""One ``exec`` stream: a process, its pipes, its timeout and its RESULT."""

from __future__ import annotations

import os
import time

from hutch._wire.frames import Channel, Kind, encode_frame, encode_json_frame

from ._ops import OpError
from ._procs import (
    EXEC_TAG_VAR,
    command_cwd,
    command_env,
    command_identity,
    kill_tree,
    program_on_path,
    signal_tree,
    spawn,
)
from ._requests import parse_exec
from ._word_command import direct_command
from ._workcg import oom_killed_since, oom_kills

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from hutch._wire.agent_ops import ErrorCode, ExecRequest, ExecResult

    from ._child import Started
    from ._loop import Timer
    from ._server import Agent, Connection

CHUNK = 1024 * 1024
# A bigger pipe than Linux's 64 KiB default: fewer, larger reads and frames for a process
# that writes fast (measured: 2 GB of /dev/zero through exec_stream). fcntl.F_SETPIPE_SZ.
PIPE_SIZE = 1024 * 1024
DEFAULT_PIPE_SIZE = 64 * 1024
F_SETPIPE_SZ = 1031
# After the process exits, how long its output pipes may stay open. A background child that
# inherited them ("server &") would otherwise hold the exec open until it dies.
OUTPUT_GRACE = 0.2
# Stdin bytes buffered for one exec before the connection stops being read.
STDIN_HIGH_WATER = 4 * 1024 * 1024
STDIN_LOW_WATER = 1024 * 1024
SIGKILL = 9


class _Output:
    __slots__ = ("fd", "channel", "offset", "grown")

    def __init__(self, fd: int, channel: int) -> None:
        self.fd = fd
        self.channel = channel
        self.offset = 0
        self.grown = False


class ExecOp:
    """Owns one process from spawn to RESULT. The connection may go away first; the process
    is then killed and the op ends silently once it has been reaped."""

    def __init__(self, agent: Agent, conn: Connection, stream: int, request: ExecRequest) -> None:
        self._agent = agent
        self._conn = conn
        self._stream = stream
        self._request = request
        self._outputs: list[_Output] = []
        self._stdin_fd: int | None = None
        self._stdin_buf = bytearray()
        self._stdin_eof = False
        self._popen: Started | None = None
        self.pid = 0
        self._started = 0.0
        self._status: int | None = None
        self._duration = 0.0
        self._timed_out = False
        self._timer: Timer | None = None
        self._grace: Timer | None = None
        self._tag: bytes | None = None
        self._paused = False
        self._detached = False
        self._oom_kills = -1
        self.finished = False

    # -- start ---------------------------------------------------------------------------------

    def start(self) -> None:
        request = self._request
        try:
            identity = command_identity(request["user"])
            cwd = command_cwd(self._agent.workspace, request["cwd"])
        except OpError as e:
            # NB: command_identity/command_cwd raise only user_not_found and cwd_not_found.
            return self._fail(e.code, e.message)  # type: ignore[arg-type]
        env = command_env(self._agent.base_env, identity, request["env"])
        self._tag = os.urandom(8).hex().encode()
        env[EXEC_TAG_VAR] = self._tag.decode()
        direct = None
        executable = None
        if request["argv"] is not None:
            args = request["argv"]
            if identity is None or identity.uid == 0 == os.getuid():
                # NB: only as the agent's own user (or root as root): os.access answers for
                # the agent, not for another user.
                executable = program_on_path(args[0], env["PATH"])
        else:
            assert request["command"] is not None
            shell = self._agent.shell()
            args = [shell, "-c", request["command"]]
            direct = direct_command(shell, request["command"], env, cwd)

        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        child_fds = [out_w, err_w]
        stdin_r: int | None = None
        if request["stdin"]:
            stdin_r, self._stdin_fd = os.pipe()
            child_fds.append(stdin_r)
            os.set_blocking(self._stdin_fd, False)
        started = time.monotonic()
        self._oom_kills = oom_kills()
        try:
            self._popen = None
            if direct is not None:
                try:
                    self._popen = spawn(
                        direct.argv,
                        env=direct.env,
                        cwd=cwd,
                        identity=identity,
                        stdin=stdin_r,
                        stdout=out_w,
                        stderr=err_w,
                        executable=direct.executable,
                    )
                except OSError:
                    pass  # not started (not runnable, no #!, ...): bash says what it says
            if self._popen is None:
                self._popen = spawn(
                    args,
                    env=env,
                    cwd=cwd,
                    identity=identity,
                    stdin=stdin_r,
                    stdout=out_w,
                    stderr=err_w,
                    executable=executable,
                )
        except OSError as e:
            if executable is not None and e.filename == executable:
                e.filename = args[0]  # as the child's own walk names it (see _spawn_failed)
            for fd in (out_r, err_r, *child_fds):
                os.close(fd)
            if self._stdin_fd is not None:
                os.close(self._stdin_fd)
                self._stdin_fd = None
            return self._spawn_failed(e, args[0], cwd)
        for fd in child_fds:
            os.close(fd)
        self.pid = self._popen.pid
        self._started = started
        self._agent.reaper.watch(self.pid, self._on_exit)
        self._agent.running.add(self)
        for fd, channel in ((out_r, Channel.STDOUT), (err_r, Channel.STDERR)):
            os.set_blocking(fd, False)
            self._outputs.append(_Output(fd, channel))
        self._conn.send(
            encode_json_frame(Kind.EVENT, self._stream, {"event": "started", "pid": self.pid})
        )
        if self._conn.output_paused:
            self._paused = True
        else:
            self._watch_outputs()
        timeout = request["timeout"]
        if timeout is not None:
            self._timer = self._agent.loop.call_later(timeout, self._on_timeout)

    def _spawn_failed(self, error: OSError, program: str, cwd: str | None) -> None:
        if cwd is not None and error.filename == cwd:
            return self._fail(
                "cwd_not_found", f"cannot enter working directory {cwd}: {error.strerror}"
            )
        if error.filename != program:
            return self._fail("spawn_failed", f"could not start {program!r}: {error}")
        # As a shell would: the request is fine, the program is not there (127) or not runnable
        # (126). The message goes to stderr, where a user looks for it.
        if isinstance(error, FileNotFoundError) and "/" not in program:
            exit_code, message = 127, "command not found"
        else:
            exit_code = 127 if isinstance(error, FileNotFoundError) else 126
            message = error.strerror or str(error)
        line = f"hutch: {program}: {message}\n".encode(errors="replace")
        send = self._conn.send
        send(encode_frame(Kind.DATA, self._stream, line, Channel.STDERR, 0))
        send(encode_frame(Kind.EOF, self._stream, b"", Channel.STDOUT, 0))
        send(encode_frame(Kind.EOF, self._stream, b"", Channel.STDERR, len(line)))
        self._result(exit_code, signal=None)

    def _fail(self, code: ErrorCode, message: str) -> None:
        self._conn.send(
            encode_json_frame(
                Kind.RESULT, self._stream, {"error": {"code": code, "message": message}}
            )
        )
        self._end()

    # -- output --------------------------------------------------------------------------------

    def _watch_outputs(self) -> None:
        loop = self._agent.loop
        for out in self._outputs:
            loop.add_reader(out.fd, lambda out=out: self._read(out))  # type: ignore[misc]

    def pause_output(self) -> None:
        """The connection's write buffer is full: stop reading the pipes (the process then
        blocks on write) rather than buffer without bound."""
        if not self._paused:
            self._paused = True
            for out in self._outputs:
                self._agent.loop.remove_reader(out.fd)

    def resume_output(self) -> None:
        if self._paused:
            self._paused = False
            self._watch_outputs()

    def _read(self, out: _Output) -> None:
        try:
            data = os.read(out.fd, CHUNK)
        except BlockingIOError:
            return
        except OSError:  # not expected from a pipe; treat as its end rather than spin on it
            data = b""
        if not data:
            return self._close_output(out)
        if len(data) >= DEFAULT_PIPE_SIZE and not out.grown:
            # NB: grown once the process has filled the default pipe, not at spawn: most
            # commands write less, and the two fcntl were ~3% of the agent's busy samples
            # per exec of `true` (py-spy, docs/performance.md, exec12).
            out.grown = True
            _grow_pipe(out.fd)
        self._conn.send(encode_frame(Kind.DATA, self._stream, data, out.channel, out.offset))
        out.offset += len(data)

    def _close_output(self, out: _Output) -> None:
        self._agent.loop.remove_fd(out.fd)
        os.close(out.fd)
        self._outputs.remove(out)
        self._conn.send(encode_frame(Kind.EOF, self._stream, b"", out.channel, out.offset))
        if not self._outputs and self._status is None and not self._detached:
            # NB: a process's pipes close as it exits, a moment before it is a zombie and its
            # SIGCHLD comes; by the time this runs it mostly is one. Reaping now puts the
            # RESULT in the same write as the EOFs (one wake-up of the server, not two); if
            # it is still running, its SIGCHLD reaps it as always.
            self._agent.reaper.reap()
        self._maybe_finish()

    def _on_grace_over(self) -> None:
        self._grace = None
        if self._paused:  # still output the server has not taken: not a stuck pipe
            self._grace = self._agent.loop.call_later(OUTPUT_GRACE, self._on_grace_over)
            return
        for out in list(self._outputs):
            self._close_output(out)

    # -- stdin ---------------------------------------------------------------------------------

    def on_frame(self, kind: int, channel: int, payload: bytes) -> None:
        """A DATA, EOF or CANCEL frame from the opener."""
        if kind == Kind.CANCEL:
            return self.cancel()
        if channel != Channel.STDIN or self._stdin_fd is None or self._stdin_eof:
            return
        if kind == Kind.EOF:
            self._stdin_eof = True
            if not self._stdin_buf:
                self._close_stdin()
            return
        self._stdin_buf += payload
        self._write_stdin()
        if self._stdin_fd is not None and self._stdin_buf:
            self._agent.loop.add_writer(self._stdin_fd, self._write_stdin)
            if len(self._stdin_buf) > STDIN_HIGH_WATER:
                self._conn.block_reading(self)

    def _write_stdin(self) -> None:
        if self._stdin_fd is None:
            return
        try:
            n = os.write(self._stdin_fd, self._stdin_buf)
        except BlockingIOError:
            return
        except OSError:  # EPIPE: the process closed its stdin; what it did not read is dropped
            self._stdin_buf.clear()
            return self._close_stdin()
        del self._stdin_buf[:n]
        if len(self._stdin_buf) < STDIN_LOW_WATER:
            self._conn.unblock_reading(self)
        if not self._stdin_buf:
            self._agent.loop.remove_writer(self._stdin_fd)
            if self._stdin_eof:
                self._close_stdin()

    def _close_stdin(self) -> None:
        if self._stdin_fd is not None:
            self._agent.loop.remove_fd(self._stdin_fd)
            os.close(self._stdin_fd)
            self._stdin_fd = None
        self._stdin_buf = bytearray()
        self._conn.unblock_reading(self)

    # -- ending --------------------------------------------------------------------------------

    def _on_timeout(self) -> None:
        self._timer = None
        if self._status is None:
            self._timed_out = True
            kill_tree(self.pid, self.pid, self._tag)

    def cancel(self) -> None:
        if self._status is None:
            kill_tree(self.pid, self.pid, self._tag)
        elif self._outputs:  # exited, waiting out the grace for a background holder of a pipe
            self._on_grace_over()

    def terminate(self, sig: int) -> None:
        """Agent shutdown: ask the tree to stop (``sig``) or force it (SIGKILL)."""
        if self._status is None:
            if sig == SIGKILL:
                kill_tree(self.pid, self.pid, self._tag)
            else:
                signal_tree(self.pid, self.pid, sig, self._tag)

    def connection_lost(self) -> None:
        """The opener is gone: nobody will read the output, so the process goes too."""
        self._detached = True
        if self._status is None:
            kill_tree(self.pid, self.pid, self._tag)
        for out in list(self._outputs):
            self._agent.loop.remove_fd(out.fd)
            os.close(out.fd)
        self._outputs.clear()
        self._close_stdin()
        self._maybe_finish()

    def _on_exit(self, status: int) -> None:
        self._duration = time.monotonic() - self._started
        self._status = status
        if self._popen is not None:
            # Tell Popen it is over, or its __del__ would warn and queue the pid for a waitpid.
            self._popen.returncode = os.waitstatus_to_exitcode(status)
            self._popen = None
        self._agent.running.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._outputs:
            self._grace = self._agent.loop.call_later(OUTPUT_GRACE, self._on_grace_over)
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.finished or self._status is None or self._outputs:
            return
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        self._close_stdin()
        code = os.waitstatus_to_exitcode(self._status)
        signal = -code if code < 0 else None
        if signal is not None:
            code = 128 + signal  # as shells report it
        if self._timed_out:
            code = 124  # as timeout(1) reports it
        self._result(code, signal)

    def _result(self, exit_code: int, signal: int | None) -> None:
        result: ExecResult = {
            "ok": True,
            "exit_code": exit_code,
            "duration": round(self._duration, 6),
            "timed_out": self._timed_out,
            "signal": signal,
            "oom_killed": signal == SIGKILL and oom_killed_since(self._oom_kills),
        }
        self.send_result(result)

    def send_result(self, result: ExecResult) -> None:
        if not self._detached:
            self._conn.send(encode_json_frame(Kind.RESULT, self._stream, dict(result)))
        self._end()

    def _end(self) -> None:
        self.finished = True
        self._conn.stream_finished(self._stream, self)


def _grow_pipe(fd: int) -> None:
    import fcntl  # a C module of a few KB, loaded on the first exec

    try:
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:  # over /proc/sys/fs/pipe-max-size for an unprivileged agent: keep 64 KiB
        pass


def open_exec(agent: Agent, conn: Connection, stream: int, request: dict[str, Any]) -> ExecOp:
    return ExecOp(agent, conn, stream, parse_exec(request))
