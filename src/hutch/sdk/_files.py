"""Sans-I/O core of the file API: entries, watch events, request helpers, the watch decoder."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from hutch._wire.frames import Frame, FrameDecoder, FrameError, Kind
from hutch.sdk._exceptions import HutchConnectionError, api_error

UPLOAD_CHUNK = 1024 * 1024

FileType = Literal["file", "directory", "symlink", "other"]
WatchEventType = Literal["create", "modify", "delete", "move", "attrib", "overflow"]


@dataclass(frozen=True, slots=True)
class FileInfo:
    """One file, directory or link inside a sandbox.

    Attributes:
        name: The last component of the path.
        path: Relative to the listed directory (for ``stat``: the absolute path).
        absolute_path: The absolute path inside the sandbox.
        type: ``"file"``, ``"directory"``, ``"symlink"`` or ``"other"`` (FIFO, device, socket).
        size: Size in bytes.
        mode: Permission bits, e.g. ``0o644``.
        mtime: Last modification, seconds since the epoch.
        target: A symlink's target, else ``None``.
        owner: The owning user's name (the uid as text when the image has no such user).
        group: The owning group's name (the gid as text when the image has none).
    """

    name: str
    path: str
    absolute_path: str
    type: FileType
    size: int
    mode: int
    mtime: float
    target: str | None = None
    owner: str = ""
    group: str = ""

    @property
    def is_file(self) -> bool:
        return self.type == "file"

    @property
    def is_dir(self) -> bool:
        return self.type == "directory"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileInfo:
        return cls(
            name=data["name"],
            path=data["path"],
            absolute_path=data["absolute_path"],
            type=data["type"],
            size=data["size"],
            mode=data["mode"],
            mtime=data["mtime"],
            target=data.get("target"),
            owner=data.get("owner", ""),
            group=data.get("group", ""),
        )


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A change seen by :meth:`Sandbox.watch`.

    Attributes:
        type: ``"create"``, ``"modify"``, ``"delete"``, ``"move"``, ``"attrib"``, or
            ``"overflow"`` (the kernel dropped events: rescan).
        path: The absolute path that changed (for a move: the new path).
        is_directory: Whether it is a directory.
        old_path: For a move, the path it had before.
    """

    type: WatchEventType
    path: str
    is_directory: bool = False
    old_path: str | None = None


@dataclass(frozen=True, slots=True)
class GitCheckout:
    """Where :meth:`Sandbox.git_checkout` put the repository, and at which commit."""

    path: str
    url: str
    branch: str | None
    commit: str


class WatchStreamDecoder:
    """Turns the body of ``files/watch`` into :class:`WatchEvent` values."""

    __slots__ = ("_frames", "finished")

    def __init__(self) -> None:
        self._frames = FrameDecoder()
        self.finished = False

    def feed(self, data: bytes) -> list[WatchEvent]:
        if self.finished:
            return []
        try:
            frames = self._frames.feed(data)
        except FrameError as exc:
            raise HutchConnectionError(f"the server sent a malformed watch stream: {exc}") from exc
        events: list[WatchEvent] = []
        for frame in frames:
            if frame.kind is Kind.EVENT:
                body = _json(frame)
                kind = body.get("event")
                if kind in ("create", "modify", "delete", "move", "attrib", "overflow"):
                    events.append(
                        WatchEvent(
                            kind,
                            str(body.get("path")),
                            bool(body.get("is_directory")),
                            body.get("old_path"),
                        )
                    )
            elif frame.kind is Kind.RESULT:
                self.finished = True
                error = _json(frame).get("error")
                if isinstance(error, dict):
                    raise api_error(str(error.get("code")), str(error.get("message")))
                break
        return events


def _json(frame: Frame) -> dict[str, Any]:
    try:
        return frame.json()
    except ValueError as exc:
        raise HutchConnectionError(f"the server sent a malformed watch event: {exc}") from exc


def bool_param(value: bool) -> str:
    return "true" if value else "false"
