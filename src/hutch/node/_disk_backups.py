"""A host's side of backups: a disk snapshot of this host streamed to S3-compatible storage,
and a chain of such streams received back into a snapshot of this host.

The API keeps the backups' manifests and records (server/services/_backups.py); the host moves
only the bytes, between its own btrfs and the bucket (runtime/container/_backups.py pipes
`btrfs send | zstd | rclone rcat` and back). On a cluster the node that holds the disk does it
(node/_node_api.py), so a disk never passes through an API replica.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from hutch.runtime import (
    BackupFailed,
    BackupIO,
    BackupTarget,
    Credentials,
    Runtime,
    receive_dir,
    remove_received,
    snapshot_subvolume,
)


async def send_disk(
    runtime: Runtime, snapshot_id: str, target: BackupTarget, name: str, parent: str | None
) -> bool:
    """Write snapshot `snapshot_id` of this host to object `name` at `target`, incrementally
    against snapshot `parent` when this host still has it. Returns whether it was incremental.

    Raises:
        BackupFailed: the snapshot is not here, or the stream broke.
    """
    snaps = runtime.snapshots
    if not snaps.exists(snapshot_id):
        raise BackupFailed(f"no snapshot {snapshot_id} on this host")
    against = parent if parent is not None and snaps.exists(parent) else None
    async with BackupIO(target, runtime.config.home) as io:
        await io.send(snaps.path(snapshot_id), snaps.path(against) if against else None, name)
    return against is not None


async def receive_disk(
    runtime: Runtime, target: BackupTarget, names: Sequence[str], last: str, snapshot_id: str
) -> None:
    """Receive the streams `names` (a chain, oldest first) from `target` and keep subvolume
    `last` of them as snapshot `snapshot_id` of this host (read-only, as `take` makes them).

    Raises:
        BackupFailed: an object is missing or broken, or btrfs refused the stream.
    """
    snaps = runtime.snapshots
    if snaps.exists(snapshot_id):
        raise BackupFailed(f"snapshot {snapshot_id} is on this host already")
    for name in (*names, last):
        # NB: names come from manifests in the bucket: never a path out of the receive dir.
        if not name or "/" in name or name.startswith("."):
            raise BackupFailed(f"a backup manifest names {name!r}, which is not an object name")
    snaps.root.mkdir(mode=0o700, exist_ok=True)
    into = receive_dir(snaps.root)
    try:
        async with BackupIO(target, runtime.config.home) as io:
            for name in names:
                await io.receive(name, into)
        if not (into / last).is_dir():
            raise BackupFailed(f"the backup streams held no subvolume {last!r}")
        # NB: a snapshot, not a rename: a read-only subvolume cannot change its parent.
        await asyncio.to_thread(
            snapshot_subvolume, into / last, snaps.root, snapshot_id, read_only=True
        )
    finally:
        await asyncio.to_thread(remove_received, into)


def target_to_json(target: BackupTarget) -> dict[str, Any]:
    """For the node API's request body (it carries the credentials: the node API is reached
    by API replicas only, with the node token)."""
    creds = target.credentials
    return {
        "bucket": target.bucket,
        "endpoint": target.endpoint,
        "credentials": {
            "access_key_id": creds.access_key_id,
            "secret_access_key": creds.secret_access_key,
            "session_token": creds.session_token,
        },
        "prefix": target.prefix,
        "region": target.region,
    }


def target_from_json(data: dict[str, Any]) -> BackupTarget:
    """Raises KeyError/TypeError on a malformed body (a 400 at the node API)."""
    creds = data["credentials"]
    return BackupTarget(
        bucket=str(data["bucket"]),
        endpoint=str(data["endpoint"]),
        credentials=Credentials(
            access_key_id=str(creds["access_key_id"]),
            secret_access_key=str(creds["secret_access_key"]),
            session_token=None
            if creds.get("session_token") is None
            else str(creds["session_token"]),
        ),
        prefix=None if data.get("prefix") is None else str(data["prefix"]),
        region=None if data.get("region") is None else str(data["region"]),
    )
