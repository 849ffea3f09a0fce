"""The server's client for a sandbox's agent: one unix-socket connection, many streams.

The agent runs inside the sandbox, so everything it sends is untrusted: the frame decoder's
size limit stays on, frames for streams we did not open are dropped, and a malformed frame
or JSON body becomes an exception for the caller, never a crash of the server.

Errors::

    AgentError(code, message)           an error RESULT from the agent, or a bad answer
    ├── (code = the agent's, e.g. "invalid_request", "cwd_not_found", "user_not_found")
    ├── AgentUnknownOp                  code "unknown_op": the agent does not serve the op
    └── AgentDisconnected               the connection broke: every open stream ends with it
        └── AgentConnectionClosed       ...because this side called close() (use after close)

Backpressure: each stream buffers at most ``STREAM_BUFFER_BYTES`` of frames (plus one frame)
for its consumer. When a stream is full, the connection's reader stops reading the socket until
the consumer catches up, so memory stays bounded and the agent in turn stops reading the
process's pipes. The price is head-of-line blocking: a stalled consumer stalls every stream
of that connection. So finish every stream: iterate it to its RESULT, or ``cancel()`` it
(its later DATA frames are then dropped) or ``aclose()`` it (``async with`` does that).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import TYPE_CHECKING, Any, cast

from hutch._wire.agent_calls import AgentCall, StreamRequest
from hutch._wire.agent_ops import OpName
from hutch._wire.frames import (
    FRAME_HEADER,
    MAX_PAYLOAD,
    Channel,
    Frame,
    FrameError,
    Kind,
    encode_frame,
    encode_frame_parts,
    encode_json_frame,
    parse_header,
)

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path
    from types import TracebackType

STREAM_BUFFER_BYTES = 1024 * 1024
STDIN_CHUNK = 64 * 1024
# The socket reader's buffer limit: it stops reading the socket above twice this.
_READ_LIMIT = 1024 * 1024
_MAX_STREAM_ID = 2**32 - 1


class AgentError(Exception):
    """The agent answered with an error, or with something that is not a valid answer."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        # Set by the gateway: whose agent said it (the API's messages name the sandbox).
        self.sandbox_id: str | None = None


class AgentUnknownOp(AgentError):
    """The agent does not serve the op (code ``unknown_op``): an agent older than the server,
    since mypy holds the server's own calls to the ops declared in `hutch._wire`."""


class AgentDisconnected(AgentError):
    """The connection to the agent is gone (or could not be made)."""

    def __init__(self, message: str, code: str = "agent_disconnected") -> None:
        super().__init__(code, message)


class AgentConnectionClosed(AgentDisconnected):
    """This side closed the connection; it cannot be used any more."""

    def __init__(self, message: str = "the agent connection was closed") -> None:
        super().__init__(message, code="connection_closed")


def parse_result(frame: Frame) -> dict[str, Any]:
    """The fields of a RESULT frame without ``ok``.

    Raises:
        AgentError: an error result (with the agent's code) or a malformed one ("bad_response").
    """
    try:
        body = frame.json()
    except ValueError as e:  # FrameError, bad JSON, bad UTF-8
        raise AgentError("bad_response", f"the agent sent an unreadable RESULT: {e}") from None
    error = body.get("error")
    if error is not None:
        if isinstance(error, dict):
            code, message = error.get("code"), error.get("message")
            if isinstance(code, str) and isinstance(message, str):
                raise (AgentUnknownOp if code == "unknown_op" else AgentError)(code, message)
        raise AgentError("bad_response", f"the agent sent a malformed error: {error!r}")
    if body.get("ok") is not True:
        raise AgentError("bad_response", "the agent sent a RESULT with neither 'ok' nor 'error'")
    return {k: v for k, v in body.items() if k != "ok"}


class AgentStream:
    """One request and its answer: an async iterator of EVENT, DATA, EOF and RESULT frames,
    ending after the RESULT (or raising ``AgentDisconnected`` if the connection breaks first).

    An error RESULT is yielded like any other; see ``parse_result``.
    """

    def __init__(self, conn: AgentConnection, stream_id: int) -> None:
        self._conn = conn
        self.id = stream_id
        self._frames: deque[Frame] = deque()
        self._buffered = 0
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._error: AgentError | None = None
        self._got_result = False  # the RESULT arrived (the id is free for reuse from then on)
        self._yielded_result = False
        self._cancelled = False
        self._discard = False
        self._stdin_offset = 0

    @property
    def finished(self) -> bool:
        """The RESULT arrived, or the stream failed."""
        return self._got_result or self._error is not None

    @property
    def answered(self) -> bool:
        """The RESULT arrived: the agent is done with this stream and sends no more on it."""
        return self._got_result

    # -- the reader side (AgentConnection) -----------------------------------------------------

    async def _put(self, frame: Frame) -> None:
        if frame.kind is Kind.RESULT:
            self._got_result = True
        # A full buffer holds up the whole connection (see the module docstring), unless the
        # consumer has cancelled: then DATA is dropped and the rest is small.
        while self._buffered >= STREAM_BUFFER_BYTES and not self._cancelled:
            self._writable.clear()
            await self._writable.wait()
        if self._discard or (self._cancelled and frame.kind is Kind.DATA):
            return
        self._frames.append(frame)
        self._buffered += len(frame.payload)
        self._readable.set()

    def _fail(self, error: AgentError) -> None:
        if not self.finished:
            self._error = error
        self._readable.set()
        self._writable.set()

    # -- the consumer side ---------------------------------------------------------------------

    def __aiter__(self) -> AgentStream:
        return self

    async def __anext__(self) -> Frame:
        while not self._frames:
            if self._yielded_result or self._discard:
                raise StopAsyncIteration
            if self._error is not None:
                raise self._error
            self._readable.clear()
            await self._readable.wait()
        frame = self._frames.popleft()
        self._buffered -= len(frame.payload)
        if self._buffered < STREAM_BUFFER_BYTES:
            self._writable.set()
        if frame.kind is Kind.RESULT:
            self._yielded_result = True
        return frame

    def buffered(self) -> int:
        """Frames received and not yet consumed (a consumer may batch them)."""
        return len(self._frames)

    async def send_stdin(self, data: bytes, *, chunk_size: int = STDIN_CHUNK) -> None:
        """Feed the process's stdin (the request must have had ``"stdin": true``).

        Waits while the socket's write buffer is full. A no-op once the RESULT is in.

        Raises:
            AgentDisconnected: the connection is gone.
        """
        view = memoryview(data)
        chunk_size = min(chunk_size, MAX_PAYLOAD)
        for start in range(0, len(view), chunk_size):
            chunk = view[start : start + chunk_size]
            # NB: an upload's 1 MiB slices go out behind their header uncopied (a copy per
            # slice, then one per header join, were a fifth of the server's CPU).
            parts = encode_frame_parts(Kind.DATA, self.id, chunk, Channel.STDIN, self._stdin_offset)
            if not self._send_parts(*parts):
                return
            self._stdin_offset += len(chunk)
            await self._conn._drain()

    async def close_stdin(self) -> None:
        """Send EOF on stdin. A no-op once the RESULT is in; raises like ``send_stdin``."""
        if self._send(Kind.EOF, b"", Channel.STDIN, self._stdin_offset):
            await self._conn._drain()

    async def cancel(self) -> None:
        """Ask the agent to stop (for exec: kill the process tree). The RESULT still comes;
        DATA arriving from now on is dropped. A no-op once the stream has ended."""
        self._cancelled = True
        self._writable.set()
        if self._error is None:
            self._send(Kind.CANCEL)

    async def aclose(self) -> None:
        """Cancel if still running and drop everything not yet consumed."""
        await self.cancel()
        self._discard = True
        self._frames.clear()
        self._buffered = 0
        self._readable.set()

    async def __aenter__(self) -> AgentStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _send(self, kind: Kind, payload: bytes = b"", channel: int = 0, offset: int = 0) -> bool:
        if self._error is not None:
            raise self._error
        # Once the RESULT is in, the id may already belong to a new stream: send nothing.
        if self._got_result:
            return False
        return self._conn._write(encode_frame(kind, self.id, payload, channel, offset))

    def _send_parts(self, *parts: bytes | memoryview) -> bool:
        if self._error is not None:
            raise self._error
        if self._got_result:
            return False
        return all(self._conn._write(part) for part in parts)


class AgentConnection:
    """A connection to one agent. Make it with ``await AgentConnection.connect(path, timeout=)``.

    Any number of streams may be open at once; their ids are allocated here.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._streams: dict[int, AgentStream] = {}
        self._next_id = 1
        self._error: AgentDisconnected | None = None
        self._reader_task = asyncio.create_task(self._read_loop(), name="hutch-agent-reader")

    # NB: ``timeout`` bounds connecting only; calls take their caller's asyncio.timeout().
    @classmethod
    async def connect(cls, socket_path: Path, *, timeout: float) -> AgentConnection:  # noqa: ASYNC109
        """Connect to the agent listening on ``socket_path``.

        Raises:
            AgentDisconnected: nothing accepted the connection within ``timeout`` seconds.
        """
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(socket_path, limit=_READ_LIMIT)
        # NB: no socket path in these messages: they reach API clients (a 503's text), and
        # the host's paths are none of theirs; the gateway names the sandbox.
        except TimeoutError:
            raise AgentDisconnected(
                f"the sandbox's agent did not accept a connection within {timeout:g} s"
            ) from None
        except OSError as e:
            raise AgentDisconnected(
                f"cannot connect to the sandbox's agent: {e.strerror or e}"
            ) from e
        return cls(reader, writer)

    @property
    def open_streams(self) -> int:
        """Streams in flight (a command, a log stream, a terminal): the sandbox is in use."""
        return len(self._streams)

    @property
    def closed(self) -> bool:
        """Closed by ``close()`` or broken: either way, make a new connection."""
        return self._error is not None

    @property
    def call(self) -> AgentCall:
        """``call(op, **args)``: run a unary op and return its RESULT's fields (without
        ``ok``), typed per op by the contract in `hutch._wire.agent_calls`.

        Raises:
            AgentError: the agent's error (its ``code``; ``unknown_op`` for an op it does
                not serve), or a malformed answer.
            AgentDisconnected: the connection broke first.
        """
        # NB: the one place the untyped JSON is trusted to match the contract: the agent is
        # checked against the same types.
        return cast("AgentCall", self.call_untyped)

    async def call_untyped(self, op: OpName, **args: Any) -> dict[str, Any]:
        """`call` without the contract's types (for code that passes ops through).

        Raises:
            AgentError: the agent's error (its ``code``), or a malformed answer.
            AgentDisconnected: the connection broke first.
        """
        stream = self._open({"op": op, **args})
        try:
            async for frame in stream:
                if frame.kind is Kind.RESULT:
                    return parse_result(frame)
        finally:
            if not stream.finished:  # cancelled by our caller, e.g. a timeout
                await stream.aclose()
        raise AgentError("bad_response", "the stream ended without a RESULT")  # unreachable

    def open_stream(self, request: StreamRequest) -> AgentStream:
        """Send ``request`` (one of the contract's stream ops) on a new stream and return it.

        Raises:
            AgentDisconnected: the connection is already gone.
            FrameError: the request is too large for one frame.
        """
        return self._open(request)

    def _open(self, request: Mapping[str, object]) -> AgentStream:
        """Send ``request`` (``{"op": ...}``) on a new stream and return it.

        Raises:
            AgentDisconnected: the connection is already gone.
            FrameError: the request is too large for one frame.
        """
        if self._error is not None:
            raise self._error
        stream = AgentStream(self, self._allocate_id())
        frame = encode_json_frame(Kind.OPEN, stream.id, request)
        self._streams[stream.id] = stream
        self._write(frame)
        return stream

    async def close(self) -> None:
        """Close the connection; open streams end with ``AgentConnectionClosed``. Idempotent."""
        self._shut(AgentConnectionClosed())
        self._reader_task.cancel()
        # wait() rather than await: the task's own CancelledError is expected, while ours (if
        # the caller of close() is cancelled) must still propagate.
        await asyncio.wait({self._reader_task})
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def __aenter__(self) -> AgentConnection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- internals -----------------------------------------------------------------------------

    def _allocate_id(self) -> int:
        while True:
            stream_id = self._next_id
            self._next_id = stream_id % _MAX_STREAM_ID + 1
            if stream_id not in self._streams:
                return stream_id

    def _write(self, data: bytes | memoryview) -> bool:
        if self._error is not None or self._writer.is_closing():
            return False
        self._writer.write(data)
        return True

    async def _drain(self) -> None:
        if self._error is not None:
            raise self._error
        try:
            await self._writer.drain()
        except OSError as e:  # ConnectionResetError, BrokenPipeError, ...
            error = AgentDisconnected(f"writing to the agent failed: {e}")
            self._shut(error)
            raise (self._error or error) from e

    async def _read_loop(self) -> None:
        # NB: each payload is taken off the reader whole (readexactly): one copy out of the
        # reader's buffer. Reading pieces into a FrameDecoder copied each byte twice more, a
        # fifth of the server's CPU on a file download.
        reader = self._reader
        header_size = FRAME_HEADER.size
        try:
            while True:
                try:
                    header = await reader.readexactly(header_size)
                    kind, channel, stream, offset, length = parse_header(header)
                    payload = await reader.readexactly(length) if length else b""
                except asyncio.IncompleteReadError:
                    raise AgentDisconnected("the agent closed the connection") from None
                await self._deliver(Frame(kind, stream, payload, channel, offset))
        except AgentDisconnected as e:
            self._shut(e)
        except FrameError as e:
            self._shut(AgentDisconnected(f"the agent sent a malformed frame: {e}"))
        except OSError as e:
            self._shut(AgentDisconnected(f"reading from the agent failed: {e}"))
        except Exception as e:  # a bug here must not leave every stream waiting forever
            self._shut(AgentDisconnected(f"the agent client failed: {e!r}"))

    async def _deliver(self, frame: Frame) -> None:
        kind = frame.kind
        if kind is Kind.OPEN or kind is Kind.CANCEL:
            raise AgentDisconnected(f"the agent sent a {kind.name} frame, which only we may send")
        stream = self._streams.get(frame.stream)
        if stream is None:
            return  # a stream we never opened, or one that has ended: not the agent's to reuse
        if kind is Kind.RESULT or kind is Kind.EVENT:
            try:
                frame.json()
            except ValueError as e:
                del self._streams[frame.stream]
                stream._fail(AgentError("bad_response", f"the agent sent a bad {kind.name}: {e}"))
                return
        if kind is Kind.RESULT:
            del self._streams[frame.stream]
        await stream._put(frame)

    def _shut(self, error: AgentDisconnected) -> None:
        if self._error is not None:
            return
        self._error = error
        self._writer.close()
        streams = list(self._streams.values())
        self._streams.clear()
        for stream in streams:
            stream._fail(error)
