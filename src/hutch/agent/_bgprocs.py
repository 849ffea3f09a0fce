"""Background processes: they belong to the agent, not to a connection, and outlive both the
server's connection and the server itself. Their output is kept on the sandbox's own disk
(so its quota counts it) with absolute byte offsets, and any reader can replay it from an
offset and then follow it live.

Logs live under ``STATE_DIR/procs/<id>/`` as segment files per channel: when a channel's
current segment is full a new one starts and the oldest is deleted, so a process keeps the
most recent ``log_limit`` bytes (half per channel) and a reader asking for an older offset is
told where the kept output begins (``truncated``), never handed silently shifted bytes.
"""

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
    signal_tree,
    spawn,
)
from ._requests import InvalidRequest, parse_exec
from ._workcg import oom_killed_since, oom_kills

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from typing import Any

    from ._loop import Timer
    from ._server import Agent, Connection

# NB: on the overlay's writable layer (counted by the sandbox's disk quota), not /run (a
# tmpfs in many images, i.e. memory). Root-only, and named so nobody takes it for theirs.
STATE_DIR = "/var/lib/hutch-agent"
FALLBACK_STATE_DIR = "/tmp/.hutch-agent"
DEFAULT_LOG_LIMIT = 64 * 1024 * 1024
MIN_LOG_LIMIT = 4096
READ_CHUNK = 256 * 1024
REPLAY_CHUNK = 1024 * 1024
OUTPUT_GRACE = 0.2
STDIN_LIMIT = 16 * 1024 * 1024
MAX_PROCESSES_KEPT = 1024  # finished ones beyond this are forgotten, oldest first
SIGKILL = 9
ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class ChannelLog:
    """One channel's kept output: segment files holding absolute offsets ``[start, end)``."""

    __slots__ = ("_dir", "_name", "_segment_size", "_segments", "end", "write_errors")

    def __init__(self, directory: str, name: str, segment_size: int) -> None:
        self._dir = directory
        self._name = name
        self._segment_size = segment_size
        self._segments: list[list[int]] = []  # [base offset, fd, size, number]
        self.end = 0
        self.write_errors = 0

    @property
    def start(self) -> int:
        return self._segments[0][0] if self._segments else self.end

    def _new_segment(self) -> list[int]:
        number = self._segments[-1][3] + 1 if self._segments else 0
        path = f"{self._dir}/{self._name}.{number}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        segment = [self.end, fd, 0, number]
        self._segments.append(segment)
        return segment

    @property
    def kept(self) -> int:
        return sum(segment[2] for segment in self._segments)

    def drop_oldest(self) -> bool:
        """Delete the oldest segment, unless it is the one being written."""
        if len(self._segments) < 2:
            return False
        _, old_fd, _, old_number = self._segments.pop(0)
        os.close(old_fd)
        try:
            os.unlink(f"{self._dir}/{self._name}.{old_number}")
        except OSError:
            pass
        return True

    def append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            # Never more than the room left in a segment, so that dropping whole old
            # segments keeps the process's logs within their limit.
            segment = self._segments[-1] if self._segments else None
            if (
                segment is None
                or segment[2] >= self._segment_size
                or segment[0] + segment[2] != self.end
            ):
                try:
                    segment = self._new_segment()
                except OSError:
                    segment = None
            piece = view[: self._segment_size - segment[2]] if segment else view
            try:
                if segment is None:
                    raise OSError
                n = os.pwrite(segment[1], piece, segment[2])
                segment[2] += n
            except OSError:
                # Disk full or over quota: these bytes are lost. Offsets still advance, so
                # readers see a gap (the next segment starts past it), never shifted bytes.
                self.write_errors += 1
                n = len(piece)
            self.end += n
            view = view[n:]

    def read(self, offset: int, limit: int) -> tuple[int, bytes]:
        """Up to ``limit`` bytes from ``offset`` (moved forward past what is no longer kept)."""
        for base, fd, size, _ in self._segments:
            if offset < base:
                offset = base
            if offset < base + size:
                return offset, os.pread(fd, min(limit, base + size - offset), offset - base)
        return max(offset, self.end), b""

    def close(self) -> None:
        for segment in self._segments:
            os.close(segment[1])
        self._segments = []


class BackgroundProcess:
    __slots__ = (
        "id", "argv", "command", "log_limit",
        "cwd", "pid", "status", "exit_code", "signal", "started_at",
        "ended_at", "logs", "log_dir", "followers", "killed", "oom_killed", "_oom_kills",
        "_table", "_popen", "_tag",
        "_outputs", "_stdin_fd", "_stdin_buf", "_stdin_eof", "_grace", "exited", "done",
    )  # fmt: skip

    def __init__(self, table: ProcessTable, pid_id: str, log_dir: str, limit: int) -> None:
        self.id = pid_id
        self._table = table
        self.argv: list[str] = []
        self.command: str | None = None
        self.cwd: str | None = None
        self.pid = 0
        self.status = "starting"
        self.exit_code: int | None = None
        self.signal: int | None = None
        self.started_at = time.time()
        self.ended_at: float | None = None
        self.log_dir = log_dir
        segment = max(limit // 8, 1024)
        self.logs: dict[int, ChannelLog] = {
            Channel.STDOUT: ChannelLog(log_dir, "stdout", segment),
            Channel.STDERR: ChannelLog(log_dir, "stderr", segment),
        }
        self.log_limit = limit
        self.followers: set[LogStreamOp] = set()
        self.killed = False
        self.oom_killed = False
        self._oom_kills = oom_kills()
        self.exited = False  # the process itself has been reaped
        self.done = False  # reaped and its output pipes closed: the logs are final
        self._popen: subprocess.Popen[bytes] | None = None
        self._tag = os.urandom(8).hex().encode()
        self._outputs: dict[int, int] = {}  # fd -> channel
        self._stdin_fd: int | None = None
        self._stdin_buf = bytearray()
        self._stdin_eof = False
        self._grace: Timer | None = None

    def info(self) -> dict[str, Any]:
        out, err = self.logs[Channel.STDOUT], self.logs[Channel.STDERR]
        return {
            "id": self.id,
            "pid": self.pid,
            "command": self.command,
            "argv": self.argv,
            "cwd": self.cwd,
            "status": self.status,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "oom_killed": self.oom_killed,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "stdin_open": self._stdin_fd is not None and not self._stdin_eof,
            "stdout_bytes": out.end,
            "stderr_bytes": err.end,
            "stdout_start": out.start,
            "stderr_start": err.start,
            "truncated": out.start > 0 or err.start > 0,
            "log_write_errors": out.write_errors + err.write_errors,
        }

    # -- start ---------------------------------------------------------------------------------

    def spawn(self, request: dict[str, Any], want_stdin: bool) -> None:
        agent = self._table.agent
        identity = command_identity(request["user"])
        cwd = command_cwd(agent.workspace, request["cwd"])
        env = command_env(agent.base_env, identity, request["env"])
        env[EXEC_TAG_VAR] = self._tag.decode()
        if request["argv"] is not None:
            args = list(request["argv"])
        else:
            self.command = request["command"]
            args = [agent.shell(), "-c", request["command"]]
        self.argv = args
        self.cwd = cwd
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        child_fds = [out_w, err_w]
        stdin_r = None
        if want_stdin:
            stdin_r, self._stdin_fd = os.pipe()
            child_fds.append(stdin_r)
            os.set_blocking(self._stdin_fd, False)
            os.set_inheritable(self._stdin_fd, False)
        try:
            self._popen = spawn(
                args, env=env, cwd=cwd, identity=identity, stdin=stdin_r, stdout=out_w, stderr=err_w
            )
        except OSError as e:
            for fd in (out_r, err_r, *child_fds):
                os.close(fd)
            if self._stdin_fd is not None:
                os.close(self._stdin_fd)
                self._stdin_fd = None
            if isinstance(e, FileNotFoundError) and e.filename == args[0]:
                raise OpError("spawn_failed", f"{args[0]}: command not found") from None
            raise OpError("spawn_failed", f"could not start {args[0]!r}: {e}") from None
        for fd in child_fds:
            os.close(fd)
        self.pid = self._popen.pid
        self.status = "running"
        agent.reaper.watch(self.pid, self._on_exit)
        for fd, channel in ((out_r, Channel.STDOUT), (err_r, Channel.STDERR)):
            os.set_blocking(fd, False)
            self._outputs[fd] = channel
            agent.loop.add_reader(fd, lambda fd=fd: self._read(fd))  # type: ignore[misc]

    # -- output --------------------------------------------------------------------------------

    def _read(self, fd: int) -> None:
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            return self._close_output(fd)
        channel = self._outputs[fd]
        log = self.logs[channel]
        offset = log.end
        log.append(data)
        self._keep_within_limit()
        for follower in list(self.followers):
            follower.on_output(channel, offset, data)

    def _keep_within_limit(self) -> None:
        """One budget for both channels: drop the oldest output of the bigger one."""
        out, err = self.logs[Channel.STDOUT], self.logs[Channel.STDERR]
        kept_out, kept_err = out.kept, err.kept
        while kept_out + kept_err > self.log_limit:
            first, second = (out, err) if kept_out >= kept_err else (err, out)
            if not (first.drop_oldest() or second.drop_oldest()):
                break
            kept_out, kept_err = out.kept, err.kept

    def _close_output(self, fd: int) -> None:
        self._table.agent.loop.remove_fd(fd)
        os.close(fd)
        del self._outputs[fd]
        self._maybe_done()

    def _on_grace_over(self) -> None:
        self._grace = None
        for fd in list(self._outputs):
            # What the pipe still holds is kept; then it is closed even if a child holds it.
            self._read(fd)
            if fd in self._outputs:
                self._close_output(fd)

    # -- stdin ---------------------------------------------------------------------------------

    def write_stdin(self, data: bytes, eof: bool) -> None:
        if self.exited or self._stdin_fd is None or self._stdin_eof:
            raise OpError(
                "process_not_running",
                f"process {self.id!r} is not running or its stdin is closed; "
                "start it again to send more input",
            )
        if len(self._stdin_buf) + len(data) > STDIN_LIMIT:
            raise OpError(
                "stdin_full",
                f"process {self.id!r} has not read the {len(self._stdin_buf)} bytes already "
                "sent to its stdin; wait for it to read them",
            )
        self._stdin_buf += data
        if eof:
            self._stdin_eof = True
        self._write_stdin()
        if self._stdin_fd is not None and self._stdin_buf:
            self._table.agent.loop.add_writer(self._stdin_fd, self._write_stdin)

    def _write_stdin(self) -> None:
        if self._stdin_fd is None:
            return
        if self._stdin_buf:
            try:
                n = os.write(self._stdin_fd, self._stdin_buf)
            except BlockingIOError:
                return
            except OSError:  # EPIPE: the process closed its stdin
                self._stdin_buf.clear()
                return self._close_stdin()
            del self._stdin_buf[:n]
        if not self._stdin_buf:
            self._table.agent.loop.remove_writer(self._stdin_fd)
            if self._stdin_eof:
                self._close_stdin()

    def _close_stdin(self) -> None:
        if self._stdin_fd is not None:
            self._table.agent.loop.remove_fd(self._stdin_fd)
            os.close(self._stdin_fd)
            self._stdin_fd = None
        self._stdin_eof = True
        self._stdin_buf = bytearray()

    # -- ending --------------------------------------------------------------------------------

    def kill(self, sig: int) -> None:
        if self.exited:
            return
        if sig == SIGKILL:
            self.killed = True
            kill_tree(self.pid, self.pid, self._tag)
        else:
            if sig in (2, 3, 6, 15):  # INT, QUIT, ABRT, TERM: a stop, if it works
                self.killed = True
            signal_tree(self.pid, self.pid, sig, self._tag)

    def _on_exit(self, status: int) -> None:
        self.exited = True
        self.ended_at = time.time()
        if self._popen is not None:
            self._popen.returncode = os.waitstatus_to_exitcode(status)
            self._popen = None
        code = os.waitstatus_to_exitcode(status)
        if code < 0:
            self.signal = -code
            code = 128 - code
        self.oom_killed = self.signal == 9 and oom_killed_since(self._oom_kills)
        self.exit_code = code
        if self.signal is not None:
            self.status = "killed"
        elif self.killed and code != 0:
            self.status = "killed"
        else:
            self.status = "completed" if code == 0 else "failed"
        self._close_stdin()
        if self._outputs:
            self._grace = self._table.agent.loop.call_later(OUTPUT_GRACE, self._on_grace_over)
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self.done or not self.exited or self._outputs:
            return
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        self.done = True
        for follower in list(self.followers):
            follower.on_done()
        self._table.trim()

    def forget(self) -> None:
        for log in self.logs.values():
            log.close()
        import shutil

        shutil.rmtree(self.log_dir, ignore_errors=True)


class ProcessTable:
    """Every background process the agent has started (finished ones too, up to a limit)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.processes: dict[str, BackgroundProcess] = {}
        self._state_dir: str | None = None
        self._counter = 0

    def state_dir(self) -> str:
        if self._state_dir is None:
            for candidate in (
                os.environ.get("HUTCH_AGENT_STATE_DIR") or STATE_DIR,
                FALLBACK_STATE_DIR,
            ):
                try:
                    os.makedirs(f"{candidate}/procs", mode=0o700, exist_ok=True)
                    os.chmod(candidate, 0o700)
                    readme = f"{candidate}/README"
                    if not os.path.exists(readme):
                        with open(readme, "w") as f:
                            f.write(
                                "Kept by the Hutch agent: logs of background processes.\n"
                                "Do not edit; read them with `hutch logs` or p.logs().\n"
                            )
                    self._state_dir = candidate
                    break
                except OSError:
                    continue
            else:
                raise OpError("internal", "no writable place for process logs on this sandbox")
        return self._state_dir

    def get(self, pid_id: Any) -> BackgroundProcess:
        if not isinstance(pid_id, str):
            raise InvalidRequest("id", "must be a string")
        proc = self.processes.get(pid_id)
        if proc is None:
            raise OpError(
                "process_not_found",
                f"no process with id {pid_id!r} in this sandbox; list them with list_processes()",
            )
        return proc

    def new_id(self) -> str:
        while True:
            self._counter += 1
            candidate = f"proc-{self._counter}"
            if candidate not in self.processes:
                return candidate

    def trim(self) -> None:
        finished = [p for p in self.processes.values() if p.done]
        excess = len(self.processes) - MAX_PROCESSES_KEPT
        for proc in finished[: max(excess, 0)]:
            if not proc.followers:
                del self.processes[proc.id]
                proc.forget()

    def all_running(self) -> list[BackgroundProcess]:
        return [p for p in self.processes.values() if not p.exited]


def table_of(agent: Agent) -> ProcessTable:
    table = agent.processes
    if not isinstance(table, ProcessTable):  # NB: typed loosely on Agent, which must not import us
        table = ProcessTable(agent)
        agent.processes = table
    return table


def _parse_signal(request: dict[str, Any]) -> int:
    sig = request.get("signal", 15)
    if isinstance(sig, bool) or not isinstance(sig, int) or not 1 <= sig <= 64:
        raise InvalidRequest("signal", "must be a signal number from 1 to 64")
    return sig


# -- unary ops -----------------------------------------------------------------------------------


def start_op(agent: Agent, request: dict[str, Any]) -> dict[str, Any]:
    if agent.shutting_down:
        raise OpError("shutting_down", "the agent is shutting down")
    table = table_of(agent)
    fields = dict(request)
    pid_id = fields.pop("id", None)
    want_stdin = fields.pop("stdin", True)
    limit = fields.pop("log_limit", None)
    fields["op"] = "exec"
    parsed = dict(parse_exec(fields))
    if not isinstance(want_stdin, bool):
        raise InvalidRequest("stdin", "must be true or false")
    if limit is None:
        limit = DEFAULT_LOG_LIMIT
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < MIN_LOG_LIMIT:
        raise InvalidRequest("log_limit", f"must be a number of bytes >= {MIN_LOG_LIMIT}")
    if pid_id is None:
        pid_id = table.new_id()
    elif (
        not isinstance(pid_id, str)
        or not 1 <= len(pid_id) <= 128
        or not set(pid_id) <= ID_CHARS
        or pid_id.startswith(".")
    ):
        raise InvalidRequest("id", "must be 1-128 characters of letters, digits, '-', '_', '.'")
    old = table.processes.get(pid_id)
    if old is not None:
        if not old.done:
            raise OpError("process_exists", f"process {pid_id!r} is still running; pick another id")
        del table.processes[pid_id]
        old.forget()
    log_dir = f"{table.state_dir()}/procs/{pid_id}"
    import shutil

    shutil.rmtree(log_dir, ignore_errors=True)
    os.makedirs(log_dir, mode=0o700)
    proc = BackgroundProcess(table, pid_id, log_dir, limit)
    try:
        proc.spawn(parsed, want_stdin)
    except BaseException:
        proc.forget()
        raise
    table.processes[pid_id] = proc
    table.trim()
    return {"ok": True, "process": proc.info()}


def list_op(agent: Agent, request: dict[str, Any]) -> dict[str, Any]:
    table = table_of(agent)
    return {"ok": True, "processes": [p.info() for p in table.processes.values()]}


def get_op(agent: Agent, request: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "process": table_of(agent).get(request.get("id")).info()}


def kill_op(agent: Agent, request: dict[str, Any]) -> dict[str, Any]:
    proc = table_of(agent).get(request.get("id"))
    proc.kill(_parse_signal(request))
    return {"ok": True, "process": proc.info()}


def kill_all_op(agent: Agent, request: dict[str, Any]) -> dict[str, Any]:
    sig = _parse_signal(request)
    killed = []
    for proc in table_of(agent).all_running():
        proc.kill(sig)
        killed.append(proc.id)
    return {"ok": True, "killed": killed}


def stdin_op(agent: Agent, request: dict[str, Any]) -> dict[str, Any]:
    import binascii

    proc = table_of(agent).get(request.get("id"))
    data = request.get("data", "")
    eof = request.get("eof", False)
    if not isinstance(data, str) or not isinstance(eof, bool):
        raise InvalidRequest("data", "must be a base64 string (and eof true or false)")
    try:
        raw = binascii.a2b_base64(data)
    except binascii.Error:
        raise InvalidRequest("data", "is not valid base64") from None
    proc.write_stdin(raw, eof)
    return {"ok": True}


def set_env_op(agent: Agent, request: dict[str, Any]) -> dict[str, Any]:
    env = request.get("env")
    if not isinstance(env, dict):
        raise InvalidRequest("env", "must be an object of strings")
    for key, value in env.items():
        if not key or "=" in key or "\0" in key:
            raise InvalidRequest(f"env.{key}", "is not a valid variable name")
        if value is not None and (not isinstance(value, str) or "\0" in value):
            raise InvalidRequest(f"env.{key}", "must be a string (or null to unset it)")
    for key, value in env.items():
        if value is None:
            agent.base_env.pop(key, None)
        else:
            agent.base_env[key] = value
    return {"ok": True}


# -- the logs stream -----------------------------------------------------------------------------


class LogStreamOp:
    """Replays a process's kept output from the asked offsets, then follows it live; ends with
    a RESULT holding the process's info once its logs are final (or at once without follow).

    Reads from the log files, not from memory: a slow reader costs disk it already had, and
    the connection's write buffer bounds what is in flight.
    """

    def __init__(
        self, agent: Agent, conn: Connection, stream: int, request: dict[str, Any]
    ) -> None:
        self._agent = agent
        self._conn = conn
        self._stream = stream
        self._proc = table_of(agent).get(request.get("id"))
        self._offsets: dict[int, int] = {}
        for channel, field in (
            (Channel.STDOUT, "stdout_offset"),
            (Channel.STDERR, "stderr_offset"),
        ):
            value = request.get(field, 0)
            if value is None:
                value = 0
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidRequest(field, "must be a byte offset >= 0")
            self._offsets[channel] = value
        follow = request.get("follow", True)
        data = request.get("data", True)
        if not isinstance(follow, bool) or not isinstance(data, bool):
            raise InvalidRequest("follow", "follow and data must be true or false")
        self._follow = follow
        self._data = data
        self._paused = False
        self._finished = False

    def start(self) -> None:
        proc = self._proc
        event: dict[str, Any] = {"event": "logs", "process": proc.info()}
        for channel, name in ((Channel.STDOUT, "stdout"), (Channel.STDERR, "stderr")):
            start = proc.logs[channel].start
            if self._data and self._offsets[channel] < start:
                event[f"{name}_skipped"] = [self._offsets[channel], start]
        self._conn.send(encode_json_frame(Kind.EVENT, self._stream, event))
        if not self._data:
            self._offsets = {c: proc.logs[c].end for c in proc.logs}
        proc.followers.add(self)
        self._paused = self._conn.output_paused
        self._pump()

    def _pump(self) -> None:
        proc = self._proc
        for channel, log in proc.logs.items():
            while not self._paused and self._offsets[channel] < log.end:
                offset, data = log.read(self._offsets[channel], REPLAY_CHUNK)
                if not data:
                    self._offsets[channel] = log.end  # lost to a write error: nothing to send
                    break
                self._send(channel, offset, data)
                if self._conn.output_paused:
                    self._paused = True
        if not self._paused and (proc.done or not self._follow):
            self._finish()

    def _send(self, channel: int, offset: int, data: bytes) -> None:
        self._offsets[channel] = offset + len(data)
        self._conn.send(encode_frame(Kind.DATA, self._stream, data, channel, offset))

    def on_output(self, channel: int, offset: int, data: bytes) -> None:
        if self._finished:
            return
        if not self._data:
            self._offsets[channel] = offset + len(data)
            return
        if self._paused:
            return  # read back from the file on resume
        if self._offsets[channel] == offset:  # caught up: no need to go through the file
            self._send(channel, offset, data)
            if self._conn.output_paused:
                self._paused = True
        else:
            self._pump()

    def on_done(self) -> None:
        if not self._paused:
            self._pump()

    def pause_output(self) -> None:
        self._paused = True

    def resume_output(self) -> None:
        if self._paused and not self._finished:
            self._paused = False
            self._pump()

    def on_frame(self, kind: int, channel: int, payload: bytes) -> None:
        if kind == Kind.CANCEL and not self._finished:
            self._finish()

    def cancel(self) -> None:
        if not self._finished:
            self._finish()

    def terminate(self, sig: int) -> None:
        pass

    def connection_lost(self) -> None:
        self._finished = True
        self._proc.followers.discard(self)

    def _finish(self) -> None:
        self._finished = True
        self._proc.followers.discard(self)
        for channel in self._proc.logs:
            self._conn.send(
                encode_frame(Kind.EOF, self._stream, b"", channel, self._offsets[channel])
            )
        result = {"ok": True, "process": self._proc.info()}
        self._conn.send(encode_json_frame(Kind.RESULT, self._stream, result))
        self._conn.stream_finished(self._stream, self)


def open_logs(agent: Agent, conn: Connection, stream: int, request: dict[str, Any]) -> LogStreamOp:
    return LogStreamOp(agent, conn, stream, request)


def port_check_op(agent: Agent, request: dict[str, Any]) -> dict[str, Any]:
    """Whether something inside the sandbox accepts on 127.0.0.1:``port`` (``http``: and
    answers ``GET path`` with a status in range). Short blocking I/O on loopback."""
    import _socket

    port = request.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidRequest("port", "must be from 1 to 65535")
    mode = request.get("mode", "tcp")
    path = request.get("path", "/")
    if mode not in ("tcp", "http") or not isinstance(path, str) or not path.startswith("/"):
        raise InvalidRequest("mode", "mode must be 'tcp' or 'http' and path must start with /")
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    try:
        sock.settimeout(0.25)
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            return {"ok": True, "ready": False}
        if mode == "tcp":
            return {"ok": True, "ready": True}
        sock.settimeout(1.0)
        try:
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
            head = sock.recv(256)
        except OSError:
            return {"ok": True, "ready": False}
        parts = head.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            return {"ok": True, "ready": False}
        return {"ok": True, "ready": True, "status": int(parts[1])}
    finally:
        sock.close()
