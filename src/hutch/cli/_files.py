"""``hutch cp`` and ``hutch files``: copy files and directories in and out, list a directory.

Symlinks are copied as symlinks (as ``docker cp`` and ``cp -a`` do). Into a sandbox, every
one. Out of one, only those that stay inside the copied tree (relative, not climbing out of
it: ``lib -> ../shared/lib`` within the tree, not ``-> /etc/passwd``), made after everything
else, so no file the download writes can land through a link the sandbox chose; the others are
skipped with a message. A download never writes a path with ``..`` in it, whatever the
sandbox's listing says.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from hutch.cli._connect import client_for as _client
from hutch.cli._output import format_size, render_table

if TYPE_CHECKING:
    from hutch.sdk import Sandbox

CommandFactory = Callable[..., argparse.ArgumentParser]


def add_file_commands(command: CommandFactory) -> None:
    p = command(
        "cp",
        cmd_cp,
        "copy files or directories between this host and a sandbox",
        epilog="examples:\n"
        "  hutch cp data.csv sb-1a2b3c4d5e6f:data/         (into /workspace/data/)\n"
        "  hutch cp ./project sb-1a2b3c4d5e6f:/srv/app     (a whole directory)\n"
        "  hutch cp sb-1a2b3c4d5e6f:results ./results      (out of the sandbox)\n"
        "  hutch cp sb-1a2b3c4d5e6f:log.txt -              (to stdout; '-' as source: stdin)",
    )
    p.add_argument("source", metavar="SRC")
    p.add_argument("destination", metavar="DST")

    p = command("files", cmd_files, "list a directory in a sandbox")
    p.add_argument("id", metavar="ID")
    p.add_argument("path", metavar="PATH", nargs="?", default=".")
    p.add_argument("-r", "--recursive", action="store_true", help="the whole tree")
    p.add_argument("-a", "--all", action="store_true", help="include names starting with '.'")


def split_remote(spec: str) -> tuple[str, str] | None:
    """``"sb-1:path"`` -> ``("sb-1", "path")``; a local path -> ``None``."""
    head, sep, tail = spec.partition(":")
    if not sep or not head or "/" in head or head in (".", ".."):
        return None
    return head, tail or "."


def safe_relative(path: str) -> Path:
    """A relative path from a sandbox's listing, refused if it could leave the target."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"refusing the unsafe path {path!r} sent by the sandbox")
    return Path(*parts)


def cmd_cp(args: argparse.Namespace) -> int:
    from hutch.sdk import Sandbox

    src, dst = split_remote(args.source), split_remote(args.destination)
    if (src is None) == (dst is None):
        print(
            "hutch cp: exactly one of SRC and DST must be ID:PATH (a sandbox path)",
            file=sys.stderr,
        )
        return 2
    with _client(args) as client:
        if dst is not None:
            return _upload(Sandbox(dst[0], client=client), args.source, dst[1])
        assert src is not None
        return _download(Sandbox(src[0], client=client), src[1], args.destination)


def _remote_dir(sb: Sandbox, path: str) -> bool:
    from hutch.sdk import FileNotFound

    try:
        return sb.stat(path).type == "directory"
    except FileNotFound:
        return False


def _upload(sb: Sandbox, local: str, remote: str) -> int:
    if local == "-":
        sb.write_file(remote, iter(lambda: sys.stdin.buffer.read(1024 * 1024), b""))
        return 0
    source = Path(local)
    if not source.exists():
        print(f"hutch cp: {local}: no such file or directory", file=sys.stderr)
        return 1
    into = remote.endswith("/") or _remote_dir(sb, remote)
    target = posixpath.join(remote, source.resolve().name) if into else remote
    if not source.is_dir():
        with open(source, "rb") as f:
            sb.write_file(target, f, mode=stat.S_IMODE(source.stat().st_mode))
        return 0
    sb.mkdir(target, recursive=True)
    for dirpath, dirnames, filenames in os.walk(source):
        rel = Path(dirpath).relative_to(source)
        base = posixpath.join(target, rel.as_posix()) if rel.parts else target
        for name in dirnames:
            path = Path(dirpath) / name
            if path.is_symlink():  # os.walk does not descend into it
                _remote_symlink(sb, os.readlink(path), posixpath.join(base, name))
            else:
                sb.mkdir(posixpath.join(base, name), recursive=True)
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                _remote_symlink(sb, os.readlink(path), posixpath.join(base, name))
                continue
            if not path.is_file():
                print(f"hutch cp: skipping {path} (not a regular file)", file=sys.stderr)
                continue
            with open(path, "rb") as f:
                sb.write_file(posixpath.join(base, name), f, mode=stat.S_IMODE(path.stat().st_mode))
    return 0


def _remote_symlink(sb: Sandbox, target: str, path: str) -> None:
    # NB: the files API has no symlink call; ln is in coreutils and busybox alike. Relative
    # paths start at /workspace, as the files API's do.
    result = sb.run("ln", ["-sfn", "--", target, path], cwd="/workspace")
    if not result.success:
        raise OSError(f"could not create the symlink {path} -> {target}: {result.stderr.strip()}")


def _write_local(sb: Sandbox, remote: str, target: Path, mode: int | None) -> None:
    tmp = target.with_name(f".{target.name}.hutch-part")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    fd = os.open(tmp, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in sb.read_file_stream(remote):
                f.write(chunk)
        if mode is not None:
            os.chmod(tmp, mode & 0o777)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _download(sb: Sandbox, remote: str, local: str) -> int:
    info = sb.stat(remote)
    if local == "-":
        for chunk in sb.read_file_stream(remote):
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        return 0
    dest = Path(local)
    if dest.is_dir() and not dest.is_symlink():
        dest = dest / posixpath.basename(info.absolute_path.rstrip("/"))
    if info.type != "directory":
        _write_local(sb, remote, dest, info.mode)
        return 0
    dest.mkdir(parents=True, exist_ok=True)
    links: list[tuple[Path, str]] = []
    for entry in sb.list_files(remote, recursive=True, include_hidden=True):
        try:
            target = dest / safe_relative(entry.path)
        except ValueError as exc:
            print(f"hutch cp: {exc}", file=sys.stderr)
            return 1
        if entry.type == "directory":
            target.mkdir(parents=True, exist_ok=True)
        elif entry.type == "file":
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_local(sb, entry.absolute_path, target, entry.mode)
        elif entry.type == "symlink" and entry.target is not None:
            if _link_stays_inside(entry.path, entry.target):
                links.append((target, entry.target))
            else:
                print(
                    f"hutch cp: skipping {entry.absolute_path} -> {entry.target} "
                    "(a link out of the copied tree)",
                    file=sys.stderr,
                )
        else:
            print(f"hutch cp: skipping {entry.absolute_path} ({entry.type})", file=sys.stderr)
    for target, link_target in links:  # last: nothing is written through them
        # A listing that puts one link below another ("a" -> /etc, then "a/b") must not make
        # anything outside `dest`.
        rel = target.relative_to(dest)
        if any((dest / parent).is_symlink() for parent in rel.parents if parent.parts):
            print(f"hutch cp: refusing the link {target} below another link", file=sys.stderr)
            return 1
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()
        try:
            os.symlink(link_target, target)
        except FileExistsError:
            print(f"hutch cp: skipping the link {target}: something else is there", file=sys.stderr)
    return 0


def _link_stays_inside(path: str, target: str) -> bool:
    """Whether the link at ``path`` (relative to the copied tree) points into the tree."""
    if target.startswith("/") or not target:
        return False
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    return resolved != ".." and not resolved.startswith("../")


def cmd_files(args: argparse.Namespace) -> int:
    from hutch.sdk import Sandbox

    with _client(args) as client:
        entries = Sandbox(args.id, client=client).list_files(
            args.path, recursive=args.recursive, include_hidden=args.all
        )
    rows = []
    for e in sorted(entries, key=lambda e: e.path):
        name = e.path + ("/" if e.type == "directory" else "")
        if e.target is not None:
            name += f" -> {e.target}"
        rows.append([stat.filemode(_type_bits(e.type) | e.mode), format_size(e.size), name])
    print(render_table(["MODE", "SIZE", "NAME"], rows))
    return 0


def _type_bits(kind: str) -> int:
    return {"directory": stat.S_IFDIR, "symlink": stat.S_IFLNK, "file": stat.S_IFREG}.get(kind, 0)
