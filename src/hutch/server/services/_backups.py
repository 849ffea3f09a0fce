"""Backups of a sandbox's disk to S3-compatible storage, and restores from them on this server
or another (runtime/_backups.py moves the bytes).

Each backup keeps its snapshot here until the next backup of the same sandbox to the same
place, which is sent incrementally against it (`btrfs send -p`) and then takes its role.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import Any

from hutch.runtime import (
    BackupFailed,
    BackupIO,
    BackupTarget,
    BucketMountFailed,
    Credentials,
    ImageNotFound,
    ImageStore,
    Runtime,
    receive_dir,
    remove_received,
    snapshot_subvolume,
)
from hutch.server._errors import (
    BackupNotFound,
    BackupStreamFailed,
    BackupTargetUnreachable,
    ImageNotFoundError,
    InvalidRequest,
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
        runtime: Runtime,
        images: ImageStore,
    ) -> None:
        self._lifecycle = lifecycle
        self._manager = manager
        self._store = store
        self._runtime = runtime
        self._images = images

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
        snaps = self._runtime.snapshots
        async with _io(target, self._runtime) as io:
            await _check(io)
            parent = self._parent(sandbox_id, target)
            backup_id = "bk-" + secrets.token_hex(6)
            async with self._manager.lock_for(sandbox_id):
                record = self._manager.get(sandbox_id)
                await asyncio.to_thread(snaps.take, self._manager.runtime_id(sandbox_id), backup_id)
            try:
                await io.send(
                    snaps.path(backup_id),
                    snaps.path(parent.snapshot) if parent and parent.snapshot else None,
                    f"{backup_id}.btrfs.zst",
                )
                await io.put_json(f"{backup_id}.json", _manifest(backup_id, record, parent))
            except BaseException as exc:
                await asyncio.to_thread(snaps.delete, backup_id)
                if isinstance(exc, BackupFailed):
                    raise BackupStreamFailed(f"backup of {sandbox_id} failed: {exc}") from exc
                raise
        done = BackupRecord(
            id=backup_id,
            sandbox_id=sandbox_id,
            bucket=target.bucket,
            endpoint=target.endpoint,
            prefix=target.prefix,
            parent_id=parent.id if parent else None,
            snapshot=backup_id,
            created_at=now_iso(),
        )
        self._store.insert_backup(done)
        if parent is not None and parent.snapshot:
            # The new backup is the next one's parent now.
            await asyncio.to_thread(snaps.delete, parent.snapshot)
            self._store.clear_backup_snapshot(parent.id)
        return done

    def _parent(self, sandbox_id: str, target: BackupTarget) -> BackupRecord | None:
        for previous in reversed(self._store.list_backups(sandbox_id)):
            same_place = (previous.bucket, previous.endpoint, previous.prefix) == (
                target.bucket,
                target.endpoint,
                target.prefix,
            )
            if (
                same_place
                and previous.snapshot
                and self._runtime.snapshots.exists(previous.snapshot)
            ):
                return previous
        return None

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
        snaps = self._runtime.snapshots
        async with _io(target, self._runtime) as io:
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
            snaps.root.mkdir(mode=0o700, exist_ok=True)
            into = receive_dir(snaps.root)
            snapshot_id = "snap-" + secrets.token_hex(6)
            try:
                for manifest in chain:
                    await io.receive(f"{manifest['id']}.btrfs.zst", into)
                # NB: a snapshot, not a rename: a read-only subvolume cannot change its parent.
                snapshot_subvolume(
                    into / str(last["snapshot"]), snaps.root, snapshot_id, read_only=True
                )
            except BackupFailed as exc:
                raise BackupStreamFailed(f"restore of {backup_id} failed: {exc}") from exc
            finally:
                await asyncio.to_thread(remove_received, into)
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


def _io(target: BackupTarget, runtime: Runtime) -> BackupIO:
    try:
        return BackupIO(target, runtime.config.home)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


async def _check(io: BackupIO) -> None:
    try:
        await io.check()
    except BucketMountFailed as exc:
        raise BackupTargetUnreachable(
            str(exc).replace("mount", "backup") + "; nothing was written"
        ) from exc
