"""The sync client's exec requests over plain HTTP/1.1: a kept-alive socket and a small reader.

py-spy on a client running 8 exec loops (docs/performance.md, branch ``exec14``): once httpx's
own layer was gone (sdk/_raw_http.py), httpcore and h11 were still two thirds of the SDK's
CPU per exec — h11's event machine, the pool's request assignment and its locks, header
validation of a head that is the same for every request. An exec's answer is a short head
and a few chunks, usually in one ``recv``: this module sends the head built once (plus the
path and Content-Length) in one ``sendall`` and reads the answer with ``bytes.find``.

It keeps what httpcore gave the SDK:

- **Errors** are httpcore's exception types (``ConnectError``, ``ConnectTimeout``,
  ``ReadTimeout``, ``WriteTimeout``, ``ReadError``, ``WriteError``, ``RemoteProtocolError``),
  so ``translate_transport_errors`` maps them as before.
- **Timeouts**: ``connect``, ``write`` while sending, ``read`` between two reads (``None``
  waits as long as the stream lasts); the pool timeout is ``None`` as in ``stream_timeout``.
- **Kept-alive connections**: at most ``max_keepalive`` idle, each for ``keepalive_expiry``
  seconds; one the server closed while idle (readable before a request: EOF or stray bytes)
  is dropped before use, as httpcore's ``has_expired`` does, and never after a request was
  sent (an exec is not idempotent). ``max_connections`` in use at once, the others wait.
- **Bodies**: chunked (yielded as the bytes arrive, for streamed frames), Content-Length, or
  up to EOF; ``Connection: close`` or HTTP/1.0 closes after the answer. An answer closed
  before its end closes its connection.

https goes through httpcore (sdk/_raw_http.py's ``RawPool``): TLS stays httpcore's.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator

import httpcore

_HEAD_LIMIT = 64 * 1024  # h11's default max_incomplete_event_size
_READ_SIZE = 64 * 1024


class Http1Connection:
    """One socket to the server, used by one request at a time."""

    __slots__ = ("sock", "buffer", "idle_since")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""  # bytes read past the previous answer's end (none, normally)
        self.idle_since = 0.0

    def usable(self, now: float, expiry: float) -> bool:
        """Whether an idle connection may carry another request: not expired, and nothing to
        read (a readable idle socket is one the server closed, or sent bytes nobody asked)."""
        if self.buffer or now - self.idle_since > expiry:
            return False
        # NB: poll, not select: select refuses a descriptor over 1023 (a busy process's).
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        try:
            return not poller.poll(0)
        except OSError:
            return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class Http1Pool:
    """Kept-alive HTTP/1.1 connections to one ``host:port``, for any number of threads."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_connections: int,
        max_keepalive: int,
        keepalive_expiry: float,
    ) -> None:
        self._address = (host, port)
        self._max_keepalive = max_keepalive
        self._expiry = keepalive_expiry
        self._idle: list[Http1Connection] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._closed = False

    def send(
        self,
        head: bytes,
        body: bytes,
        *,
        connect: float | None,
        write: float | None,
        read: float | None,
    ) -> Http1Response:
        """Send one request (its whole head, then ``body``) and read the answer's head."""
        self._slots.acquire()
        try:
            conn = self._checkout(connect)
            try:
                conn.sock.settimeout(write)
                try:
                    conn.sock.sendall(head + body if len(body) < 16384 else head)
                    if len(body) >= 16384:
                        conn.sock.sendall(body)
                except TimeoutError as exc:
                    raise httpcore.WriteTimeout(str(exc) or "timed out") from exc
                except OSError as exc:
                    raise httpcore.WriteError(str(exc) or type(exc).__name__) from exc
                conn.sock.settimeout(read)
                return Http1Response(self, conn)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            self._slots.release()
            raise

    def _checkout(self, connect: float | None) -> Http1Connection:
        now = time.monotonic()
        stale: list[Http1Connection] = []
        conn = None
        with self._lock:
            if self._closed:
                raise httpcore.ConnectError("the connection pool is closed")
            while self._idle:
                candidate = self._idle.pop()
                if candidate.usable(now, self._expiry):
                    conn = candidate
                    break
                stale.append(candidate)
        for old in stale:
            old.close()
        if conn is not None:
            return conn
        try:
            sock = socket.create_connection(self._address, timeout=connect)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc) or "timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return Http1Connection(sock)

    def release(self, conn: Http1Connection, reusable: bool) -> None:
        """Give back a connection whose answer ended (``reusable``) or broke (not)."""
        try:
            if reusable:
                conn.idle_since = time.monotonic()
                with self._lock:
                    if not self._closed and len(self._idle) < self._max_keepalive:
                        self._idle.append(conn)
                        return
            conn.close()
        finally:
            self._slots.release()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class Http1Response:
    """An answer whose head has been read; its body is read by :meth:`iter_stream`."""

    def __init__(self, pool: Http1Pool, conn: Http1Connection) -> None:
        self._pool: Http1Pool | None = pool
        self._conn = conn
        self._buffer = b""
        self.status = 0
        self._length: int | None = None  # Content-Length; None with chunked or to-EOF
        self._chunked = False
        self._keep_alive = True
        self._done = False
        self._read_head()

    # --- reading ---------------------------------------------------------------------------

    def _recv(self) -> bytes:
        try:
            data = self._conn.sock.recv(_READ_SIZE)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(str(exc) or "timed out") from exc
        except OSError as exc:
            raise httpcore.ReadError(str(exc) or type(exc).__name__) from exc
        return data

    def _read_head(self) -> None:
        buffer = self._conn.buffer
        self._conn.buffer = b""
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > _HEAD_LIMIT:
                    raise httpcore.RemoteProtocolError("the answer's head is too long")
                data = self._recv()
                if not data:
                    raise httpcore.RemoteProtocolError(
                        "Server disconnected without sending a response."
                    )
                buffer += data
                continue
            head, buffer = buffer[:end], buffer[end + 4 :]
            if self._parse_head(head):
                break  # else an informational (1xx) answer: the real one follows
        self._buffer = buffer
        if self._length == 0 or self.status in (204, 304):
            self._length = 0
            self._finish()

    def _parse_head(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise httpcore.RemoteProtocolError(f"not an HTTP/1.1 answer: {lines[0][:80]!r}")
        status = int(parts[1])
        if 100 <= status < 200 and status != 101:
            return False
        self.status = status
        self._keep_alive = parts[0] == b"HTTP/1.1"
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise httpcore.RemoteProtocolError("a header line without a colon")
            name = name.strip().lower()
            value = value.strip()
            if name == b"content-length":
                if not value.isdigit() or (self._length is not None and self._length != int(value)):
                    raise httpcore.RemoteProtocolError("a bad Content-Length")
                self._length = int(value)
            elif name == b"transfer-encoding":
                if value.lower() != b"chunked":
                    raise httpcore.RemoteProtocolError("a transfer coding other than chunked")
                self._chunked = True
            elif name == b"connection" and b"close" in value.lower():
                self._keep_alive = False
        if self._chunked:
            self._length = None
        elif self._length is None:
            self._keep_alive = False  # the body ends with the connection
        return True

    def iter_stream(self) -> Iterator[bytes]:
        """The body's bytes as they arrive."""
        if self._done:
            return
        if self._chunked:
            yield from self._chunks()
        elif self._length is not None:
            yield from self._sized(self._length)
        else:
            yield from self._to_eof()
        self._finish()

    def _sized(self, left: int) -> Iterator[bytes]:
        buffer, self._buffer = self._buffer, b""
        while True:
            if buffer:
                piece, buffer = buffer[:left], buffer[left:]
                left -= len(piece)
                yield piece
            if not left:
                break
            buffer = self._recv()
            if not buffer:
                raise httpcore.RemoteProtocolError(
                    "peer closed connection without sending complete message body"
                )
        self._conn.buffer = buffer

    def _to_eof(self) -> Iterator[bytes]:
        buffer, self._buffer = self._buffer, b""
        while True:
            if buffer:
                yield buffer
            buffer = self._recv()
            if not buffer:
                return

    def _chunks(self) -> Iterator[bytes]:
        buffer, self._buffer = self._buffer, b""
        while True:
            line, buffer = self._line(buffer, "a chunk's size line is too long")
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise httpcore.RemoteProtocolError("a bad chunk size") from None
            if size == 0:
                break
            while size:
                if not buffer:
                    buffer = self._more()
                piece, buffer = buffer[:size], buffer[size:]
                size -= len(piece)
                yield piece
            while len(buffer) < 2:
                buffer += self._more()
            if buffer[:2] != b"\r\n":
                raise httpcore.RemoteProtocolError("a chunk not followed by CRLF")
            buffer = buffer[2:]
        # Trailers (none from Hutch), then the empty line that ends the body.
        while True:
            line, buffer = self._line(buffer, "the trailers are too long")
            if not line:
                break
        self._conn.buffer = buffer

    def _line(self, buffer: bytes, too_long: str) -> tuple[bytes, bytes]:
        """The line at the start of `buffer` (read on until its CRLF), and what follows it."""
        end = buffer.find(b"\r\n")
        while end < 0:
            if len(buffer) > _HEAD_LIMIT:
                raise httpcore.RemoteProtocolError(too_long)
            buffer += self._more()
            end = buffer.find(b"\r\n")
        return buffer[:end], buffer[end + 2 :]

    def _more(self) -> bytes:
        data = self._recv()
        if not data:
            raise httpcore.RemoteProtocolError(
                "peer closed connection without sending complete message body"
            )
        return data

    def read(self) -> bytes:
        """The whole (rest of the) body."""
        return b"".join(self.iter_stream())

    # --- ending ----------------------------------------------------------------------------

    def _finish(self) -> None:
        """The body has been read to its end: the connection goes back to the pool."""
        self._done = True
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.release(self._conn, self._keep_alive)

    def close(self) -> None:
        """End the answer; a body not read to its end closes the connection."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.release(self._conn, False)
