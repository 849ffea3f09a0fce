"""A sandbox's file methods (`sb.read_file`, ...): short names for `Files` (files.py), which
documents them. `AsyncSandbox` inherits them."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Sequence
from typing import Literal, overload

from hutch.sdk._async.files import Files, WriteData
from hutch.sdk._files import FileInfo, GitCheckout, WatchEvent


class FileMethods:
    """Files in the sandbox (mixed into `AsyncSandbox`, which sets ``files``)."""

    files: Files

    async def write_file(
        self, path: str, data: WriteData, *, mode: int | None = None, make_parents: bool = True
    ) -> int:
        """Write a file (streamed for file objects and iterators); see :meth:`Files.write`."""
        return await self.files.write(path, data, mode=mode, make_parents=make_parents)

    @overload
    async def read_file(
        self, path: str, *, text: Literal[False] = False, offset: int = 0, length: int | None = None
    ) -> bytes: ...

    @overload
    async def read_file(
        self, path: str, *, text: Literal[True], offset: int = 0, length: int | None = None
    ) -> str: ...

    async def read_file(
        self, path: str, *, text: bool = False, offset: int = 0, length: int | None = None
    ) -> bytes | str:
        """A file's bytes (or text with ``text=True``); see :meth:`Files.read`."""
        if text:
            return await self.files.read(path, text=True, offset=offset, length=length)
        return await self.files.read(path, text=False, offset=offset, length=length)

    async def read_file_stream(
        self, path: str, *, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """Yield a file's bytes as they arrive; see :meth:`Files.read_stream`."""
        async for chunk in self.files.read_stream(path, offset=offset, length=length):
            yield chunk

    async def mkdir(self, path: str, *, recursive: bool = False, mode: int | None = None) -> str:
        """Create a directory; see :meth:`Files.mkdir`."""
        return await self.files.mkdir(path, recursive=recursive, mode=mode)

    async def delete_file(self, path: str) -> None:
        """Delete a file; see :meth:`Files.delete`."""
        await self.files.delete(path)

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        """Delete a file or directory; see :meth:`Files.remove`."""
        await self.files.remove(path, recursive=recursive)

    async def rename_file(self, source: str, destination: str, *, overwrite: bool = True) -> str:
        """Rename a path; see :meth:`Files.rename`."""
        return await self.files.rename(source, destination, overwrite=overwrite)

    async def move_file(self, source: str, destination: str, *, overwrite: bool = True) -> str:
        """Move a path (into a directory when ``destination`` ends with ``/``)."""
        return await self.files.move(source, destination, overwrite=overwrite)

    async def list_files(
        self, path: str = ".", *, recursive: bool = False, include_hidden: bool = False
    ) -> builtins.list[FileInfo]:
        """A directory's entries; see :meth:`Files.list`."""
        return await self.files.list(path, recursive=recursive, include_hidden=include_hidden)

    async def exists(self, path: str) -> bool:
        """Whether anything is at ``path``."""
        return await self.files.exists(path)

    async def stat(self, path: str) -> FileInfo:
        """What is at ``path``; see :meth:`Files.stat`."""
        return await self.files.stat(path)

    async def watch(
        self,
        path: str = ".",
        *,
        recursive: bool = True,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> AsyncIterator[WatchEvent]:
        """Yield changes under a directory until you stop iterating; see :meth:`Files.watch`."""
        async for event in self.files.watch(
            path, recursive=recursive, include=include, exclude=exclude
        ):
            yield event

    async def git_checkout(
        self,
        url: str,
        *,
        branch: str | None = None,
        target_dir: str | None = None,
        depth: int | None = None,
    ) -> GitCheckout:
        """Clone a git repository into the sandbox; see :meth:`Files.git_checkout`."""
        return await self.files.git_checkout(url, branch=branch, target_dir=target_dir, depth=depth)
