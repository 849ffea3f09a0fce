"""Backups of a sandbox's disk to S3-compatible storage, and restores from them on this server
or another. The API writes and reads the small JSON manifests; the host that holds the disk
streams the disk itself (`SandboxHost.send_backup` / `receive_backup`: in-process on one host,
the node on a cluster, so a disk never passes through an API replica).

Each backup keeps its snapshot on the sandbox's host until the next backup of the same sandbox
to the same place, which is sent incrementally against it (`btrfs send -p`) and then takes its
role. A sandbox moved to another node since gets a full backup (its parent stayed behind).
"""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path
from typing import Any

from hutch.node import SandboxHost
from hutch.runtime import (
    BackupFailed,
    BackupIO,
    BackupTarget,
    BucketMountFailed,
    Credentials,
    ImageNotFound,
    ImageStore,
    Limits,
)
from hutch.server._errors import (
    BackupNotFound,
    BackupStreamFailed,
    BackupTargetUnreachable,
    ImageNotFoundError,
    InvalidRequest,
    NodeUnavailableError,
)
from hutch.server._models import SandboxCreate
from hutch.server.services._keys import now_iso
from hutch.server.services._lifecycle import Lifecycle
from hutch.server.services._sandboxes import SandboxManager
from hutch.server.store._sqlite import BackupRecord, SandboxRecord, SnapshotRecord, Store

MANIFEST_FORMAT = 1
MAX_CHAIN = 1000


def target_of(
    bucket: str,
    endpoint: str,
    credentials: dict[str, Any],
    prefix: str | None,
    region: str | None,
) -> BackupTarget:
    return BackupTarget(
        bucket=bucket,
        endpoint=endpoint,
        credentials=Credentials(
            access_key_id=credentials["access_key_id"],
            secret_access_key=credentials["secret_access_key"],
            session_token=credentials.get("session_token"),
        ),
        prefix=prefix,
        region=region,
    )


class Backups:
    def __init__(
        self,
        lifecycle: Lifecycle,
        manager: SandboxManager,
        store: Store,
        host: SandboxHost,
        images: ImageStore,
        *,
        workdir: Path,
    ) -> None:
        self._lifecycle = lifecycle
        self._manager = manager
        self._store = store
        self._host = host
        self._images = images
        self._workdir = workdir  # rclone's private config for the manifests, while in use

    def of_sandbox(self, sandbox_id: str) -> list[BackupRecord]:
        self._manager.get(sandbox_id)
        return self._store.list_backups(sandbox_id)

    async def backup(self, sandbox_id: str, target: BackupTarget) -> BackupRecord:
        """Write the sandbox's disk to `target` (incremental when it can be).

        Raises:
            SandboxNotFound: no such sandbox.
            InvalidRequest: a malformed bucket, endpoint, prefix or credential.
            BackupTargetUnreachable: the bucket could not be listed; nothing was written.
            BackupStreamFailed: the upload broke (a partial object may be left; no manifest).
        """
        record = self._manager.get(sandbox_id)
        async with _io(target, self._workdir) as io:
            await _check(io)
            parent = await self._parent(sandbox_id, target)
            backup_id = "bk-" + secrets.token_hex(6)
            async with self._manager.lock_for(sandbox_id):
                record = self._manager.get(sandbox_id)
                await self._host.take_snapshot(sandbox_id, backup_id)
            try:
                incremental = await self._host.send_backup(
                    backup_id,
                    target,
                    f"{backup_id}.btrfs.zst",
                    parent=parent.snapshot if parent and parent.snapshot else None,
                )
                against = parent if incremental else None
                await io.put_json(f"{backup_id}.json", _manifest(backup_id, record, against))
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await self._host.delete_snapshot(backup_id)
                if isinstance(exc, BackupFailed):
                    raise BackupStreamFailed(f"backup of {sandbox_id} failed: {exc}") from exc
                raise
        done = BackupRecord(
            id=backup_id,
            sandbox_id=sandbox_id,
            bucket=target.bucket,
            endpoint=target.endpoint,
            prefix=target.prefix,
            parent_id=against.id if against else None,
            snapshot=backup_id,
            created_at=now_iso(),
        )
        self._store.insert_backup(done)
        if parent is not None and parent.snapshot:
            # The new backup is the next one's parent now.
            with contextlib.suppress(NodeUnavailableError):
                await self._host.delete_snapshot(parent.snapshot)
            self._store.clear_backup_snapshot(parent.id)
        return done

    async def _parent(self, sandbox_id: str, target: BackupTarget) -> BackupRecord | None:
        for previous in reversed(self._store.list_backups(sandbox_id)):
            same_place = (previous.bucket, previous.endpoint, previous.prefix) == (
                target.bucket,
                target.endpoint,
                target.prefix,
            )
            if same_place and previous.snapshot and await self._has(previous.snapshot):
                return previous
        return None

    async def _has(self, snapshot_id: str) -> bool:
        try:
            return await self._host.has_snapshot(snapshot_id)
        except NodeUnavailableError:
            return False  # its node is gone: a full backup, not a failed one

    async def restore(
        self, target: BackupTarget, backup_id: str, request: SandboxCreate
    ) -> SandboxRecord:
        """A new sandbox from backup `backup_id` at `target` (its chain received in order).

        Raises:
            BackupTargetUnreachable, BackupNotFound, BackupStreamFailed,
            ImageNotFoundError: the backup's image is not on this server.
        """
        if not backup_id.startswith("bk-") or not backup_id[3:].isalnum():
            raise InvalidRequest(f"{backup_id!r} is not a backup id (bk-...)")
        async with _io(target, self._workdir) as io:
            await _check(io)
            chain = await self._chain(io, backup_id)
        last = chain[-1]
        try:
            self._images.get(str(last["image_id"]))
        except ImageNotFound:
            raise ImageNotFoundError(
                f"backup {backup_id} needs image {last['image']!r} (id "
                f"{str(last['image_id'])[:12]}), which this server does not have; pull or "
                "import it first"
            ) from None
        try:
            spec = SandboxRecord.from_spec_json(str(last["spec"]))
        except (ValueError, TypeError) as exc:
            raise BackupStreamFailed(f"backup {backup_id}'s manifest has no valid spec") from exc
        # Where the sandbox can run: its limits as Lifecycle._from_snapshot will make them.
        limits = Limits(
            cpu=spec.cpu, memory_mb=spec.memory_mb, disk_mb=max(spec.disk_mb, request.disk_mb)
        )
        snapshot_id = "snap-" + secrets.token_hex(6)
        try:
            await self._host.receive_backup(
                target,
                [f"{m['id']}.btrfs.zst" for m in chain],
                str(last["snapshot"]),
                snapshot_id,
                limits=limits,
            )
        except BackupFailed as exc:
            raise BackupStreamFailed(f"restore of {backup_id} failed: {exc}") from exc
        self._store.insert_snapshot(
            SnapshotRecord(
                id=snapshot_id,
                name=None,
                sandbox_id=str(last["sandbox_id"]),
                image=str(last["image"]),
                image_id=str(last["image_id"]),
                created_at=now_iso(),
                spec=str(last["spec"]),
            )
        )
        try:
            return await self._lifecycle.create(
                request.model_copy(update={"snapshot": snapshot_id})
            )
        finally:
            with contextlib.suppress(Exception):
                await self._lifecycle.delete_snapshot(snapshot_id)

    async def _chain(self, io: BackupIO, backup_id: str) -> list[dict[str, Any]]:
        chain: list[dict[str, Any]] = []
        current: str | None = backup_id
        while current is not None:
            if len(chain) >= MAX_CHAIN:
                raise BackupStreamFailed(f"backup {backup_id}'s chain is longer than {MAX_CHAIN}")
            try:
                manifest = await io.get_json(f"{current}.json")
            except BackupFailed as exc:
                raise BackupNotFound(
                    f"no backup {current} in bucket {io.target.bucket!r}"
                    + (f" under {io.target.prefix!r}" if io.target.prefix else "")
                    + f" ({exc}); list a sandbox's backups with GET /v1/sandboxes/{{id}}/backups"
                ) from exc
            if manifest.get("format") != MANIFEST_FORMAT:
                raise BackupStreamFailed(f"backup {current} has an unknown manifest format")
            chain.append(manifest)
            parent = manifest.get("parent")
            current = str(parent) if parent else None
        return list(reversed(chain))


def _manifest(backup_id: str, record: SandboxRecord, parent: BackupRecord | None) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "id": backup_id,
        "sandbox_id": record.id,
        "image": record.image,
        "image_id": record.image_id,
        "spec": record.spec_json(),
        "parent": parent.id if parent else None,
        "snapshot": backup_id,  # the subvolume's name in the stream
        "created_at": now_iso(),
    }


def _io(target: BackupTarget, workdir: Path) -> BackupIO:
    try:
        return BackupIO(target, workdir)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


async def _check(io: BackupIO) -> None:
    try:
        await io.check()
    except BucketMountFailed as exc:
        raise BackupTargetUnreachable(
            str(exc).replace("mount", "backup") + "; nothing was written"
        ) from exc
