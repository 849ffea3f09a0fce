"""Files in a sandbox: streamed reads and writes, listing, watching, and git checkouts."""

from __future__ import annotations

import builtins
import posixpath
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import IO, Any, Literal, overload

from hutch.sdk._async.client import AsyncClient
from hutch.sdk._files import (
    UPLOAD_CHUNK,
    FileInfo,
    GitCheckout,
    WatchEvent,
    WatchStreamDecoder,
    bool_param,
)

WriteData = str | bytes | bytearray | memoryview | IO[bytes] | IO[str] | Iterable[bytes]
"""What :meth:`Files.write` takes: text (UTF-8), bytes, a file opened for reading, or an
iterator of byte chunks. Anything but text and bytes is streamed, never held whole."""


async def _chunks(data: Any, chunk_size: int) -> AsyncIterator[bytes]:
    if hasattr(data, "read"):
        while True:
            chunk = data.read(chunk_size)
            if not chunk:
                return
            yield chunk.encode() if isinstance(chunk, str) else bytes(chunk)
    else:
        for chunk in data:
            yield chunk.encode() if isinstance(chunk, str) else bytes(chunk)


async def _slices(view: memoryview, chunk_size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(view), chunk_size):
        yield bytes(view[start : start + chunk_size])


class Files:
    """The file operations of one sandbox (also reachable as methods of the sandbox).

    Relative paths start at ``/workspace``. Every path resolves inside the sandbox.
    """

    def __init__(self, client: AsyncClient, sandbox_path: str) -> None:
        self.client = client
        self._path = sandbox_path

    async def write(
        self,
        path: str,
        data: WriteData,
        *,
        mode: int | None = None,
        make_parents: bool = True,
        chunk_size: int = UPLOAD_CHUNK,
    ) -> int:
        """Write a file, replacing it atomically once all of ``data`` has arrived.

        Args:
            path: The file's path (relative paths start at ``/workspace``).
            data: Text (written as UTF-8), bytes, a readable file object or an iterator of
                bytes. File objects and iterators are streamed: any size works.
            mode: Permission bits for the file, e.g. ``0o755``; by default an existing file
                keeps its mode and a new one gets ``0o644``.
            make_parents: Create missing parent directories.
            chunk_size: Bytes read from a file object at a time.

        Returns:
            The number of bytes written.

        Raises:
            Conflict: ``path`` is a directory (``is_a_directory``), under a read-only mount
                (``read_only``), or a parent is a file (``not_a_directory``).
            FileNotFound: A parent directory is missing and ``make_parents`` is false.
            InvalidRequest: The path is empty, has a NUL or is longer than 4096 bytes.
        """
        if isinstance(data, str):
            content: Any = data.encode()
        elif isinstance(data, bytes | bytearray | memoryview):
            # NB: a large body in one piece is slow to send (measured: 256 MiB at 39-66 MB/s
            # against 175-208 MB/s for the same bytes from a file object); slices of it go
            # out as the streamed upload does, without copying it first.
            content = _slices(memoryview(data).cast("B"), chunk_size) if data else b""
        else:
            content = _chunks(data, chunk_size)
        params = {"path": path, "parents": bool_param(make_parents)}
        if mode is not None:
            params["mode"] = str(mode)
        body = await self.client.request(
            "PUT", f"{self._path}/files/content", params=params, content=content
        )
        return int(body["size"])

    @overload
    async def read(
        self,
        path: str,
        *,
        text: Literal[True] = True,
        format: Literal["text"] = "text",
        offset: int = 0,
        length: int | None = None,
    ) -> str: ...

    @overload
    async def read(
        self,
        path: str,
        *,
        text: Literal[False],
        format: Literal["text", "bytes"] = "text",
        offset: int = 0,
        length: int | None = None,
    ) -> bytes: ...

    @overload
    async def read(
        self,
        path: str,
        *,
        text: bool = True,
        format: Literal["bytes"],
        offset: int = 0,
        length: int | None = None,
    ) -> bytes: ...

    async def read(
        self,
        path: str,
        *,
        text: bool = True,
        format: Literal["text", "bytes"] = "text",
        offset: int = 0,
        length: int | None = None,
    ) -> bytes | str:
        """A file's text, as E2B's ``files.read`` returns it (or its bytes: ``text=False`` or
        ``format="bytes"``; ``sb.read_file`` returns bytes unless asked for text).

        Args:
            path: The file's path.
            text: Decode as UTF-8 (invalid bytes are replaced); ``False`` returns bytes.
            format: E2B's spelling: ``"text"`` or ``"bytes"``.
            offset: The first byte to read.
            length: How many bytes at most; ``None`` reads to the end.

        Raises:
            FileNotFound: No such file.
            Conflict: It is a directory (``is_a_directory``) or not a regular file, e.g. a
                FIFO or a device (``not_a_regular_file``).
        """
        params = {"path": path, "offset": str(offset)}
        if length is not None:
            params["length"] = str(length)
        data = await self.client.read_all("GET", f"{self._path}/files/content", params=params)
        as_text = text and format == "text"
        return data.decode(errors="replace") if as_text else data

    async def read_stream(
        self, path: str, *, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """Yield a file's bytes as they arrive, for files too large to hold in memory.

        Args:
            path: The file's path.
            offset: The first byte to read.
            length: How many bytes at most; ``None`` reads to the end.

        Raises:
            FileNotFound: No such file.
            Conflict: It is a directory or not a regular file.
        """
        params = {"path": path, "offset": str(offset)}
        if length is not None:
            params["length"] = str(length)
        async with self.client.stream(
            "GET", f"{self._path}/files/content", params=params
        ) as chunks:
            async for chunk in chunks:
                yield chunk

    async def mkdir(self, path: str, *, recursive: bool = False, mode: int | None = None) -> str:
        """Create a directory; with ``recursive``, its parents too (and no error if it exists).

        Returns:
            The directory's absolute path.
        """
        body = await self.client.request(
            "POST",
            f"{self._path}/files/mkdir",
            json={"path": path, "recursive": recursive, "mode": mode},
        )
        return str(body["path"])

    async def delete(self, path: str) -> None:
        """Delete a file or a symlink (a directory is refused: use :meth:`remove`).

        Raises:
            FileNotFound: No such file.
            Conflict: It is a directory (``is_a_directory``).
        """
        await self.client.request(
            "DELETE", f"{self._path}/files", params={"path": path, "file_only": "true"}
        )

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        """Delete a file or a directory (with its contents when ``recursive``).

        Raises:
            FileNotFound: No such path.
            Conflict: A non-empty directory without ``recursive`` (``directory_not_empty``).
        """
        await self.client.request(
            "DELETE",
            f"{self._path}/files",
            params={"path": path, "recursive": bool_param(recursive)},
        )

    async def rename(self, source: str, destination: str, *, overwrite: bool = True) -> str:
        """Rename (or move) ``source`` to exactly ``destination``.

        Returns:
            The new absolute path.
        """
        body = await self.client.request(
            "POST",
            f"{self._path}/files/move",
            json={"source": source, "destination": destination, "overwrite": overwrite},
        )
        return str(body["path"])

    async def move(self, source: str, destination: str, *, overwrite: bool = True) -> str:
        """Move ``source``; when ``destination`` ends with ``/`` it is the directory to move
        into (keeping the name), otherwise the new path.

        Returns:
            The new absolute path.
        """
        if destination.endswith("/"):
            destination = posixpath.join(destination, posixpath.basename(source.rstrip("/")))
        return await self.rename(source, destination, overwrite=overwrite)

    async def list(
        self, path: str = ".", *, recursive: bool = False, include_hidden: bool = False
    ) -> builtins.list[FileInfo]:
        """The entries of a directory (of its whole tree with ``recursive``).

        Symlinks are listed, never followed. Names starting with ``.`` are left out unless
        ``include_hidden``.

        Raises:
            FileNotFound: No such directory.
            Conflict: It is a file (``not_a_directory``).
        """
        body = await self.client.request(
            "GET",
            f"{self._path}/files/list",
            params={
                "path": path,
                "recursive": bool_param(recursive),
                "include_hidden": bool_param(include_hidden),
            },
        )
        return [FileInfo.from_json(e) for e in body["entries"]]

    async def exists(self, path: str) -> bool:
        """Whether anything (file, directory, link) is at ``path``."""
        body = await self.client.request("GET", f"{self._path}/files/exists", params={"path": path})
        return bool(body["exists"])

    async def stat(self, path: str) -> FileInfo:
        """What is at ``path`` (a symlink is described, not followed).

        Raises:
            FileNotFound: Nothing is there.
        """
        body = await self.client.request("GET", f"{self._path}/files/stat", params={"path": path})
        return FileInfo.from_json(body)

    async def watch(
        self,
        path: str = ".",
        *,
        recursive: bool = True,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> AsyncIterator[WatchEvent]:
        """Yield changes under a directory as they happen, until you stop iterating.

        Args:
            path: The directory to watch.
            recursive: Watch its subdirectories too (new ones included).
            include: Glob patterns (on the name or the path relative to ``path``); only
                matching paths are reported.
            exclude: Glob patterns of paths not to report, e.g. ``["*.pyc", ".git/*"]``.

        Raises:
            FileNotFound: No such directory.
        """
        decoder = WatchStreamDecoder()
        body = {
            "path": path,
            "recursive": recursive,
            "include": list(include or ()),
            "exclude": list(exclude or ()),
        }
        async with self.client.stream("POST", f"{self._path}/files/watch", json=body) as chunks:
            async for chunk in chunks:
                for event in decoder.feed(chunk):
                    yield event
                if decoder.finished:
                    return

    async def git_checkout(
        self,
        url: str,
        *,
        branch: str | None = None,
        target_dir: str | None = None,
        depth: int | None = None,
    ) -> GitCheckout:
        """Clone a git repository into the sandbox (with the sandbox's network and git).

        Args:
            url: ``https://``, ``http://``, ``git://``, ``ssh://``, ``file://`` or a path.
                Credentials go in the URL (``https://TOKEN@host/repo.git``).
            branch: The branch or tag to check out; the remote's default when ``None``.
            target_dir: Where to clone (relative to ``/workspace``); the repository's name
                by default.
            depth: Clone only this many commits of history.

        Raises:
            GitError: ``code`` is ``git_branch_not_found``, ``git_repository_not_found``,
                ``git_auth_failed``, ``git_unreachable`` or ``git_failed``.
            Conflict: ``target_dir`` exists and is not empty (``file_exists``).
        """
        body = await self.client.request(
            "POST",
            f"{self._path}/git/checkout",
            json={"url": url, "branch": branch, "target_dir": target_dir, "depth": depth},
        )
        return GitCheckout(
            path=body["path"], url=body["url"], branch=body["branch"], commit=body["commit"]
        )
