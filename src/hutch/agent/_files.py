"""File ops: stat, list, mkdir, remove, move, read (streamed), write (streamed).

The agent is PID 1 of the sandbox and its ``/`` is the sandbox's root, so every path it opens
resolves inside the sandbox's own mount namespace: ``..``, absolute symlinks and
``/proc/self/root`` all land in the sandbox, never on the host. The server never opens a
sandbox path itself. What is left to guard here is the API itself: a FIFO or a device must not
hang it (opened non-blocking and refused unless regular), a /proc file is read with a bound,
and a write goes to a temporary file first, so an aborted upload leaves the old file intact.

Here: paths, errors, entries and their extended attributes, the unary ops and list. Reading
and writing a file's contents (the streamed read and write) are in _file_transfer.py.
"""

from __future__ import annotations

import errno
import os
import stat as st

from hutch._wire.frames import Channel, Kind, encode_frame, encode_json_frame

from ._accounts import Names
from ._ops import OpError
from ._procs import Identity, resolve_user
from ._requests import InvalidRequest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from hutch._wire.agent_calls import ListResult
    from hutch._wire.agent_ops import FileEntry, FileType, PathResult, StatResult

    from ._server import Agent, Connection

MAX_PATH_BYTES = 4096
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


def _type_of(mode: int) -> FileType:
    if st.S_ISREG(mode):
        return "file"
    if st.S_ISDIR(mode):
        return "directory"
    if st.S_ISLNK(mode):
        return "symlink"
    return "other"


def describe(
    path: str,
    name: str,
    rel: str,
    s: os.stat_result,
    names: Names,
    xattr_prefix: str | None = None,
) -> FileEntry:
    target = None
    if st.S_ISLNK(s.st_mode):
        try:
            target = os.readlink(path)
        except OSError:
            target = None
    entry: FileEntry = {
        "name": name,
        "path": rel,
        "absolute_path": path,
        "type": _type_of(s.st_mode),
        "size": s.st_size,
        "mode": st.S_IMODE(s.st_mode),
        "mtime": s.st_mtime,
        "target": target,
        "owner": names.owner(s.st_uid),
        "group": names.group(s.st_gid),
    }
    if xattr_prefix is not None:
        entry["xattrs"] = read_xattrs(path, xattr_prefix)
    return entry


# -- extended attributes (E2B keeps file metadata in `user.e2b.*`) -----------------------------

MAX_XATTRS = 64
MAX_XATTR_NAME = 255  # the kernel's XATTR_NAME_MAX
MAX_XATTR_VALUE = 64 * 1024


def read_xattrs(path: str, prefix: str) -> dict[str, str]:
    """The `user.` attributes under `prefix`, prefix stripped; never follows a symlink."""
    found: dict[str, str] = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return found  # a filesystem without xattrs (proc, some FUSE) has no metadata
    for attr in names:
        if attr.startswith(prefix):
            try:
                value = os.getxattr(path, attr, follow_symlinks=False)
            except OSError:
                continue  # removed meanwhile
            found[attr[len(prefix) :]] = value.decode("utf-8", "replace")
    return found


def _xattr_prefix(request: dict[str, Any]) -> str | None:
    prefix = request.get("xattr_prefix")
    if prefix is None:
        return None
    if not isinstance(prefix, str) or not prefix.startswith("user."):
        raise InvalidRequest("xattr_prefix", "must be a string starting with 'user.'")
    return prefix


def _xattrs(request: dict[str, Any]) -> dict[str, bytes]:
    xattrs = request.get("xattrs") or {}
    if not isinstance(xattrs, dict) or len(xattrs) > MAX_XATTRS:
        raise InvalidRequest("xattrs", f"must be an object of at most {MAX_XATTRS} attributes")
    checked: dict[str, bytes] = {}
    for name, value in xattrs.items():
        # Only the `user.` namespace: `security.`/`trusted.` would be privileged knobs.
        if not isinstance(name, str) or not name.startswith("user.") or len(name) > MAX_XATTR_NAME:
            raise InvalidRequest("xattrs", "names must start with 'user.' (at most 255 bytes)")
        if not isinstance(value, str) or len(value.encode()) > MAX_XATTR_VALUE:
            raise InvalidRequest("xattrs", "values must be strings of at most 64 KiB")
        checked[name] = value.encode()
    return checked


def _owner(request: dict[str, Any]) -> Identity | None:
    """Who a new file or directory belongs to (`owner`: a user name or uid); None: the agent."""
    spec = request.get("owner")
    if spec is None:
        return None
    if not isinstance(spec, str) or not spec:
        raise InvalidRequest("owner", "must be a user name or numeric uid")
    try:
        return resolve_user(spec)
    except LookupError as e:
        raise OpError("user_not_found", str(e)) from None


def _made_dirs(path: str) -> list[str]:
    """The directories `os.makedirs(path)` would create, outermost first."""
    missing: list[str] = []
    while path and path != "/" and not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing[::-1]


def _chown_all(paths: list[str], owner: Identity | None) -> None:
    if owner is not None:
        for made in paths:
            os.chown(made, owner.uid, owner.gid, follow_symlinks=False)


# -- unary ops ---------------------------------------------------------------------------------


def stat_op(agent: Agent, request: dict[str, Any]) -> StatResult:
    path = resolve(agent, check_path(request))
    try:
        s = os.lstat(path)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR) and _bool(request, "missing_ok"):
            return {"ok": True, "exists": False}
        raise os_error(e, path) from None
    entry = describe(path, os.path.basename(path) or "/", path, s, Names(), _xattr_prefix(request))
    return {"ok": True, "exists": True, **entry}


def mkdir_op(agent: Agent, request: dict[str, Any]) -> PathResult:
    path = resolve(agent, check_path(request))
    mode = _mode(request, 0o755) or 0o755
    owner = _owner(request)
    try:
        if _bool(request, "recursive"):
            made = _made_dirs(path)
            os.makedirs(path, mode, exist_ok=True)
            if not os.path.isdir(path):
                raise OSError(errno.ENOTDIR, "exists and is not a directory")
        else:
            os.mkdir(path, mode)
            made = [path]
        _chown_all(made, owner)
    except OSError as e:
        raise os_error(e, path) from None
    return {"ok": True, "path": path}


def remove_op(agent: Agent, request: dict[str, Any]) -> PathResult:
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


def move_op(agent: Agent, request: dict[str, Any]) -> PathResult:
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


class ListOp(_StreamOp):
    """Walk a directory (never following symlinks) and send its entries in EVENT batches."""

    def send_result(self, result: ListResult) -> None:
        self._finish(dict(result))

    def __init__(self, agent: Agent, conn: Connection, stream: int, request: dict[str, Any]):
        super().__init__(agent, conn, stream)
        self._path = resolve(agent, check_path(request))
        self._recursive = _bool(request, "recursive")
        self._hidden = _bool(request, "include_hidden")
        self._xattr_prefix = _xattr_prefix(request)
        limit = request.get("limit", DEFAULT_LIST_LIMIT) or DEFAULT_LIST_LIMIT
        if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
            raise InvalidRequest("limit", "must be a positive integer")
        self._limit = limit

    def start(self) -> None:
        root = self._path
        batch: list[FileEntry] = []
        count = 0
        truncated = False
        pending = [(root, "")]
        names = Names()
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
                    batch.append(describe(entry.path, name, rel, s, names, self._xattr_prefix))
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
        self.send_result({"count": count, "truncated": truncated})

    def _send_batch(self, batch: list[FileEntry]) -> None:
        # A JSON array per DATA frame: the server checks it and splices it into its answer
        # without building 10,000 objects again.
        import json

        payload = json.dumps(batch, separators=(",", ":")).encode()
        self._conn.send(encode_frame(Kind.DATA, self._stream, payload, Channel.STDOUT, 0))


def open_list(agent: Agent, conn: Connection, stream: int, request: dict[str, Any]) -> ListOp:
    return ListOp(agent, conn, stream, request)
