"""Background processes: they belong to the agent, not to a connection, and outlive both the
server's connection and the server itself. Their output is kept on the sandbox's own disk
(so its quota counts it) with absolute byte offsets, and any reader can replay it from an
offset and then follow it live.

Logs live under ``STATE_DIR/procs/<id>/`` as segment files per channel: when a channel's
current segment is full a new one starts and the oldest is deleted, so a process keeps the
most recent ``log_limit`` bytes (half per channel) and a reader asking for an older offset is
told where the kept output begins (``truncated``), never handed silently shifted bytes.

Here: the process's lifecycle (start, stdin, signals, exit) and the table of them with its
unary ops. The log files are in _proc_logs.py, the stream that replays them in
_proc_log_stream.py.
"""

from __future__ import annotations

import os
import time

from hutch._wire.frames import Channel

from ._ops import OpError
from ._proc_logs import ChannelLog
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
    from typing import Any

    from hutch._wire.agent_calls import (
        OkResult,
        PortCheckResult,
        ProcessInfo,
        ProcessKillAllResult,
        ProcessListResult,
        ProcessResult,
    )

    from ._child import Started
    from ._loop import Timer
    from ._proc_logs import LogFollower
    from ._server import Agent

# NB: on the overlay's writable layer (counted by the sandbox's disk quota), not /run (a
# tmpfs in many images, i.e. memory). Root-only, and named so nobody takes it for theirs.
STATE_DIR = "/var/lib/hutch-agent"
FALLBACK_STATE_DIR = "/tmp/.hutch-agent"
DEFAULT_LOG_LIMIT = 64 * 1024 * 1024
MIN_LOG_LIMIT = 4096
READ_CHUNK = 256 * 1024
OUTPUT_GRACE = 0.2
STDIN_LIMIT = 16 * 1024 * 1024
MAX_PROCESSES_KEPT = 1024  # finished ones beyond this are forgotten, oldest first
SIGKILL = 9
ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class BackgroundProcess:
    __slots__ = (
        "id", "argv", "command", "log_limit",
        "cwd", "pid", "status", "exit_code", "signal", "started_at",
        "ended_at", "logs", "log_dir", "followers", "killed", "oom_killed", "timed_out",
        "_oom_kills",
        "_table", "_popen", "_tag",
        "_outputs", "_stdin_fd", "_stdin_buf", "_stdin_eof", "_grace", "_deadline", "exited",
        "done",
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
        self.followers: set[LogFollower] = set()
        self.killed = False
        self.oom_killed = False
        self.timed_out = False  # SIGKILLed at its `timeout` (not by a caller)
        self._oom_kills = oom_kills()
        self.exited = False  # the process itself has been reaped
        self.done = False  # reaped and its output pipes closed: the logs are final
        self._popen: Started | None = None
        self._tag = os.urandom(8).hex().encode()
        self._outputs: dict[int, int] = {}  # fd -> channel
        self._stdin_fd: int | None = None
        self._stdin_buf = bytearray()
        self._stdin_eof = False
        self._grace: Timer | None = None
        self._deadline: Timer | None = None  # the kill at `timeout`, if one was given

    def info(self) -> ProcessInfo:
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
            "timed_out": self.timed_out,
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
        if request["timeout"] is not None:
            # The process's own deadline, kept here and not by whoever started it: it holds
            # when that caller has gone (an E2B client gives up at the same deadline).
            self._deadline = agent.loop.call_later(request["timeout"], self._on_timeout)
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

    def kill(self, sig: int) -> bool:
        """Signal the tree; True when the signal reached the process itself."""
        # NB: a process that ended just before the kill is a zombie whose SIGCHLD waits in
        # the loop behind this request. Reap first, so it is reported with its own exit
        # ("failed", exit 3) and not as killed by a signal that never reached it.
        self._table.agent.reaper.reap()
        if self.exited:
            return False
        if sig == SIGKILL:
            signalled = kill_tree(self.pid, self.pid, self._tag)
        else:
            signalled = signal_tree(self.pid, self.pid, sig, self._tag)
        # Only a stop that reached the process itself (alive, not a zombie) makes its
        # non-zero exit a kill: one that ended on its own in between keeps its own status.
        if self.pid in signalled and sig in (SIGKILL, 2, 3, 6, 15):  # KILL, INT, QUIT, ABRT, TERM
            self.killed = True
        return self.pid in signalled

    def _on_timeout(self) -> None:
        self._deadline = None
        # One that ended on its own just before its deadline keeps its own status.
        self.timed_out = self.kill(SIGKILL)

    def _on_exit(self, status: int) -> None:
        self.exited = True
        self.ended_at = time.time()
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
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


def start_op(agent: Agent, request: dict[str, Any]) -> ProcessResult:
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


def list_op(agent: Agent, request: dict[str, Any]) -> ProcessListResult:
    table = table_of(agent)
    return {"ok": True, "processes": [p.info() for p in table.processes.values()]}


def get_op(agent: Agent, request: dict[str, Any]) -> ProcessResult:
    return {"ok": True, "process": table_of(agent).get(request.get("id")).info()}


def kill_op(agent: Agent, request: dict[str, Any]) -> ProcessResult:
    proc = table_of(agent).get(request.get("id"))
    proc.kill(_parse_signal(request))
    return {"ok": True, "process": proc.info()}


def kill_all_op(agent: Agent, request: dict[str, Any]) -> ProcessKillAllResult:
    sig = _parse_signal(request)
    killed = []
    for proc in table_of(agent).all_running():
        proc.kill(sig)
        killed.append(proc.id)
    return {"ok": True, "killed": killed}


def stdin_op(agent: Agent, request: dict[str, Any]) -> OkResult:
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


def set_env_op(agent: Agent, request: dict[str, Any]) -> OkResult:
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
    if env.get("HUTCH_CODE_PRESTART"):  # a pooled sandbox gets its env here, not at start
        from ._code import prestart

        prestart(agent)
    return {"ok": True}


def port_check_op(agent: Agent, request: dict[str, Any]) -> PortCheckResult:
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
