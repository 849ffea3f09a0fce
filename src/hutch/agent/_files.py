"""File ops: stat, list, mkdir, remove, move, read (streamed), write (streamed).

The agent is PID 1 of the sandbox and its ``/`` is the sandbox's root, so every path it opens
resolves inside the sandbox's own mount namespace: ``..``, absolute symlinks and
``/proc/self/root`` all land in the sandbox, never on the host. The server never opens a
sandbox path itself. What is left to guard here is the API itself: a FIFO or a device must not
hang it (opened non-blocking and refused unless regular), a /proc file is read with a bound,
and a write goes to a temporary file first, so an aborted upload leaves the old file intact.
"""

from __future__ import annotations

import errno
import os
import stat as st

from hutch._wire.frames import Channel, Kind, encode_frame, encode_json_frame

from ._ops import OpError
from ._requests import InvalidRequest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._server import Agent, Connection

MAX_PATH_BYTES = 4096
CHUNK = 256 * 1024
CHUNKS_PER_TURN = 8  # then yield to the loop, so one big read does not starve other streams
PSEUDO_FILE_LIMIT = 16 * 1024 * 1024  # /proc and /sys files say size 0; read at most this
LIST_BATCH = 2000
DEFAULT_LIST_LIMIT = 1_000_000

_ERRNO_CODES = {
    errno.ENOENT: "file_not_found",
    errno.ENOTDIR: "not_a_directory",
    errno.EISDIR: "is_a_directory",
    errno.EROFS: "read_only",
    errno.EEXIST: "file_exists",
    errno.ENOTEMPTY: "directory_not_empty",
    errno.EACCES: "permission_denied",
    errno.EPERM: "permission_denied",
    errno.ENOSPC: "no_space",
    errno.EDQUOT: "no_space",
    errno.ELOOP: "too_many_links",
    errno.ENAMETOOLONG: "invalid_path",
    errno.ENXIO: "not_a_regular_file",
    errno.EBUSY: "busy",
    errno.EINVAL: "invalid_path",
}


def os_error(e: OSError, path: str) -> OpError:
    code = _ERRNO_CODES.get(e.errno or 0, "io_error")
    hints = {
        "file_not_found": "check the path (relative paths start at /workspace)",
        "read_only": "that location is mounted read-only; write under /workspace or /tmp",
        "directory_not_empty": "pass recursive=true to remove a directory with its contents",
        "no_space": "the sandbox's disk quota is full; delete files or create it with more disk",
    }
    message = f"{path}: {e.strerror or e}"
    if code in hints:
        message += f"; {hints[code]}"
    return OpError(code, message)


def check_path(request: dict[str, Any], field: str = "path") -> str:
    value = request.get(field)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(field, "must be a non-empty string")
    if "\0" in value:
        raise InvalidRequest(field, "must not contain NUL characters")
    if len(value.encode(errors="surrogateescape")) > MAX_PATH_BYTES:
        raise InvalidRequest(field, f"is longer than {MAX_PATH_BYTES} bytes")
    return value


def resolve(agent: Agent, path: str) -> str:
    """The absolute, normalised path: relative paths start at the workspace."""
    return os.path.normpath(os.path.join(agent.workspace, path))


def _bool(request: dict[str, Any], field: str, default: bool = False) -> bool:
    value = request.get(field, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidRequest(field, "must be true or false")
    return value


def _type_of(mode: int) -> str:
    if st.S_ISREG(mode):
        return "file"
    if st.S_ISDIR(mode):
        return "directory"
    if st.S_ISLNK(mode):
        return "symlink"
    return "other"


def describe(path: str, name: str, rel: str, s: os.stat_result) -> dict[str, Any]:
    target = None
    if st.S_ISLNK(s.st_mode):
        try:
            target = os.readlink(path)
        except OSError:
            target = None
    return {
        "name": name,
        "path": rel,
        "absolute_path": path,
        "type": _type_of(s.st_mode),
        "size": s.st_size,
        "mode": st.S_IMODE(s.st_mode),
        "mtime": s.st_mtime,
        "target": target,
    }


# -- unary ops ---------------------------------------------------------------------------------


def stat_op(agent: Agent, request: dict[str, Any]) -> dict[str, Any]:
    path = resolve(agent, check_path(request))
    try:
        s = os.lstat(path)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR) and _bool(request, "missing_ok"):
            return {"ok": True, "exists": False}
        raise os_error(e, path) from None
    return {"ok": True, "exists": True, **describe(path, os.path.basename(path) or "/", path, s)}


def mkdir_op(agent: Agent, request: dict[str, Any]) -> dict[str, Any]:
    path = resolve(agent, check_path(request))
    mode = _mode(request, 0o755) or 0o755
    try:
        if _bool(request, "recursive"):
            os.makedirs(path, mode, exist_ok=True)
            if not os.path.isdir(path):
                raise OSError(errno.ENOTDIR, "exists and is not a directory")
        else:
            os.mkdir(path, mode)
    except OSError as e:
        raise os_error(e, path) from None
    return {"ok": True, "path": path}


def remove_op(agent: Agent, request: dict[str, Any]) -> dict[str, Any]:
    path = resolve(agent, check_path(request))
    if path == "/":
        raise OpError("invalid_path", "refusing to remove the sandbox's root directory")
    recursive = _bool(request, "recursive")
    only_files = _bool(request, "file_only")
    try:
        s = os.lstat(path)
        if st.S_ISDIR(s.st_mode):
            if only_files:
                raise OSError(errno.EISDIR, "is a directory; use remove(path, recursive=True)")
            if recursive:
                import shutil

                # NB: rmtree works with fds (openat/unlinkat) and never follows symlinks, so a
                # swapped-in link cannot redirect it.
                shutil.rmtree(path)
            else:
                os.rmdir(path)
        else:
            os.unlink(path)
    except OSError as e:
        raise os_error(e, e.filename or path) from None
    return {"ok": True, "path": path}


def move_op(agent: Agent, request: dict[str, Any]) -> dict[str, Any]:
    source = resolve(agent, check_path(request, "source"))
    destination = resolve(agent, check_path(request, "destination"))
    overwrite = _bool(request, "overwrite", True)
    try:
        os.lstat(source)
        if os.path.isdir(destination) and not os.path.islink(destination):
            if _bool(request, "into"):
                destination = os.path.join(destination, os.path.basename(source))
        if not overwrite and os.path.lexists(destination):
            raise OSError(errno.EEXIST, "destination exists", destination)
        try:
            os.rename(source, destination)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            import shutil

            shutil.move(source, destination)
    except OSError as e:
        raise os_error(e, e.filename or source) from None
    return {"ok": True, "path": destination}


def _mode(request: dict[str, Any], default: int | None) -> int | None:
    mode = request.get("mode")
    if mode is None:
        return default
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        raise InvalidRequest("mode", "must be an integer permission mode, e.g. 420 (0o644)")
    return mode


# -- streamed ops ------------------------------------------------------------------------------


class _StreamOp:
    """What every stream op shares: its connection, its id and its single RESULT."""

    def __init__(self, agent: Agent, conn: Connection, stream: int) -> None:
        self._agent = agent
        self._conn = conn
        self._stream = stream
        self.finished = False

    def _send_event(self, value: dict[str, Any]) -> None:
        self._conn.send(encode_json_frame(Kind.EVENT, self._stream, value))

    def _finish(self, result: dict[str, Any] | None = None, error: OpError | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        self._cleanup()
        if error is not None:
            body: dict[str, Any] = {"error": {"code": error.code, "message": error.message}}
        else:
            body = {"ok": True, **(result or {})}
        self._conn.send(encode_json_frame(Kind.RESULT, self._stream, body))
        self._conn.stream_finished(self._stream, self)  # type: ignore[arg-type]

    def _cleanup(self) -> None:
        pass

    def on_frame(self, kind: int, channel: int, payload: bytes) -> None:
        if kind == Kind.CANCEL:
            self.cancel()

    def cancel(self) -> None:
        self._finish(error=OpError("cancelled", "cancelled by the caller"))

    def terminate(self, sig: int) -> None:
        pass

    def connection_lost(self) -> None:
        self.finished = True
        self._cleanup()

    def pause_output(self) -> None:
        pass

    def resume_output(self) -> None:
        pass


class ReadOp(_StreamOp):
    """Send a file as DATA frames on channel 1, at most ``length`` bytes from ``offset``."""

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
        self._finish({"size": self._sent})

    def resume_output(self) -> None:
        if not self.finished:
            self._schedule()

    def _cleanup(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class WriteOp(_StreamOp):
    """Receive DATA frames on channel 0 into a temporary file; at EOF, rename it into place."""

    def __init__(self, agent: Agent, conn: Connection, stream: int, request: dict[str, Any]):
        super().__init__(agent, conn, stream)
        self._path = resolve(agent, check_path(request))
        self._mode = _mode(request, None)
        self._parents = _bool(request, "parents", True)
        self._fd = -1
        self._tmp: str | None = None
        self._size = 0

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
            parent = os.path.dirname(path)
            if self._parents:
                os.makedirs(parent, 0o755, exist_ok=True)
            mode = (
                self._mode
                if self._mode is not None
                else (st.S_IMODE(s.st_mode) if s is not None else 0o644)
            )
            tmp = os.path.join(parent, f".{os.path.basename(path)}.hutch-{os.urandom(6).hex()}")
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            self._fd = os.open(tmp, flags, 0o600)
            self._tmp = tmp
            os.fchmod(self._fd, mode)
            if s is not None:
                try:
                    os.fchown(self._fd, s.st_uid, s.st_gid)
                except OSError:
                    pass
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
            try:
                view = memoryview(payload)
                while view:
                    n = os.write(self._fd, view)
                    view = view[n:]
            except OSError as e:
                return self._finish(error=os_error(e, self._path))
            self._size += len(payload)
        elif kind == Kind.EOF:
            try:
                os.close(self._fd)
                self._fd = -1
                assert self._tmp is not None
                os.rename(self._tmp, self._path)
                self._tmp = None
            except OSError as e:
                return self._finish(error=os_error(e, self._path))
            self._finish({"path": self._path, "size": self._size})

    def _cleanup(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except OSError:
                pass
            self._tmp = None


class ListOp(_StreamOp):
    """Walk a directory (never following symlinks) and send its entries in EVENT batches."""

    def __init__(self, agent: Agent, conn: Connection, stream: int, request: dict[str, Any]):
        super().__init__(agent, conn, stream)
        self._path = resolve(agent, check_path(request))
        self._recursive = _bool(request, "recursive")
        self._hidden = _bool(request, "include_hidden")
        limit = request.get("limit", DEFAULT_LIST_LIMIT) or DEFAULT_LIST_LIMIT
        if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
            raise InvalidRequest("limit", "must be a positive integer")
        self._limit = limit

    def start(self) -> None:
        root = self._path
        batch: list[dict[str, Any]] = []
        count = 0
        truncated = False
        pending = [(root, "")]
        try:
            s = os.stat(root)
            if not st.S_ISDIR(s.st_mode):
                raise OSError(errno.ENOTDIR, "is not a directory; use stat or read_file")
        except OSError as e:
            return self._finish(error=os_error(e, root))
        while pending and not truncated:
            directory, rel_dir = pending.pop()
            try:
                it = os.scandir(directory)
            except OSError as e:
                if directory == root:
                    return self._finish(error=os_error(e, root))
                continue  # a subdirectory vanished or is unreadable: list what can be listed
            with it:
                for entry in it:
                    name = entry.name
                    if not self._hidden and name.startswith("."):
                        continue
                    rel = f"{rel_dir}/{name}" if rel_dir else name
                    try:
                        s = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    batch.append(describe(entry.path, name, rel, s))
                    count += 1
                    if self._recursive and st.S_ISDIR(s.st_mode):
                        pending.append((entry.path, rel))
                    if len(batch) >= LIST_BATCH:
                        self._send_batch(batch)
                        batch = []
                    if count >= self._limit:
                        truncated = True
                        break
        if batch:
            self._send_batch(batch)
        self._finish({"count": count, "truncated": truncated})

    def _send_batch(self, batch: list[dict[str, Any]]) -> None:
        # A JSON array per DATA frame: the server checks it and splices it into its answer
        # without building 10,000 objects again.
        import json

        payload = json.dumps(batch, separators=(",", ":")).encode()
        self._conn.send(encode_frame(Kind.DATA, self._stream, payload, Channel.STDOUT, 0))


def open_read(agent: Agent, conn: Connection, stream: int, request: dict[str, Any]) -> ReadOp:
    return ReadOp(agent, conn, stream, request)


def open_write(agent: Agent, conn: Connection, stream: int, request: dict[str, Any]) -> WriteOp:
    return WriteOp(agent, conn, stream, request)


def open_list(agent: Agent, conn: Connection, stream: int, request: dict[str, Any]) -> ListOp:
    return ListOp(agent, conn, stream, request)


def _is_pseudo(path: str) -> bool:
    """Whether `path` is a file of /proc or /sys, whose stat size says nothing of its content."""
    real = os.path.realpath(path)
    return real.startswith(("/proc/", "/sys/"))
