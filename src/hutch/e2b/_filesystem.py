"""envd's ``filesystem.Filesystem`` service on the agent's file ops (stat, mkdir, move,
list, remove, watch)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import posixpath
import secrets
import stat as stat_module
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from e2b.envd.filesystem import filesystem_pb as pb
from e2b.envd.filesystem.filesystem_connect import Filesystem
from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from hutch._wire import Kind
from hutch._wire.agent_ops import OpName
from hutch.e2b._errors import connect_error
from hutch.e2b._identity import DEFAULT_USER, Users, in_home, sandbox_of, user_of
from hutch.e2b._oneof import oneof
from hutch.node import AgentConnection, AgentError, AgentStream, parse_result
from hutch.server.routes import Services

R = TypeVar("R")
METADATA_XATTR = "user.e2b."  # envd keeps a file's metadata in these extended attributes
WATCH_KEEPALIVE = 30.0
MAX_WATCHER_EVENTS = 10_000
DRAIN_GRACE_STEPS = 10  # x 10 ms

_FILE_TYPES = {
    "file": pb.FileType.FILE,
    "directory": pb.FileType.DIRECTORY,
    "symlink": pb.FileType.SYMLINK,
}
_TYPE_BITS = {"file": stat_module.S_IFREG, "directory": stat_module.S_IFDIR}
_EVENT_TYPES = {
    "create": pb.EventType.CREATE,
    "modify": pb.EventType.WRITE,
    "delete": pb.EventType.REMOVE,
    "move": pb.EventType.RENAME,
    "attrib": pb.EventType.CHMOD,
}


def entry_info(entry: dict[str, Any], target: dict[str, Any] | None = None) -> pb.EntryInfo:
    """An agent FileEntry as envd's EntryInfo (``path`` absolute, as envd gives it). For a
    symlink, envd gives the type of what it points to and the target's absolute path."""
    kind = str(entry.get("type"))
    link = None
    if kind == "symlink" and target is not None and target.get("exists"):
        kind = str(target.get("type"))
        link = str(target["absolute_path"])
    mode = int(entry.get("mode") or 0)
    mtime = float(entry.get("mtime") or 0.0)
    seconds = int(mtime)
    target_path = entry.get("target")
    return pb.EntryInfo(
        name=str(entry.get("name") or posixpath.basename(str(entry["absolute_path"]))),
        type=_FILE_TYPES.get(kind, pb.FileType.FILE),
        path=str(entry["absolute_path"]),
        size=int(entry.get("size") or 0),
        mode=mode,
        permissions=stat_module.filemode(mode | _TYPE_BITS.get(kind, stat_module.S_IFLNK)),
        owner=str(entry.get("owner") or ""),
        group=str(entry.get("group") or ""),
        modified_time=Timestamp(seconds=seconds, nanos=int((mtime - seconds) * 1e9)),
        symlink_target=link or (str(target_path) if target_path else None),
        is_symlink=link is not None or kind == "symlink",
        metadata=entry.get("xattrs") or {},
    )


def _depth(relative: str) -> int:
    return relative.strip("/").count("/") + 1


class FilesystemService(Filesystem):
    """Implements e2b.envd.filesystem.filesystem_connect.Filesystem."""

    def __init__(self, svc: Services, users: Users) -> None:
        self._svc = svc
        self._users = users
        self._watchers: dict[str, _Watcher] = {}

    async def _guard(self, sandbox_id: str, work: Awaitable[R]) -> R:
        try:
            return await work
        except Exception as exc:  # every failure leaves as a Connect error
            raise connect_error(exc, sandbox_id) from exc

    async def _call(self, sandbox_id: str, op: OpName, **args: Any) -> dict[str, Any]:
        # NB: `op` passes through untyped; routes/ call `agent_call` with literal ops.
        # NB: `op` passes through untyped here (one forwarding helper); the rest of this module's
        # use of the services is checked.
        call: Callable[..., Awaitable[Any]] = self._svc.sandboxes.agent_call(sandbox_id)
        result: dict[str, Any] = await call(op, **args)
        return result

    async def _stat(self, sandbox_id: str, path: str) -> pb.EntryInfo:
        path = _check_path(path)
        entry = await self._call(sandbox_id, "stat", path=path, xattr_prefix=METADATA_XATTR)
        target = None
        if entry.get("type") == "symlink" and entry.get("target"):
            resolved = posixpath.normpath(
                posixpath.join(posixpath.dirname(path), str(entry["target"]))
            )
            target = await self._call(sandbox_id, "stat", path=resolved, missing_ok=True)
        return entry_info(entry, target)

    async def stat(self, request: pb.StatRequest, ctx: RequestContext[Any, Any]) -> pb.StatResponse:
        sandbox_id = sandbox_of(ctx.request_headers)
        entry = await self._guard(sandbox_id, self._stat(sandbox_id, request.path))
        return pb.StatResponse(entry=entry)

    async def make_dir(
        self, request: pb.MakeDirRequest, ctx: RequestContext[Any, Any]
    ) -> pb.MakeDirResponse:
        sandbox_id = sandbox_of(ctx.request_headers)

        async def make() -> pb.EntryInfo:
            path = _check_path(request.path)
            found = await self._call(sandbox_id, "stat", path=path, missing_ok=True)
            if found.get("exists"):
                # envd answers ALREADY_EXISTS; the SDKs turn it into make_dir() -> False.
                raise ConnectError(Code.ALREADY_EXISTS, f"path {path} already exists")
            user = self._users.effective(sandbox_id, user_of(ctx.request_headers))
            try:
                await self._call(sandbox_id, "mkdir", path=path, recursive=True, owner=user)
            except AgentError as exc:
                if exc.code != "user_not_found" or user != DEFAULT_USER:
                    raise
                self._users.mark_missing(sandbox_id)  # no E2B `user` here: the image's own
                await self._call(sandbox_id, "mkdir", path=path, recursive=True)
            return await self._stat(sandbox_id, path)

        return pb.MakeDirResponse(entry=await self._guard(sandbox_id, make()))

    async def move(self, request: pb.MoveRequest, ctx: RequestContext[Any, Any]) -> pb.MoveResponse:
        sandbox_id = sandbox_of(ctx.request_headers)

        async def move() -> pb.EntryInfo:
            moved = await self._call(
                sandbox_id,
                "move",
                source=_check_path(request.source),
                destination=_check_path(request.destination),
                overwrite=True,
            )
            return await self._stat(sandbox_id, str(moved["path"]))

        return pb.MoveResponse(entry=await self._guard(sandbox_id, move()))

    async def remove(
        self, request: pb.RemoveRequest, ctx: RequestContext[Any, Any]
    ) -> pb.RemoveResponse:
        sandbox_id = sandbox_of(ctx.request_headers)

        async def remove() -> None:
            path = _check_path(request.path)
            try:
                await self._call(sandbox_id, "remove", path=path, recursive=True)
            except AgentError as exc:
                if exc.code != "file_not_found":  # envd's remove of nothing succeeds
                    raise

        await self._guard(sandbox_id, remove())
        return pb.RemoveResponse()

    async def list_dir(
        self, request: pb.ListDirRequest, ctx: RequestContext[Any, Any]
    ) -> pb.ListDirResponse:
        sandbox_id = sandbox_of(ctx.request_headers)
        depth = request.depth or 1
        return pb.ListDirResponse(
            entries=await self._guard(sandbox_id, self._list(sandbox_id, request.path, depth))
        )

    async def _list(self, sandbox_id: str, path: str, depth: int) -> list[pb.EntryInfo]:
        path = _check_path(path)
        top = await self._call(sandbox_id, "stat", path=path)
        if top.get("type") != "directory":
            raise ConnectError(Code.INVALID_ARGUMENT, f"path {path} is not a directory")
        stream: AgentStream = await self._svc.sandboxes.open_stream(
            sandbox_id,
            {
                "op": "list",
                "path": path,
                "recursive": depth > 1,
                "include_hidden": True,
                "xattr_prefix": METADATA_XATTR,
            },
        )
        entries: list[dict[str, Any]] = []

        async for frame in stream:
            if frame.kind is Kind.DATA:
                for entry in json.loads(frame.payload):
                    if _depth(str(entry["path"])) <= depth:
                        entries.append(entry)
            elif frame.kind is Kind.RESULT:
                parse_result(frame)
                break
        # envd walks in lexical order of the path.
        return [entry_info(e) for e in sorted(entries, key=lambda e: str(e["absolute_path"]))]

    # -- watching -------------------------------------------------------------------------

    async def _open_watch(
        self, sandbox_id: str, path: str, recursive: bool
    ) -> tuple[AgentConnection, AgentStream, str]:
        path = _check_path(path)
        top = await self._call(sandbox_id, "stat", path=path)
        if top.get("type") != "directory":
            raise ConnectError(Code.INVALID_ARGUMENT, f"path {path} is not a directory")
        # A connection of its own: a watch nobody reads must not stall the shared one.
        conn: AgentConnection
        stream: AgentStream
        conn, stream = await self._svc.sandboxes.open_own(
            sandbox_id, {"op": "watch", "path": path, "recursive": recursive}
        )
        try:
            async for frame in stream:
                if frame.kind is Kind.EVENT and frame.json().get("event") == "watching":
                    return conn, stream, str(frame.json().get("path") or path)
                if frame.kind is Kind.RESULT:
                    parse_result(frame)
                    break
        except BaseException:
            await conn.close()
            raise
        await conn.close()
        raise AgentError("bad_response", "the watch ended before it started")

    async def watch_dir(
        self, request: pb.WatchDirRequest, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[pb.WatchDirResponse]:
        sandbox_id = sandbox_of(ctx.request_headers)
        conn, stream, root = await self._guard(
            sandbox_id, self._open_watch(sandbox_id, request.path, request.recursive)
        )
        try:
            yield pb.WatchDirResponse(event=oneof("start", pb.WatchDirResponse.StartEvent()))
            frames = stream.__aiter__()
            while True:
                try:
                    frame = await asyncio.wait_for(frames.__anext__(), WATCH_KEEPALIVE)
                except TimeoutError:
                    keepalive = pb.WatchDirResponse.KeepAlive()
                    yield pb.WatchDirResponse(event=oneof("keepalive", keepalive))
                    continue
                except StopAsyncIteration:
                    return
                if frame.kind is Kind.RESULT:
                    return
                event = _fs_event(frame.json(), root) if frame.kind is Kind.EVENT else None
                if event is not None and request.include_entry:
                    event = await self._with_entry(sandbox_id, root, event)
                if event is not None:
                    yield pb.WatchDirResponse(event=oneof("filesystem", event))
        except AgentError as exc:
            raise connect_error(exc, sandbox_id) from exc
        finally:
            with contextlib.suppress(Exception):
                await stream.cancel()
            await conn.close()

    async def create_watcher(
        self, request: pb.CreateWatcherRequest, ctx: RequestContext[Any, Any]
    ) -> pb.CreateWatcherResponse:
        sandbox_id = sandbox_of(ctx.request_headers)
        conn, stream, root = await self._guard(
            sandbox_id, self._open_watch(sandbox_id, request.path, request.recursive)
        )
        watcher_id = secrets.token_hex(8)
        enrich = (
            (lambda e: self._with_entry(sandbox_id, root, e)) if request.include_entry else None
        )
        self._watchers[watcher_id] = _Watcher(sandbox_id, root, conn, stream, enrich)
        return pb.CreateWatcherResponse(watcher_id=watcher_id)

    async def _with_entry(
        self, sandbox_id: str, root: str, event: pb.FilesystemEvent
    ) -> pb.FilesystemEvent:
        """envd's best-effort entry: the path's info if it still exists."""
        if event.type is pb.EventType.REMOVE:
            return event
        with contextlib.suppress(AgentError):
            path = posixpath.join(root, event.name)
            found = await self._call(sandbox_id, "stat", path=path, missing_ok=True)
            if found.get("exists"):
                return pb.FilesystemEvent(name=event.name, type=event.type, entry=entry_info(found))
        return event

    def _watcher(self, ctx: RequestContext[Any, Any], watcher_id: str) -> _Watcher:
        watcher = self._watchers.get(watcher_id)
        if watcher is None or watcher.sandbox_id != sandbox_of(ctx.request_headers):
            raise ConnectError(Code.NOT_FOUND, f"watcher {watcher_id} not found")
        return watcher

    async def get_watcher_events(
        self, request: pb.GetWatcherEventsRequest, ctx: RequestContext[Any, Any]
    ) -> pb.GetWatcherEventsResponse:
        watcher = self._watcher(ctx, request.watcher_id)
        return pb.GetWatcherEventsResponse(events=await watcher.drain())

    async def remove_watcher(
        self, request: pb.RemoveWatcherRequest, ctx: RequestContext[Any, Any]
    ) -> pb.RemoveWatcherResponse:
        watcher = self._watcher(ctx, request.watcher_id)
        del self._watchers[request.watcher_id]
        await watcher.close()
        return pb.RemoveWatcherResponse()


class _Watcher:
    """A watch whose events wait for GetWatcherEvents (the sync SDK polls)."""

    def __init__(
        self,
        sandbox_id: str,
        path: str,
        conn: AgentConnection,
        stream: AgentStream,
        enrich: Callable[[pb.FilesystemEvent], Awaitable[pb.FilesystemEvent]] | None = None,
    ) -> None:
        self.sandbox_id = sandbox_id
        self._enrich = enrich
        self._path = path
        self._conn = conn
        self._stream = stream
        self._events: list[pb.FilesystemEvent] = []
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        with contextlib.suppress(AgentError):
            async for frame in self._stream:
                if frame.kind is Kind.RESULT:
                    return
                if frame.kind is Kind.EVENT:
                    event = _fs_event(frame.json(), self._path)
                    if event is not None and self._enrich is not None:
                        event = await self._enrich(event)
                    if event is not None and len(self._events) < MAX_WATCHER_EVENTS:
                        self._events.append(event)

    async def drain(self) -> list[pb.FilesystemEvent]:
        # NB: a poll right after a write may beat the watch's event by a few ms (inotify,
        # then the agent, then here); wait a moment for it rather than answer empty.
        for _ in range(DRAIN_GRACE_STEPS):
            if self._events or self._task.done():
                break
            await asyncio.sleep(0.01)
        events, self._events = self._events, []
        return events

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._stream.cancel()
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task
        await self._conn.close()


def _fs_event(event: dict[str, Any], root: str) -> pb.FilesystemEvent | None:
    kind = _EVENT_TYPES.get(str(event.get("event")))
    if kind is None:
        return None
    # NB: the agent's watch already reports a write_file by its final name (agent/_watch.py).
    path = str(event.get("path") or "")
    name = posixpath.relpath(path, root) if path.startswith("/") else path
    return pb.FilesystemEvent(name=name, type=kind)


def _check_path(path: str) -> str:
    if not path or "\0" in path:
        raise ConnectError(Code.INVALID_ARGUMENT, f"invalid path {path!r}: give a file path")
    return in_home(path)
