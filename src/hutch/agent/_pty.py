"""Interactive terminals: a shell on a pseudo-terminal that outlives the clients watching it.

A ``Terminal`` belongs to the agent, not to a connection: the shell keeps running when the
server (or the browser behind it) goes away, and its recent output stays in a ring buffer to
be replayed on the next ``pty_attach``. A terminal ends when its shell exits (it then lingers,
exit code and output kept, until closed or idle), when ``pty_close`` asks, or when nobody has
been attached for ``idle_timeout`` seconds.

Ops: ``pty_create``, ``pty_resize``, ``pty_close``, ``pty_list`` (unary) and ``pty_attach``
(a stream: DATA on channel 0 is keyboard input, DATA on channel 1 is the screen's bytes at
their offset in the terminal's output, RESULT ``{"ok": true, "exit_code": n}`` once the shell
has exited or ``{"ok": true, "detached": true}`` on CANCEL).
"""

from __future__ import annotations

import contextlib
import os
import signal

from hutch._wire.frames import Channel, Kind, encode_frame, encode_json_frame

from ._ops import OpError
from ._procs import (
    DEFAULT_PATH,
    EXEC_TAG_VAR,
    Identity,
    command_cwd,
    command_env,
    command_identity,
    find_program,
    identity_args,
    kill_tree,
)
from ._pty_leader import leader_argv, leader_env, signal_keys
from ._requests import InvalidRequest
from ._workcg import enter_work

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from typing import Any

    from hutch._wire.agent_calls import (
        PtyAttachResult,
        PtyCloseResult,
        PtyInfoResult,
        PtyListResult,
        TerminalInfo,
    )

    from ._loop import Timer
    from ._server import Agent, Connection

REPLAY_BYTES = 1024 * 1024  # output kept for a reconnecting client (the promise is >= 256 KiB)
CHUNK = 64 * 1024
MAX_DIMENSION = 1000  # rows and columns: beyond this a size is a mistake, not a screen
DEFAULT_IDLE_TIMEOUT = 900.0
INPUT_HIGH_WATER = 1024 * 1024
TERM = "xterm-256color"


def _check_size(request: dict[str, Any]) -> tuple[int, int]:
    size = []
    for field in ("cols", "rows"):
        value = request.get(field)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(field, "must be an integer")
        if not 1 <= value <= MAX_DIMENSION:
            raise InvalidRequest(field, f"must be between 1 and {MAX_DIMENSION}, not {value}")
        size.append(value)
    return size[0], size[1]


def _terminals(agent: Agent) -> dict[str, Terminal]:
    # Kept on the agent (not a module global) so that one agent's terminals die with it.
    terminals: dict[str, Terminal] | None = getattr(agent, "terminals", None)
    if terminals is None:
        terminals = {}
        agent.terminals = terminals  # type: ignore[attr-defined]
    return terminals


def _get(agent: Agent, request: dict[str, Any]) -> Terminal:
    terminal_id = request.get("id")
    if not isinstance(terminal_id, str):
        raise InvalidRequest("id", "must be a terminal id string")
    terminal = _terminals(agent).get(terminal_id)
    if terminal is None:
        raise OpError("terminal_not_found", f"no terminal {terminal_id!r} in this sandbox")
    return terminal


def _find_shell(agent: Agent, shell: str | None, env: dict[str, str]) -> list[str]:
    if shell is None or shell == "":
        return agent.interactive_shell()
    path = find_program(shell, env.get("PATH", DEFAULT_PATH))
    if path is not None:
        return [path]
    raise OpError("shell_not_found", f"shell {shell!r} is not installed in this sandbox")


def _make_controlling_tty() -> None:
    # Runs in the child between fork and exec, after setsid(): the pty on fd 0 becomes the
    # session's controlling terminal, so Ctrl-C (ISIG) reaches the foreground job.
    import fcntl
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    enter_work()


class Terminal:
    """One shell on one pty, its replay buffer and the clients attached to it."""

    def __init__(self, agent: Agent, terminal_id: str, idle_timeout: float) -> None:
        self.agent = agent
        self.id = terminal_id
        self.idle_timeout = idle_timeout
        self.master = -1
        self.pid = 0
        self.cols = 0
        self.rows = 0
        self.shell = ""
        self.exit_code: int | None = None
        self.attached: list[AttachOp] = []
        self._buffer = bytearray()
        self._buffer_start = 0  # output offset of _buffer[0]
        self.offset = 0  # total bytes of output so far
        self._input = bytearray()
        self._paused_by: set[AttachOp] = set()
        self._reading = False
        self._popen: subprocess.Popen[bytes] | None = None
        self._tag = os.urandom(8).hex()
        self._idle: Timer | None = None
        self._leader = False  # the shell runs under a `_pty_leader` (gVisor)

    def spawn(
        self,
        argv: list[str],
        cwd: str | None,
        env: dict[str, str],
        cols: int,
        rows: int,
        identity: Identity | None = None,
    ) -> None:
        import subprocess
        import termios

        master, slave = os.openpty()
        try:
            if identity is not None and os.geteuid() == 0 and identity.uid != 0:
                # The user owns its terminal, as after a login: tmux, screen, gpg, `write`
                # reopen /dev/pts/N by name.
                os.fchown(slave, identity.uid, -1)
                os.fchmod(slave, 0o620)
            termios.tcsetwinsize(master, (rows, cols))
            env[EXEC_TAG_VAR] = self._tag
            wrapped = leader_argv(dict(os.environ), argv)
            if wrapped is not None:
                self._leader = True
                env = leader_env(dict(os.environ), env)
            self._popen = subprocess.Popen(
                wrapped or argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=cwd,
                env=env,
                close_fds=True,
                start_new_session=True,
                restore_signals=True,
                preexec_fn=_make_controlling_tty,
                **identity_args(identity),
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self.master = master
        os.set_blocking(master, False)
        self.pid = self._popen.pid
        self.shell = argv[0]
        self.cols, self.rows = cols, rows
        self.agent.reaper.watch(self.pid, self._on_exit)
        self._start_reading()
        self._arm_idle()

    # -- output --------------------------------------------------------------------------------

    def _start_reading(self) -> None:
        if not self._reading and self.master >= 0 and not self._paused_by:
            self._reading = True
            self.agent.loop.add_reader(self.master, self._on_readable)

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self.agent.loop.remove_reader(self.master)

    def pause(self, op: AttachOp) -> None:
        self._paused_by.add(op)
        self._stop_reading()

    def resume(self, op: AttachOp) -> None:
        self._paused_by.discard(op)
        self._start_reading()

    def _on_readable(self) -> None:
        self._read()

    def _read(self) -> bool:
        """Take what output is there (up to CHUNK); False when there was none to take."""
        # A pty hands out at most a few KiB per read: gather what is already waiting into one
        # frame, or a fast writer (cat of a big file) costs a frame and a WebSocket message per
        # 4 KiB all the way to the client.
        parts: list[bytes] = []
        size = 0
        ended = False
        while size < CHUNK:
            try:
                part = os.read(self.master, CHUNK - size)
            except BlockingIOError:
                break
            except OSError:  # EIO: every holder of the slave side has gone
                part = b""
            if not part:
                ended = True
                break
            parts.append(part)
            size += len(part)
        if ended:
            self._stop_reading()
        if not parts:
            return False
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        offset = self.offset
        self.offset += len(data)
        self._buffer += data
        excess = len(self._buffer) - REPLAY_BYTES
        if excess > 0:
            del self._buffer[:excess]
            self._buffer_start += excess
        frame = encode_frame(Kind.DATA, 0, data, Channel.STDOUT, offset)
        for op in self.attached:
            op.send_output(frame)
        return True

    def replay_from(self, since: int) -> tuple[int, bytes]:
        start = max(since, self._buffer_start)
        return start, bytes(self._buffer[start - self._buffer_start :])

    # -- input ---------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.master < 0 or self.exit_code is not None:
            return
        if len(self._input) > INPUT_HIGH_WATER:
            return  # a shell that reads nothing: drop keystrokes rather than grow without bound
        if self._leader:
            data = self._signal_keys(data)
        had = bool(self._input)
        self._input += data
        if not had:
            self._flush_input()

    def _signal_keys(self, data: bytes) -> bytes:
        """Under a leader: ^C, ^\\, ^Z in `data` become signals to the foreground job (what
        the kernel's ISIG does elsewhere), and, as there, the input not yet read is dropped."""
        keys = signal_keys(self.master)
        last = max((i for i, b in enumerate(data) if b in keys), default=-1)
        if last < 0:
            return data
        for b in data[: last + 1]:
            if b in keys:
                self._input.clear()
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, keys[b])
        return data[last + 1 :]

    def _flush_input(self) -> None:
        if self.master < 0:
            self._input.clear()
            return
        try:
            n = os.write(self.master, self._input)
        except BlockingIOError:
            n = 0
        except OSError:
            self._input.clear()
            n = 0
        del self._input[:n]
        if self._input:
            self.agent.loop.add_writer(self.master, self._flush_input)
        else:
            self.agent.loop.remove_writer(self.master)

    def resize(self, cols: int, rows: int) -> None:
        import termios

        if self.master >= 0 and self.exit_code is None:
            # TIOCSWINSZ on the master: the kernel sends SIGWINCH to the foreground job.
            termios.tcsetwinsize(self.master, (rows, cols))
            if self._leader:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGWINCH)
        self.cols, self.rows = cols, rows

    # -- lifetime ------------------------------------------------------------------------------

    def _on_exit(self, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        if self._popen is not None:
            self._popen.returncode = code
            self._popen = None
        self.exit_code = 128 - code if code < 0 else code
        # What the shell wrote before it exited is in the pty already: take it all.
        if self.master >= 0:
            for _ in range(REPLAY_BYTES // CHUNK + 1):
                if not self._read():
                    break
        self._release_pty()
        for op in list(self.attached):
            op.send_result({"ok": True, "exit_code": self.exit_code})
        self._arm_idle()

    def _release_pty(self) -> None:
        if self.master >= 0:
            self.agent.loop.remove_fd(self.master)
            os.close(self.master)  # hangs up the tty: what is left of the session gets SIGHUP
            self.master = -1
            self._reading = False
        self._input.clear()

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if not self.attached:
            self._idle = self.agent.loop.call_later(self.idle_timeout, self.close)

    def attach(self, op: AttachOp) -> None:
        self.attached.append(op)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def detach(self, op: AttachOp) -> None:
        if op in self.attached:
            self.attached.remove(op)
        self.resume(op)
        if not self.attached and _terminals(self.agent).get(self.id) is self:
            self._arm_idle()

    def close(self) -> None:
        """Kill the shell and everything it started; forget the terminal."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        _terminals(self.agent).pop(self.id, None)
        if self.exit_code is None and self.pid:
            kill_tree(self.pid, self.pid, self._tag.encode())
        self._release_pty()
        for op in list(self.attached):
            op.send_result({"ok": True, "exit_code": self.exit_code, "closed": True})

    def info(self) -> TerminalInfo:
        return {
            "id": self.id,
            "pid": self.pid,
            "cols": self.cols,
            "rows": self.rows,
            "shell": self.shell,
            "exit_code": self.exit_code,
            "offset": self.offset,
            "attached": len(self.attached),
        }


class AttachOp:
    """One client watching a terminal: replay, then live output; its keystrokes go in."""

    def __init__(self, agent: Agent, conn: Connection, stream: int, terminal: Terminal, since: int):
        self._agent = agent
        self._conn = conn
        self._stream = stream
        self._terminal = terminal
        self._since = since
        self.finished = False

    def start(self) -> None:
        terminal = self._terminal
        start, data = terminal.replay_from(self._since)
        self._conn.send(
            encode_json_frame(
                Kind.EVENT,
                self._stream,
                {"event": "attached", "id": terminal.id, "offset": start, "pid": terminal.pid},
            )
        )
        for i in range(0, len(data), CHUNK):
            chunk = data[i : i + CHUNK]
            self._conn.send(encode_frame(Kind.DATA, self._stream, chunk, Channel.STDOUT, start + i))
        if terminal.exit_code is not None:
            return self.send_result({"ok": True, "exit_code": terminal.exit_code})
        terminal.attach(self)
        if self._conn.output_paused:
            terminal.pause(self)

    def send_output(self, frame: bytes) -> None:
        # The terminal encodes each chunk once for every client; only the stream id differs.
        stream = self._stream.to_bytes(4, "big")
        self._conn.send(frame[:2] + stream + frame[6:])

    def on_frame(self, kind: int, channel: int, payload: bytes) -> None:
        if kind == Kind.CANCEL:
            return self.send_result({"ok": True, "detached": True})
        if kind == Kind.DATA and channel == Channel.STDIN:
            self._terminal.write(payload)

    def pause_output(self) -> None:
        self._terminal.pause(self)

    def resume_output(self) -> None:
        self._terminal.resume(self)

    def cancel(self) -> None:
        self.send_result({"ok": True, "detached": True})

    def terminate(self, sig: int) -> None:
        pass

    def connection_lost(self) -> None:
        # The client went away; the terminal stays, for the next attach.
        self.finished = True
        self._terminal.detach(self)

    def send_result(self, result: PtyAttachResult) -> None:
        if self.finished:
            return
        self.finished = True
        self._terminal.detach(self)
        self._conn.send(encode_json_frame(Kind.RESULT, self._stream, dict(result)))
        self._conn.stream_finished(self._stream, self)


# -- ops ---------------------------------------------------------------------------------------


def pty_create(agent: Agent, request: dict[str, Any]) -> PtyInfoResult:
    cols, rows = _check_size(request)
    env_in = request.get("env") or {}
    if not isinstance(env_in, dict) or not all(
        isinstance(k, str) and k and "=" not in k and isinstance(v, str) and "\0" not in k + v
        for k, v in env_in.items()
    ):
        raise InvalidRequest("env", "must be an object of variable names to strings")
    idle = request.get("idle_timeout")
    if idle is None:
        idle = DEFAULT_IDLE_TIMEOUT
    if isinstance(idle, bool) or not isinstance(idle, int | float) or not 0 < idle < 1e9:
        raise InvalidRequest("idle_timeout", "must be a positive number of seconds")
    shell = request.get("shell")
    if shell is not None and (not isinstance(shell, str) or "\0" in shell):
        raise InvalidRequest("shell", "must be a shell name or path")
    cwd = request.get("cwd")
    if cwd is not None and (not isinstance(cwd, str) or "\0" in cwd):
        raise InvalidRequest("cwd", "must be a path")
    cwd = command_cwd(agent.workspace, cwd)
    identity = command_identity(None)
    env = command_env(agent.base_env, identity, env_in)
    env.setdefault("LANG", "C.UTF-8")
    env.setdefault("HOME", "/root")
    env["TERM"] = TERM
    env.setdefault("COLORTERM", "truecolor")
    argv = _find_shell(agent, shell, env)
    terminal = Terminal(agent, "pty-" + os.urandom(6).hex(), float(idle))
    try:
        terminal.spawn(argv, cwd, env, cols, rows, identity)
    except OSError as e:
        raise OpError("spawn_failed", f"could not start {argv[0]}: {e}") from None
    _terminals(agent)[terminal.id] = terminal
    return {"ok": True, **terminal.info()}


def pty_resize(agent: Agent, request: dict[str, Any]) -> PtyInfoResult:
    terminal = _get(agent, request)
    cols, rows = _check_size(request)
    terminal.resize(cols, rows)
    return {"ok": True, **terminal.info()}


def pty_close(agent: Agent, request: dict[str, Any]) -> PtyCloseResult:
    terminal = _get(agent, request)
    terminal.close()
    return {"ok": True, "id": terminal.id, "exit_code": terminal.exit_code}


def pty_list(agent: Agent, request: dict[str, Any]) -> PtyListResult:
    return {"ok": True, "terminals": [t.info() for t in _terminals(agent).values()]}


def pty_info(agent: Agent, request: dict[str, Any]) -> PtyInfoResult:
    return {"ok": True, **_get(agent, request).info()}


def open_attach(agent: Agent, conn: Connection, stream: int, request: dict[str, Any]) -> AttachOp:
    terminal = _get(agent, request)
    since = request.get("since") or 0
    if isinstance(since, bool) or not isinstance(since, int) or since < 0:
        raise InvalidRequest("since", "must be a byte offset (a non-negative integer)")
    return AttachOp(agent, conn, stream, terminal, since)
