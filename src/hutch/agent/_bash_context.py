"""A bash code context: one persistent bash per context, each run a cell in it.

No bridge: the agent drives the image's bash itself, so a bash context works in any image
with bash (no Python or Node needed). A run is sent as a small program that stores the cell
in a variable through a quoted here-document (so the cell is never read from bash's stdin,
and a command in it that reads stdin gets /dev/null), `eval`s it in the shell itself (so
`cd`, `export` and functions last), then prints a marker with the exit status on stdout and
a marker on stderr. Output before the markers is the run's; the run ends when both came.
The marker holds a random token, so no output of a cell can end a run by accident.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import signal

from ._ops import OpError
from ._procs import find_program

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol

    class Run(Protocol):
        run_id: int

        def on_output(self, kind: object, message: dict[str, Any]) -> None: ...
        def finish(self, status: str, execution_count: int | None = None) -> None: ...

    class Context(Protocol):
        """What the driver uses of its _code.Context (which calls it for a bash context)."""

        agent: Any
        pid: int
        state: str
        pid_started_ok: bool
        _runs: dict[int, Run]
        _next_run: int
        _pending_out: bytearray
        _stdin: int | None
        _stdout: int | None
        _stderr: int | None
        _err_tail: bytes

        def _flush(self) -> None: ...
        def _set_state(self, state: str) -> None: ...


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def is_shell_name(name: str) -> bool:
    """Whether bash can set `name` as a variable (a per-run env name must be one)."""
    return _NAME.match(name) is not None


_SETUP = "trap ':' INT\n"  # ^C ends the cell's command, not the shell (a trap, not SIG_IGN)


class _Pending:
    """A run sent to bash: which markers came back, its status, whether it timed out."""

    __slots__ = ("run", "ended", "exit_status", "timed_out", "timer")

    def __init__(self, run: Run) -> None:
        self.run = run
        self.ended = [False, False]  # stdout's marker, stderr's marker
        self.exit_status = 0
        self.timed_out = False
        self.timer: Any = None


class BashDriver:
    """Drives a bash context's process with per-run markers instead of a bridge's JSON
    lines; _code.Context hands it its process's events when its language is bash."""

    def __init__(self, context: Context) -> None:
        self.c = context
        self._token = "HUTCH" + secrets.token_hex(12)
        self._out_marker = ("\x1e" + self._token + " ").encode()
        self._err_marker = ("\x1e" + self._token + "\n").encode()
        self._out = bytearray()
        self._err = bytearray()
        self._pending: list[_Pending] = []  # in the order bash runs them

    def command(self, env: dict[str, str]) -> list[str]:
        exe = find_program("bash", env["PATH"])
        if exe is None:
            raise OpError("language_unavailable", "this image has no bash; install bash")
        return [exe, "--noprofile", "--norc", "-s"]

    def started(self) -> None:
        c = self.c
        self._write_raw(_SETUP.encode())
        c.pid_started_ok = True
        # Ready at once: bash reads its input in order, so a run sent now waits for nothing.
        c.agent.loop.call_later(0, lambda: c._set_state("ready"))

    def _write_raw(self, data: bytes) -> None:
        if self.c._stdin is None:
            return
        self.c._pending_out += data
        self.c._flush()

    def submit(
        self, run: Run, code: str, timeout: float | None, env: dict[str, str] | None = None
    ) -> None:
        c = self.c
        run.run_id = c._next_run
        c._next_run += 1
        c._runs[run.run_id] = run
        pending = _Pending(run)
        self._pending.append(pending)
        delimiter = "HUTCH_CELL_" + secrets.token_hex(8)
        # Per-run variables as assignments before `eval`: bash sets them for that command
        # only (exported to what it runs) and puts back the old values after.
        assignments = " ".join(
            f"{k}={shlex.quote(v)}" for k, v in sorted((env or {}).items()) if _NAME.match(k)
        )
        program = (
            f"IFS= read -r -d '' __hutch_cell <<'{delimiter}'\n{code}\n{delimiter}\n"
            f'{assignments} eval "$__hutch_cell" </dev/null\n'
            f"printf '\\036{self._token} %d\\n' \"$?\"; printf '\\036{self._token}\\n' >&2\n"
        )
        self._write_raw(program.encode())
        if timeout:
            pending.timer = c.agent.loop.call_later(timeout, lambda: self._timed_out(pending))

    def _timed_out(self, pending: _Pending) -> None:
        pending.timer = None
        if self._pending and self._pending[0] is pending:
            pending.timed_out = True
            self.interrupt()
        # else: still queued behind another run; it will time out as it starts (rare)

    def interrupt(self) -> None:
        """SIGINT to the cell's commands (bash's process group); the shell itself stays."""
        if self.c.pid and self.c.state == "ready":
            try:
                os.killpg(self.c.pid, signal.SIGINT)
            except OSError:
                pass

    def on_stdout(self) -> None:
        data = self._read(self.c._stdout)
        if data is None:
            return
        if not data:
            self._close_pipe("_stdout")
            return
        self._out += data
        self._drain(self._out, self._out_marker, 0)

    def on_stderr(self) -> None:
        data = self._read(self.c._stderr)
        if data is None:
            return
        if not data:
            self._close_pipe("_stderr")
            return
        self.c._err_tail = (self.c._err_tail + data)[-4096:]
        self._err += data
        self._drain(self._err, self._err_marker, 1)

    def _read(self, fd: int | None) -> bytes | None:
        assert fd is not None
        try:
            return os.read(fd, 256 * 1024)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    def _close_pipe(self, name: str) -> None:
        fd = getattr(self.c, name)
        if fd is not None:
            self.c.agent.loop.remove_fd(fd)
            os.close(fd)
            setattr(self.c, name, None)

    def _drain(self, buf: bytearray, marker: bytes, index: int) -> None:
        kind = "stdout" if index == 0 else "stderr"
        while True:
            at = buf.find(marker)
            if at < 0:
                # Hold back only a tail that may be the start of a marker.
                keep = 0
                start = buf.rfind(b"\x1e")
                if start >= 0 and marker.startswith(bytes(buf[start:])):
                    keep = len(buf) - start
                self._emit(kind, bytes(buf[: len(buf) - keep]))
                del buf[: len(buf) - keep]
                return
            self._emit(kind, bytes(buf[:at]))
            end = buf.find(b"\n", at + len(marker) - (1 if index == 1 else 0))
            if end < 0:
                del buf[:at]
                return  # the status digits are still on their way
            status = bytes(buf[at + len(marker) : end]).strip()
            del buf[: end + 1]
            self._marker_seen(index, int(status) if status.isdigit() else 0)

    def _emit(self, kind: str, data: bytes) -> None:
        if data and self._pending:
            self._pending[0].run.on_output(kind, {"text": data.decode("utf-8", "replace")})

    def _marker_seen(self, index: int, exit_status: int) -> None:
        if not self._pending:
            return
        pending = self._pending[0]
        pending.ended[index] = True
        if index == 0:
            pending.exit_status = exit_status
        if not all(pending.ended):
            return
        self._pending.pop(0)
        run = pending.run
        self.c._runs.pop(run.run_id, None)
        if pending.timer is not None:
            pending.timer.cancel()
        if pending.timed_out:
            run.on_output(
                "error", {"name": "TimeoutError", "value": "the run timed out", "traceback": []}
            )
            return run.finish("timeout")
        if pending.exit_status:
            # As Jupyter's bash kernel: a cell whose last command failed is an error.
            run.on_output(
                "error",
                {"name": "Error", "value": f"exit status {pending.exit_status}", "traceback": []},
            )
        run.finish("error" if pending.exit_status else "ok")

    def exited(self) -> None:
        for pending in self._pending:
            if pending.timer is not None:
                pending.timer.cancel()
        self._pending.clear()
