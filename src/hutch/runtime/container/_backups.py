"""Backups of sandbox disks to S3-compatible storage, and back.

A backup is a read-only snapshot sent as a `btrfs send` stream (incremental against the
previous backup's snapshot when that is still here: `-p`), compressed with zstd and uploaded
with rclone, next to a small JSON manifest. Restore reads the manifests back to the first full
backup and `btrfs receive`s the chain in order. Nothing touches the host disk in between: the
stream is piped from btrfs through zstd into rclone.

Objects: `<prefix>/<backup id>.btrfs.zst` and `<prefix>/<backup id>.json`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hutch.runtime.container._bucket_spec import (
    BucketMountFailed,
    BucketRequest,
    Credentials,
    check_request,
    rclone_bin,
    rclone_config,
)
from hutch.runtime.container._buckets import _check_bucket, _scrub
from hutch.runtime.container._errors import SandboxRuntimeError
from hutch.runtime.container._snapshots import delete_subvolume

_NET = ("--contimeout", "5s", "--timeout", "30s", "--low-level-retries", "2", "--retries", "1")


class BackupFailed(SandboxRuntimeError):
    """The backup or restore stream failed (the message says which step)."""


@dataclass(frozen=True, slots=True)
class BackupTarget:
    """Where backups go: a bucket (and key prefix) on an S3-compatible endpoint."""

    bucket: str
    endpoint: str
    credentials: Credentials
    prefix: str | None = None
    region: str | None = None

    def request(self) -> BucketRequest:
        return BucketRequest(
            bucket=self.bucket,
            mount_path="/",
            endpoint=self.endpoint,
            credentials=self.credentials,
            prefix=self.prefix,
            region=self.region,
        )

    def key(self, name: str) -> str:
        base = f"hutch:{self.bucket}"
        return f"{base}/{self.prefix.strip('/')}/{name}" if self.prefix else f"{base}/{name}"


class BackupIO:
    """rclone with a private config for one target; use as an async context manager."""

    def __init__(self, target: BackupTarget, workdir: Path) -> None:
        check_request(target.request())  # ValueError for malformed values
        self.target = target
        self._dir = workdir / f".backup-{secrets.token_hex(4)}"
        self.conf = self._dir / "rclone.conf"

    async def __aenter__(self) -> BackupIO:
        self._dir.mkdir(mode=0o700, parents=True)
        fd = os.open(self.conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(rclone_config(self.target.request()))
        return self

    async def __aexit__(self, *exc: object) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    async def check(self) -> None:
        """List the bucket once. Raises BucketMountFailed (unreachable, refused)."""
        await _check_bucket(self.conf, self.target.request())

    def _rclone(self, *args: str) -> list[str]:
        return [rclone_bin(), "--config", str(self.conf), *_NET, *args]

    async def put_json(self, name: str, data: dict[str, Any]) -> None:
        await self._run(self._rclone("rcat", self.target.key(name)), json.dumps(data).encode())

    async def get_json(self, name: str) -> dict[str, Any]:
        out = await self._run(self._rclone("cat", self.target.key(name)), None)
        if not out:
            raise BackupFailed(f"backup manifest {name} is missing or empty in the bucket")
        try:
            data = json.loads(out)
        except ValueError as e:
            raise BackupFailed(f"backup manifest {name} is not JSON: {e}") from e
        if not isinstance(data, dict):
            raise BackupFailed(f"backup manifest {name} is not a JSON object")
        return data

    async def send(self, snapshot: Path, parent: Path | None, name: str) -> None:
        """btrfs send [-p parent] | zstd | rclone rcat."""
        send = ["btrfs", "send", "-q", *(["-p", str(parent)] if parent else []), str(snapshot)]
        await self._pipeline(
            [send, ["zstd", "-q", "-3", "-T0"], self._rclone("rcat", self.target.key(name))]
        )

    async def receive(self, name: str, into: Path) -> None:
        """rclone cat | zstd -d | btrfs receive."""
        await self._pipeline(
            [
                self._rclone("cat", self.target.key(name)),
                ["zstd", "-q", "-d"],
                ["btrfs", "receive", "-q", str(into)],
            ]
        )

    async def _run(self, argv: list[str], stdin: bytes | None) -> bytes:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate(stdin)
        if proc.returncode != 0:
            raise BackupFailed(f"{Path(argv[0]).name} failed: {self._scrub(err)}")
        return out

    async def _pipeline(self, stages: list[list[str]]) -> None:
        """Run `stages` as a shell pipeline would; every stage must succeed."""
        procs: list[asyncio.subprocess.Process] = []
        prev_read: int | None = None
        try:
            for i, argv in enumerate(stages):
                last = i == len(stages) - 1
                read_end, write_end = (None, None) if last else os.pipe()
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=prev_read if prev_read is not None else asyncio.subprocess.DEVNULL,
                    stdout=write_end if write_end is not None else asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE,
                )
                procs.append(proc)
                # Our copies go: each end now belongs to one child only (EOF propagates).
                if prev_read is not None:
                    os.close(prev_read)
                if write_end is not None:
                    os.close(write_end)
                prev_read = read_end
            errors = await asyncio.gather(*(p.communicate() for p in procs))
        except BaseException:
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            raise
        for argv, proc, (_, err) in zip(stages, procs, errors, strict=True):
            if proc.returncode != 0:
                raise BackupFailed(
                    f"{Path(argv[0]).name} {argv[1] if len(argv) > 1 else ''} failed "
                    f"(exit {proc.returncode}): {self._scrub(err)}"
                )

    def _scrub(self, err: bytes) -> str:
        lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
        return _scrub(lines[-1] if lines else "(no message)", self.target.credentials.secrets())


def receive_dir(snapshots_root: Path) -> Path:
    """A fresh directory to receive a backup chain into (names cannot collide there)."""
    path = snapshots_root / f".recv-{secrets.token_hex(4)}"
    path.mkdir(mode=0o700, parents=True)
    return path


def remove_received(path: Path) -> None:
    """Delete the subvolumes of a receive dir, then the dir."""
    if path.is_dir():
        for child in path.iterdir():
            delete_subvolume(path, child.name)
        shutil.rmtree(path, ignore_errors=True)


__all__ = ["BackupFailed", "BackupIO", "BackupTarget", "BucketMountFailed"]
