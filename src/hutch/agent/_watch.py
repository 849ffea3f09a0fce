"""The ``watch`` stream: inotify events as EVENT frames until the opener cancels.

inotify is reached through ctypes and libc (glibc or musl), so the agent needs nothing from
the image: no inotify-tools, no shell.
"""

from __future__ import annotations

import errno
import os
import re
import stat as st
import struct

from . import _recent_writes as recent_writes
from ._files import _bool, _StreamOp, check_path, os_error, resolve
from ._ops import OpError
from ._requests import InvalidRequest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from hutch._wire.agent_calls import WatchResult

    from ._server import Agent, Connection

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
# write_file's temporary file (agent/_file_transfer.py): `.NAME.hutch-<12 hex>`, renamed onto NAME.
_WRITE_TEMP = re.compile(r"\.(?P<name>.+)\.hutch-[0-9a-f]{12}")
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x1000000
IN_DONT_FOLLOW = 0x2000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)
_EVENT = struct.Struct("iIII")
MAX_WATCHES = 8192
_libc: Any = None


def _inotify() -> Any:
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.inotify_add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
    return _libc


def _glob_list(request: dict[str, Any], field: str) -> list[str]:
    value = request.get(field) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(field, "must be a list of glob patterns")
    return value


class WatchOp(_StreamOp):
    def send_result(self, result: WatchResult) -> None:
        self._finish(dict(result))

    def __init__(self, agent: Agent, conn: Connection, stream: int, request: dict[str, Any]):
        super().__init__(agent, conn, stream)
        self._root = resolve(agent, check_path(request))
        self._recursive = _bool(request, "recursive", True)
        self._include = _glob_list(request, "include")
        self._exclude = _glob_list(request, "exclude")
        self._fd = -1
        self._wds: dict[int, str] = {}
        self._moves: dict[int, tuple[str, bool]] = {}
        self._temps: dict[str, bool] = {}  # write_file's temp -> whether its target existed
        self._buf = b""

    def start(self) -> None:
        try:
            s = os.stat(self._root)
        except OSError as e:
            return self._finish(error=os_error(e, self._root))
        if not st.S_ISDIR(s.st_mode):
            return self._finish(
                error=OpError("not_a_directory", f"{self._root} is not a directory; watch one")
            )
        libc = _inotify()
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            code = __import__("ctypes").get_errno()
            return self._finish(error=OpError("io_error", f"inotify_init1 failed: errno {code}"))
        self._fd = fd
        self._add_tree(self._root)
        self._send_event({"event": "watching", "path": self._root})
        if not self._conn.output_paused:
            self._agent.loop.add_reader(fd, self._on_readable)

    def _add(self, path: str) -> None:
        if len(self._wds) >= MAX_WATCHES:
            return
        # NB: the root the caller named may be a symlink to a directory (start() checked that
        # it resolves to one): follow it, or the watch is silently dead. Links found inside
        # are not followed, so a link cannot widen the watch.
        dont_follow = 0 if path == self._root else IN_DONT_FOLLOW
        wd = _libc.inotify_add_watch(self._fd, os.fsencode(path), MASK | IN_ONLYDIR | dont_follow)
        if wd >= 0:
            self._wds[wd] = path

    def _add_tree(self, path: str) -> None:
        self._add(path)
        if not self._recursive:
            return
        for dirpath, dirnames, _ in os.walk(path):
            for name in dirnames:
                self._add(os.path.join(dirpath, name))

    def _wanted(self, path: str) -> bool:
        from fnmatch import fnmatchcase

        rel = os.path.relpath(path, self._root)
        name = os.path.basename(path)

        def match(patterns: list[str]) -> bool:
            return any(fnmatchcase(rel, p) or fnmatchcase(name, p) for p in patterns)

        if self._include and not match(self._include):
            return False
        return not match(self._exclude)

    def _emit(self, kind: str, path: str, is_dir: bool, old: str | None = None) -> None:
        if not self._wanted(path) and (old is None or not self._wanted(old)):
            return
        event: dict[str, Any] = {"event": kind, "path": path, "is_directory": is_dir}
        if old is not None:
            event["old_path"] = old
        self._send_event(event)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, 64 * 1024)
        except OSError as e:
            if e.errno == errno.EAGAIN:
                return
            return self._finish(error=os_error(e, self._root))
        pos = 0
        while pos + _EVENT.size <= len(data):
            wd, mask, cookie, length = _EVENT.unpack_from(data, pos)
            raw = data[pos + _EVENT.size : pos + _EVENT.size + length].rstrip(b"\0")
            pos += _EVENT.size + length
            self._handle(wd, mask, cookie, os.fsdecode(raw))
        self._flush_moves()

    def _handle(self, wd: int, mask: int, cookie: int, name: str) -> None:
        base = self._wds.get(wd)
        if base is not None and name and _WRITE_TEMP.fullmatch(name):
            return self._handle_write_temp(base, mask, cookie, name)
        self._handle_event(wd, mask, cookie, name)

    def _handle_write_temp(self, base: str, mask: int, cookie: int, name: str) -> None:
        """write_file writes `.NAME.hutch-XXXX` and renames it onto NAME: the watcher sees
        NAME created (or modified, if it existed when the write began), never the temp."""
        temp = os.path.join(base, name)
        final = os.path.join(base, _WRITE_TEMP.fullmatch(name)["name"])  # type: ignore[index]
        if mask & IN_CREATE:
            self._temps[temp] = os.path.lexists(final)
        elif mask & IN_MOVED_FROM:
            self._moves[cookie] = (temp, False)
        elif mask & IN_MOVED_TO:
            # A big write swaps NAME's old file onto its temp name (RENAME_EXCHANGE) and
            # unlinks it there: NAME was modified, not moved away.
            self._moves.pop(cookie, None)
        elif mask & IN_DELETE:
            self._temps.pop(temp, None)  # a write that failed, or the old file of a swap

    def _handle_event(self, wd: int, mask: int, cookie: int, name: str) -> None:
        if mask & IN_Q_OVERFLOW:
            self._send_event({"event": "overflow", "path": self._root, "is_directory": True})
            return
        base = self._wds.get(wd)
        if base is None:
            return
        if mask & IN_IGNORED:
            del self._wds[wd]
            if base == self._root:
                return self.send_result({"reason": "the watched directory was removed"})
            return
        if not name:  # an event on the watched directory itself
            return
        path = os.path.join(base, name)
        is_dir = bool(mask & IN_ISDIR)
        if mask & IN_CREATE:
            if is_dir and self._recursive:
                self._add_tree(path)
            self._emit("create", path, is_dir)
            if is_dir and self._recursive:
                self._emit_found(path)
        if mask & (IN_MODIFY | IN_CLOSE_WRITE) and not is_dir:
            if mask & IN_MODIFY:
                self._emit("modify", path, is_dir)
        if mask & IN_ATTRIB:
            self._emit("attrib", path, is_dir)
        if mask & IN_DELETE:
            self._emit("delete", path, is_dir)
        if mask & IN_MOVED_FROM:
            self._moves[cookie] = (path, is_dir)
        if mask & IN_MOVED_TO:
            source = self._moves.pop(cookie, None)
            if is_dir and self._recursive:
                self._add_tree(path)
            known = recent_writes.target_existed(source[0]) if source is not None else None
            if source is not None and known is not None:
                self._temps.pop(source[0], None)
                self._emit("modify" if known else "create", path, is_dir)
            elif source is not None and source[0] in self._temps:
                existed = self._temps.pop(source[0])
                self._emit("modify" if existed else "create", path, is_dir)
            elif source is not None and _WRITE_TEMP.fullmatch(os.path.basename(source[0])):
                self._emit("create", path, is_dir)  # its write began before the watch
            elif source is not None:
                self._emit("move", path, is_dir, old=source[0])
            else:
                self._emit("create", path, is_dir)

    def _emit_found(self, path: str) -> None:
        """What a new directory already holds once it is watched. A tree made at once
        (`mkdir -p a/b && echo x > a/b/f`) exists before this watcher handles `a`'s create,
        so inotify never reports `a/b` nor `f`: they are reported here, a file with content
        as created and modified. An entry made between the watch and this walk may be
        reported twice; none is missed."""
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames:
                self._emit("create", os.path.join(dirpath, name), True)
            for name in filenames:
                if _WRITE_TEMP.fullmatch(name):
                    continue  # a write in progress: its rename onto NAME is still to come
                full = os.path.join(dirpath, name)
                self._emit("create", full, False)
                try:
                    written = os.lstat(full).st_size > 0
                except OSError:
                    continue
                if written:
                    self._emit("modify", full, False)

    def _flush_moves(self) -> None:
        # A move out of the watched tree has no MOVED_TO: to the watcher, it is a delete.
        for path, is_dir in self._moves.values():
            self._emit("delete", path, is_dir)
        self._moves.clear()

    def pause_output(self) -> None:
        # Nobody is reading the events: leave them in the kernel's queue (which overflows into
        # one "overflow" event) rather than in the agent's memory.
        if self._fd >= 0:
            self._agent.loop.remove_reader(self._fd)

    def resume_output(self) -> None:
        if self._fd >= 0 and not self.finished:
            self._agent.loop.add_reader(self._fd, self._on_readable)

    def cancel(self) -> None:
        self.send_result({"reason": "cancelled"})

    def _cleanup(self) -> None:
        if self._fd >= 0:
            self._agent.loop.remove_fd(self._fd)
            os.close(self._fd)
            self._fd = -1


def open_watch(agent: Agent, conn: Connection, stream: int, request: dict[str, Any]) -> WatchOp:
    return WatchOp(agent, conn, stream, request)
