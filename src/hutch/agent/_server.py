"""The agent's side of the socket: accepting connections, frames in and out, op dispatch."""

from __future__ import annotations

import _socket  # the C core of ``socket``: its Python wrapper costs memory and buys nothing here
import os
import time

from hutch._wire.frames import Frame, FrameDecoder, FrameError, Kind, encode_json_frame

from . import AGENT_VERSION
from ._loop import report, report_exception
from ._ops import STREAM_OPS, UNARY_OPS, OpError, load_handler
from ._procs import Reaper, find_program
from ._requests import InvalidRequest, UnknownOp, parse_op, parse_ping

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections import deque
    from collections.abc import Callable
    from typing import Any

    from hutch._wire.agent_ops import ErrorCode, PingResult

    from ._loop import Loop, Timer
    from ._ops import ClosesFlusher, RunningProcesses, StreamOp
else:
    from _collections import deque  # NB: not `collections`: see _loop

RECV_SIZE = 256 * 1024
# Output waiting for a slow server: above HIGH the execs of that connection stop reading
# their pipes; below LOW they start again. Bounds the agent's memory per connection.
WRITE_HIGH_WATER = 4 * 1024 * 1024
WRITE_LOW_WATER = 1024 * 1024
# Once this much output has been queued, give the memory back when the queue empties.
RELEASE_MEMORY_AFTER = 1024 * 1024
# ...but not at once: a transfer drains and refills the queue many times a second, and memory
# handed back is faulted in again by the next frame.
RELEASE_MEMORY_DELAY = 0.5
# glibc mallopt() parameters, and the values held while a file transfer runs (see hold_heap).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
TRANSFER_MMAP_THRESHOLD = 8 * 1024 * 1024
TRANSFER_TRIM_THRESHOLD = 32 * 1024 * 1024
SHUTDOWN_GRACE = 3.0
SIGTERM = 15
SIGKILL = 9


def rss_kb() -> int:
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    return 0


class Agent:
    """Process-wide state: the loop, the reaper, the listener and every live connection."""

    def __init__(
        self,
        loop: Loop,
        listener: _socket.socket,
        *,
        workspace: str,
        base_env: dict[str, str],
        image_shell: list[str] | None = None,
    ) -> None:
        self.loop = loop
        # The image's ENTRYPOINT+CMD when it is an interactive shell (e.g. ["bash", "-l"]).
        self.image_shell = image_shell
        self.reaper = Reaper()
        self.workspace = workspace
        self.base_env = base_env
        self.running: set[StreamOp] = set()  # spawned and not yet reaped, any connection
        self.connections: set[Connection] = set()
        self.processes: RunningProcesses | None = None  # background processes, made on first use
        self.sessions: object | None = None  # persistent shells, made on first use
        self.shutting_down = False
        self.known_ops = frozenset([*UNARY_OPS, *STREAM_OPS])
        self._listener: _socket.socket | None = listener
        self._shutdown_deadline = 0.0
        self._libc: Any = None  # ctypes' libc once needed; False when not glibc
        self._release_timer: Timer | None = None
        self._heap_held = False
        # gVisor: the file whose create-unlink-close sends the sentry's queued closes to the
        # gofer, and the thread that does it while a bucket is mounted (_close_flush).
        self.close_flush_path: str | None = None
        self.close_flusher: ClosesFlusher | None = None
        self._last_flush = 0.0
        self._startup: list[Callable[[], None]] = []  # see defer_startup

    def defer_startup(self, *work: Callable[[], None]) -> None:
        """Run ``work`` once the loop is first idle, or before the first op that is not a
        ping, whichever comes first.

        NB: a cold create waits for the agent's answer to the server's first ping; what is
        not needed to give it (the process title, ctypes for prctl, the exec path's imports
        and the spawner thread: ~10 ms) runs after it, while the server finishes the create.
        Nothing is spawned before it has run: every spawn comes from an op other than ping.
        """
        self._startup.extend(work)
        self.loop.call_when_idle(self.settle)

    def settle(self) -> None:
        """Run the deferred start-up work now, if it has not run yet."""
        work, self._startup = self._startup, []
        for fn in work:
            try:
                fn()
            except Exception:
                report_exception("deferred start-up failed")

    def files_may_be_closed(self) -> None:
        """A process ended or an op finished: under gVisor, have the host close what the
        sandbox has closed (see _close_flush): by the flushing thread while a bucket is
        mounted, else here, at most once per MIN_GAP. Without it a deleted file's space came
        back only ~100 closes later (`rm` of a file that filled the disk freed nothing), once
        plain commands no longer ran through bash, whose own start and exit closed enough."""
        if self.close_flusher is not None:
            self.close_flusher.poke()
        elif self.close_flush_path is not None:
            from ._gofer_close import MIN_GAP, flush

            now = time.monotonic()
            if now - self._last_flush >= MIN_GAP:
                self._last_flush = now
                try:
                    flush(self.close_flush_path)
                except OSError:
                    pass  # reported by the thread when a bucket needs it; nothing to lose here

    def start(self) -> None:
        assert self._listener is not None
        self._listener.setblocking(False)
        self.loop.add_reader(self._listener.fileno(), self._accept)

    def _resume_accepting(self) -> None:
        if self._listener is not None:
            self.loop.add_reader(self._listener.fileno(), self._accept)

    def _glibc(self) -> Any:
        """glibc through ctypes, imported on first use only (an agent that never moves much
        data never pays for ctypes), or False when the C library is not glibc."""
        if self._libc is None:
            try:
                import ctypes

                libc = ctypes.CDLL(None)
                libc.malloc_trim, libc.mallopt  # noqa: B018 - both must exist
                self._libc = libc
            except (ImportError, OSError, AttributeError):
                self._libc = False
        return self._libc

    def hold_heap(self) -> None:
        """Keep freed heap pages for reuse while big transfers run.

        NB: by default glibc hands the top of the heap back once 2x the last big block is
        free, so each 1 MiB frame of a file upload was faulted in afresh: perf showed a fifth
        of the agent's CPU in page faults. Fixed thresholds keep frames (≤ 4 MiB) on the heap
        and the heap's pages mapped; `release_memory` at the end of the transfer gives them
        back.
        """
        if self._heap_held:
            return
        self._heap_held = True
        libc = self._glibc()
        if libc:
            libc.mallopt(M_MMAP_THRESHOLD, TRANSFER_MMAP_THRESHOLD)
            libc.mallopt(M_TRIM_THRESHOLD, TRANSFER_TRIM_THRESHOLD)

    def release_memory(self) -> None:
        """Hand freed heap pages back to the kernel (glibc ``malloc_trim``), shortly.

        After megabytes of queued output frames come and go, glibc keeps the pages: measured
        +4 MB of RSS for good after 1 GB through a slow reader. The trim waits
        RELEASE_MEMORY_DELAY, so that a transfer that empties its queue many times over
        trims once, not at each turn.
        """
        if self._release_timer is None:
            self._release_timer = self.loop.call_later(RELEASE_MEMORY_DELAY, self._trim)

    def _trim(self) -> None:
        self._release_timer = None
        libc = self._glibc()
        if libc:
            libc.malloc_trim(0)

    @staticmethod
    def shell() -> str:
        # Looked up each time: a user may install bash into a running sandbox.
        return "/bin/bash" if os.access("/bin/bash", os.X_OK) else "/bin/sh"

    def interactive_shell(self) -> list[str]:
        """argv of the shell of terminals and sessions: the image's own (its ENTRYPOINT+CMD,
        when that is a shell that is installed), else `shell()`."""
        if self.image_shell:
            name, args = self.image_shell[0], self.image_shell[1:]
            path = find_program(name, self.base_env.get("PATH") or "/usr/local/bin:/usr/bin:/bin")
            if path is not None:
                return [path, *args]
        return [self.shell()]

    def ping(self) -> PingResult:
        return {
            "ok": True,
            "pid": os.getpid(),
            "rss_kb": rss_kb(),
            "version": AGENT_VERSION,
            "shell": self.shell(),
        }

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                fd, _ = self._listener._accept()  # type: ignore[attr-defined]
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # EMFILE and friends: the listener stays readable, so back off instead of
                # spinning, and let running work finish.
                report(f"accept failed: {e}; retrying in 0.5 s")
                self.loop.remove_reader(self._listener.fileno())
                self.loop.call_later(0.5, self._resume_accepting)
                return
            # _accept() used accept4(SOCK_CLOEXEC): children never inherit connections.
            conn = Connection(self, _socket.socket(fileno=fd))
            self.connections.add(conn)

    # -- shutdown (SIGTERM / SIGINT) -------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop accepting work, ask every process tree to stop, force them after a grace period,
        then leave the loop. As PID 1 the agent's exit takes the rest of the sandbox with it."""
        if self.shutting_down:
            return
        self.shutting_down = True
        if self._listener is not None:
            self.loop.remove_fd(self._listener.fileno())
            self._listener.close()
            self._listener = None
        for op in list(self.running):
            op.terminate(SIGTERM)
        for proc in self.processes.all_running() if self.processes else ():
            proc.kill(SIGTERM)
        self._shutdown_deadline = time.monotonic() + SHUTDOWN_GRACE
        self._shutdown_tick()

    def _shutdown_tick(self) -> None:
        now = time.monotonic()
        flushed = all(not conn.has_pending_output for conn in self.connections)
        procs = self.processes.all_running() if self.processes else []
        if (not self.running and not procs and flushed) or now > self._shutdown_deadline + 1.0:
            self.loop.stop()
            return
        if (self.running or procs) and now > self._shutdown_deadline:
            for op in list(self.running):
                op.terminate(SIGKILL)
            for proc in procs:
                proc.kill(SIGKILL)
        self.loop.call_later(0.05, self._shutdown_tick)


class Connection:
    """One connection from the server: many concurrent streams, one write buffer."""

    def __init__(self, agent: Agent, sock: _socket.socket) -> None:
        self._agent = agent
        self._loop = agent.loop
        self._sock = sock
        self._fd = sock.fileno()
        sock.setblocking(False)
        self._decoder = FrameDecoder()
        self._streams: dict[int, StreamOp] = {}
        self._out: deque[bytes | memoryview] = deque()
        self._out_bytes = 0
        self._out_grew = False  # over RELEASE_MEMORY_AFTER since the queue was last empty
        self._writing = False  # waiting for the socket to take the rest of `_out`
        self._read_blockers: set[StreamOp] = set()
        self._close_timer: Timer | None = None
        self.output_paused = False
        self.closed = False
        self._loop.add_reader(self._fd, self._on_readable)

    @property
    def has_pending_output(self) -> bool:
        return bool(self._out) and not self.closed

    # -- reading -------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            data = self._sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return self.close()
        if not data:
            return self.close()
        try:
            frames = self._decoder.feed(data)
        except FrameError as e:
            report(f"closing a connection that sent a malformed frame: {e}")
            return self.close()
        for frame in frames:
            if self.closed:
                return
            self._dispatch(frame)

    def _dispatch(self, frame: Frame) -> None:
        kind = frame.kind
        if kind == Kind.OPEN:
            return self._open(frame)
        if kind in (Kind.DATA, Kind.EOF, Kind.CANCEL):
            op = self._streams.get(frame.stream)
            # An unknown stream has most likely just ended: its RESULT crossed this frame.
            if op is not None:
                op.on_frame(kind, frame.channel, frame.payload)
            return
        report(f"closing a connection that sent a {kind.name} frame")
        self.close()

    def _open(self, frame: Frame) -> None:
        stream = frame.stream
        if stream in self._streams:
            report(f"closing a connection that reopened live stream {stream}")
            return self.close()
        try:
            request = frame.json()
        except ValueError as e:  # bad UTF-8, bad JSON, not an object
            return self._error(stream, "invalid_request", f"OPEN payload is not a JSON object: {e}")
        try:
            op = parse_op(request, self._agent.known_ops)
            if op != "ping":
                self._agent.settle()
            if op in UNARY_OPS:
                handler = load_handler(UNARY_OPS, op)
                self._ok(stream, handler(self._agent, request))  # type: ignore[operator]
                return self._agent.files_may_be_closed()
            if op in STREAM_OPS:
                if self._agent.shutting_down:
                    return self._error(stream, "shutting_down", "the agent is shutting down")
                factory = load_handler(STREAM_OPS, op)
                stream_op = factory(self._agent, self, stream, request)  # type: ignore[operator]
                self._streams[stream] = stream_op
                return stream_op.start()  # type: ignore[no-any-return]
            raise UnknownOp("op", f"unknown op {op!r}")
        except UnknownOp as e:
            known = ", ".join(sorted(self._agent.known_ops))
            return self._error(stream, "unknown_op", f"{e}; the agent knows: {known}")
        except InvalidRequest as e:
            return self._error(stream, "invalid_request", str(e))
        except OpError as e:
            return self._error(stream, e.code, e.message)  # type: ignore[arg-type]
        except Exception as e:
            report_exception(f"op on stream {stream} failed")
            if stream in self._streams:
                del self._streams[stream]
            return self._error(stream, "internal", f"agent bug: {type(e).__name__}: {e}")

    def _ok(self, stream: int, fields: dict[str, Any]) -> None:
        self.send(encode_json_frame(Kind.RESULT, stream, fields))

    def _error(self, stream: int, code: ErrorCode, message: str) -> None:
        error = {"error": {"code": code, "message": message}}
        self.send(encode_json_frame(Kind.RESULT, stream, error))

    def stream_finished(self, stream: int, op: StreamOp) -> None:
        if self._streams.get(stream) is op:
            del self._streams[stream]
        self.unblock_reading(op)
        self._agent.files_may_be_closed()

    def block_reading(self, op: StreamOp) -> None:
        """``op`` holds too much stdin: stop reading frames until it has written it out."""
        if not self._read_blockers and not self.closed:
            self._loop.remove_reader(self._fd)
        self._read_blockers.add(op)

    def unblock_reading(self, op: StreamOp) -> None:
        if op in self._read_blockers:
            self._read_blockers.discard(op)
            if not self._read_blockers and not self.closed:
                self._loop.add_reader(self._fd, self._on_readable)

    # -- writing -------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue ``data``; what a turn of the loop queued leaves in one write at its end.

        NB: an exec of `true` sent its frames one write each (started; then, in one turn,
        both EOFs and the RESULT), and every write wakes the server for a read of its own.
        Held to the end of the turn only, nothing waits for an event still to come: output
        stays live."""
        if self.closed:
            return
        if not self._out:
            self._loop.after_turn(self._flush)
        self._out.append(data)
        self._out_bytes += len(data)
        if self._writing and self._out_bytes > RELEASE_MEMORY_AFTER:
            self._out_grew = True
        if self._out_bytes > WRITE_HIGH_WATER and not self.output_paused:
            self.output_paused = True
            for op in list(self._streams.values()):
                op.pause_output()

    def _flush(self) -> None:
        if self.closed or not self._out or self._writing:
            return
        self._on_writable()
        if self._out and not self.closed:
            # The socket is full: the rest goes as the server reads.
            if self._out_bytes > RELEASE_MEMORY_AFTER:
                self._out_grew = True
            self._writing = True
            self._loop.add_writer(self._fd, self._on_writable)

    def _on_writable(self) -> None:
        out = self._out
        buffers = [out[i] for i in range(min(len(out), 64))]
        try:
            sent = self._sock.sendmsg(buffers)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return self._broken()
        self._out_bytes -= sent
        while sent:
            head = out[0]
            if len(head) <= sent:
                sent -= len(head)
                out.popleft()
            else:
                out[0] = memoryview(head)[sent:]
                sent = 0
        if not out:
            if self._writing:
                self._writing = False
                self._loop.remove_writer(self._fd)
            if self._out_grew:
                self._out_grew = False
                self._agent.release_memory()
        if self.output_paused and self._out_bytes < WRITE_LOW_WATER:
            self.output_paused = False
            for op in list(self._streams.values()):
                op.resume_output()

    def _broken(self) -> None:
        # Called from inside some op's send(); tear down on the next turn of the loop, so the
        # op is not re-entered half-way through.
        self.closed = True
        if self._close_timer is None:
            self._close_timer = self._loop.call_later(0, self.close)

    def close(self) -> None:
        """Drop the connection. Its running execs are killed: nobody would get their output."""
        if self._sock.fileno() == -1:
            return
        if not self.closed and self._out and not self._writing:
            # What this turn queued (an error RESULT before the close) still goes, as far as
            # the socket takes it at once.
            self._on_writable()
        self.closed = True
        self._loop.remove_fd(self._fd)
        self._sock.close()
        self._out.clear()
        self._out_bytes = 0
        if self._out_grew:
            self._agent.release_memory()
        self._agent.connections.discard(self)
        for op in list(self._streams.values()):
            op.connection_lost()
        self._streams.clear()
        self._read_blockers.clear()


def ping_op(agent: Agent, request: dict[str, Any]) -> PingResult:
    parse_ping(request)
    return agent.ping()
