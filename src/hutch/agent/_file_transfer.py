"""File contents over streams: read_file (DATA frames out, bounded for /proc and /sys files,
never blocking on a FIFO) and write_file (DATA frames in, to a temporary file renamed into
place at EOF, or in place for E2B). Paths, errors, listing, stat and the unary file ops are in
_files.py.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat as st

from hutch._wire.frames import Channel, Kind, encode_frame

from . import _recent_writes as recent_writes
from ._files import (
    _bool,
    _chown_all,
    _made_dirs,
    _mode,
    _owner,
    _StreamOp,
    _xattr_prefix,
    _xattrs,
    check_path,
    os_error,
    resolve,
)
from ._ops import OpError
from ._replace import replace_file
from ._requests import InvalidRequest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from hutch._wire.agent_calls import ReadResult, WriteResult

    from ._server import Agent, Connection

# NB: 1 MiB frames were tried (fewer passes through the server's ASGI stack): no difference
# in the server's CPU per GB within the noise of A/B runs at load 3-4, so 256 KiB stays.
CHUNK = 256 * 1024
CHUNKS_PER_TURN = 8  # then yield to the loop, so one big read does not starve other streams
# A transfer at least this big keeps the agent's heap for its frames (Agent.hold_heap).
BIG_TRANSFER = 1024 * 1024
PSEUDO_FILE_LIMIT = 16 * 1024 * 1024  # /proc and /sys files say size 0; read at most this


class ReadOp(_StreamOp):
    """Send a file as DATA frames on channel 1, at most ``length`` bytes from ``offset``."""

    def send_result(self, result: ReadResult) -> None:
        self._finish(dict(result))

    def __init__(self, agent: Agent, conn: Connection, stream: int, request: dict[str, Any]):
        super().__init__(agent, conn, stream)
        self._path = resolve(agent, check_path(request))
        offset = request.get("offset", 0) or 0
        length = request.get("length")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InvalidRequest("offset", "must be a non-negative integer")
        if length is not None and (
            isinstance(length, bool) or not isinstance(length, int) or length < 0
        ):
            raise InvalidRequest("length", "must be a non-negative integer or null")
        self._offset = offset
        self._remaining: int = -1
        self._length = length
        self._fd = -1
        self._sent = 0
        self._scheduled = False
        self._held_heap = False

    def start(self) -> None:
        path = self._path
        try:
            # O_NONBLOCK: opening a FIFO with no writer must not block the agent.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as e:
            return self._finish(error=os_error(e, path))
        self._fd = fd
        s = os.fstat(fd)
        if st.S_ISDIR(s.st_mode):
            return self._finish(
                error=OpError("is_a_directory", f"{path} is a directory; use list_files")
            )
        if not st.S_ISREG(s.st_mode):
            kind = "FIFO" if st.S_ISFIFO(s.st_mode) else "device or socket"
            return self._finish(
                error=OpError("not_a_regular_file", f"{path} is a {kind}; only files are read")
            )
        size = s.st_size
        if size == 0 or _is_pseudo(path):
            # /proc and /sys files report size 0 (or, under LXCFS, a size that is not what a
            # read then gives) and are produced on the fly: bound them, length unknown.
            limit = PSEUDO_FILE_LIMIT
            size_known = False
        else:
            limit = max(0, size - self._offset)
            size_known = True
        if self._length is not None:
            limit = min(limit, self._length)
        self._remaining = limit
        if limit >= BIG_TRANSFER:
            self._agent.hold_heap()
            self._held_heap = True
        first = b""
        if not size_known and limit:
            # Kernel files fail on read, not on open (/proc/self/mem, /proc/kmsg): read the first
            # chunk now, so that such a failure is an error answer, not a body cut short.
            try:
                first = os.pread(fd, min(CHUNK, limit), self._offset)
            except OSError as e:
                return self._finish(error=os_error(e, path))
        self._send_event(
            {
                "event": "opened",
                "size": size if size_known else None,
                "length": limit if size_known else None,
            }
        )
        if first:
            self._conn.send(encode_frame(Kind.DATA, self._stream, first, Channel.STDOUT, 0))
            self._offset += len(first)
            self._sent += len(first)
            self._remaining -= len(first)
        elif not size_known:
            self._remaining = 0
        self._pump()

    def _pump(self) -> None:
        self._scheduled = False
        if self.finished:
            return
        for _ in range(CHUNKS_PER_TURN):
            if self._conn.output_paused:
                return  # resume_output() calls back
            if self._remaining <= 0:
                return self._done()
            try:
                data = os.pread(self._fd, min(CHUNK, self._remaining), self._offset)
            except OSError as e:
                return self._finish(error=os_error(e, self._path))
            if not data:
                return self._done()
            self._conn.send(encode_frame(Kind.DATA, self._stream, data, Channel.STDOUT, self._sent))
            self._offset += len(data)
            self._sent += len(data)
            self._remaining -= len(data)
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._agent.loop.call_later(0, self._pump)

    def _done(self) -> None:
        self._conn.send(encode_frame(Kind.EOF, self._stream, b"", Channel.STDOUT, self._sent))
        self.send_result({"size": self._sent})

    def resume_output(self) -> None:
        if not self.finished:
            self._schedule()

    def _cleanup(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._held_heap:
            self._agent.release_memory()


class WriteOp(_StreamOp):
    """Receive DATA frames on channel 0 into a temporary file; at EOF, rename it into place."""

    def send_result(self, result: WriteResult) -> None:
        self._finish(dict(result))

    def __init__(self, agent: Agent, conn: Connection, stream: int, request: dict[str, Any]):
        super().__init__(agent, conn, stream)
        self._path = resolve(agent, check_path(request))
        self._mode = _mode(request, None)
        self._parents = _bool(request, "parents", True)
        self._owner = _owner(request)
        self._xattrs = _xattrs(request)
        self._xattr_prefix = _xattr_prefix(request)
        # E2B's envd writes in place (open, truncate, write): readers may see a partial file,
        # but watchers see create/attrib/modify of the file itself, as E2B's SDKs expect.
        self._in_place = _bool(request, "in_place")
        self._fd = -1
        self._tmp: str | None = None
        self._replaces = False  # the target was a regular file when the write began
        self._size = 0
        self._held_heap = False

    def start(self) -> None:
        path = self._path
        try:
            try:
                s = os.stat(path)
            except FileNotFoundError:
                s = None
            if s is not None:
                if st.S_ISDIR(s.st_mode):
                    raise OSError(errno.EISDIR, "is a directory; give the path of a file")
                if not st.S_ISREG(s.st_mode):
                    raise OSError(errno.ENXIO, "is not a regular file; only files are written")
                # A symlink to a file is written through, as `>` in a shell would.
                path = self._path = os.path.realpath(path)
                self._replaces = True
            parent = os.path.dirname(path)
            if self._parents:
                made = _made_dirs(parent)
                os.makedirs(parent, 0o755, exist_ok=True)
                _chown_all(made, self._owner)
            mode = (
                self._mode
                if self._mode is not None
                else (st.S_IMODE(s.st_mode) if s is not None else 0o644)
            )
            if self._in_place:
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
                self._fd = os.open(path, flags, mode)
                if self._mode is not None:
                    os.fchmod(self._fd, mode)
            else:
                tmp = os.path.join(parent, f".{os.path.basename(path)}.hutch-{os.urandom(6).hex()}")
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                self._fd = os.open(tmp, flags, 0o600)
                self._tmp = tmp
                recent_writes.began(tmp, s is not None)
                os.fchmod(self._fd, mode)
            if s is not None:
                if not self._in_place:
                    with contextlib.suppress(OSError):
                        os.fchown(self._fd, s.st_uid, s.st_gid)
            elif self._owner is not None:
                os.fchown(self._fd, self._owner.uid, self._owner.gid)
            self._set_xattrs()
        except OSError as e:
            return self._finish(error=os_error(e, path))
        self._send_event({"event": "ready"})

    def on_frame(self, kind: int, channel: int, payload: bytes) -> None:
        if self.finished:
            return
        if kind == Kind.CANCEL:
            return self.cancel()
        if channel != Channel.STDIN:
            return
        if kind == Kind.DATA:
            if not self._held_heap and len(payload) >= BIG_TRANSFER // 4:
                self._agent.hold_heap()
                self._held_heap = True
            try:
                view = memoryview(payload)
                while view:
                    n = os.write(self._fd, view)
                    view = view[n:]
            except OSError as e:
                return self._finish(error=os_error(e, self._path))
            self._size += len(payload)
        elif kind == Kind.EOF:
            # NB: renamed, then closed. A bucket's rclone uploads a file at the host's last
            # close: closed first, its upload under the temporary name raced the rename (when
            # cancelled late, the object stayed in the bucket under that name).
            try:
                if self._tmp is not None:
                    if self._replaces and self._size >= BIG_TRANSFER:
                        replace_file(self._tmp, self._path)  # no flush-on-rename (btrfs)
                    else:
                        os.rename(self._tmp, self._path)
                    self._tmp = None
                fd, self._fd = self._fd, -1  # closed even when close() fails: not twice
                os.close(fd)
            except OSError as e:
                return self._finish(error=os_error(e, self._path))
            self.send_result({"path": self._path, "size": self._size})

    def _set_xattrs(self) -> None:
        """Replace the attributes under `xattr_prefix` with `xattrs` (a new temporary file has
        none; a file written in place keeps its old ones unless cleared here)."""
        if self._xattr_prefix is not None and self._in_place:
            for name in os.listxattr(self._fd):
                if name.startswith(self._xattr_prefix) and name not in self._xattrs:
                    os.removexattr(self._fd, name)
        for name, value in self._xattrs.items():
            os.setxattr(self._fd, name, value)

    def _cleanup(self) -> None:
        if self._held_heap:
            self._agent.release_memory()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except OSError:
                pass
            self._tmp = None


def open_read(agent: Agent, conn: Connection, stream: int, request: dict[str, Any]) -> ReadOp:
    return ReadOp(agent, conn, stream, request)


def open_write(agent: Agent, conn: Connection, stream: int, request: dict[str, Any]) -> WriteOp:
    return WriteOp(agent, conn, stream, request)


def _is_pseudo(path: str) -> bool:
    """Whether `path` is a file of /proc or /sys, whose stat size says nothing of its content."""
    real = os.path.realpath(path)
    return real.startswith(("/proc/", "/sys/"))
