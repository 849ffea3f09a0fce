"""Routes for a sandbox's lifecycle: pause, resume, stop, start, timeout, snapshots, fork."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response

from hutch.server._deps import ERROR_RESPONSES, Svc, require_key
from hutch.server._lifecycle_models import (
    BackupCreate,
    BackupInfo,
    BackupList,
    ForkRequest,
    RestoreRequest,
    SnapshotCreate,
    SnapshotInfo,
    SnapshotList,
    TimeoutUpdate,
)
from hutch.server._models import SandboxCreate, SandboxInfo, SandboxList
from hutch.server.services._backups import target_of
from hutch.server.services._sandboxes import to_info
from hutch.server.store._sqlite import BackupRecord, SnapshotRecord


def backup_info(backup: BackupRecord) -> BackupInfo:
    return BackupInfo(
        id=backup.id,
        sandbox_id=backup.sandbox_id,
        bucket=backup.bucket,
        endpoint=backup.endpoint,
        prefix=backup.prefix,
        parent_id=backup.parent_id,
        created_at=backup.created_at,
    )


def _target(body: BackupCreate) -> Any:
    return target_of(
        body.bucket,
        body.endpoint,
        body.credentials.model_dump(),
        body.prefix,
        body.region,
    )


def snapshot_info(snap: SnapshotRecord) -> SnapshotInfo:
    return SnapshotInfo(
        id=snap.id,
        name=snap.name,
        sandbox_id=snap.sandbox_id,
        image=snap.image,
        created_at=snap.created_at,
    )


def build_lifecycle_router() -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], responses=ERROR_RESPONSES)

    @router.post("/sandboxes/{sandbox_id}/pause", response_model=SandboxInfo)
    async def pause(svc: Svc, sandbox_id: str) -> SandboxInfo:
        """Freeze every process (memory kept); a paused sandbox: no-op; stopped: 409."""
        return to_info(await svc.lifecycle.pause(sandbox_id))

    @router.post("/sandboxes/{sandbox_id}/resume", response_model=SandboxInfo)
    async def resume(svc: Svc, sandbox_id: str) -> SandboxInfo:
        """Run a paused or stopped sandbox again; a running one: no-op."""
        return to_info(await svc.lifecycle.resume(sandbox_id))

    @router.post("/sandboxes/{sandbox_id}/stop", response_model=SandboxInfo)
    async def stop(svc: Svc, sandbox_id: str) -> SandboxInfo:
        """End every process, keep the disk; a stopped sandbox: no-op."""
        return to_info(await svc.lifecycle.stop(sandbox_id))

    @router.post("/sandboxes/{sandbox_id}/start", response_model=SandboxInfo)
    async def start(svc: Svc, sandbox_id: str) -> SandboxInfo:
        """Boot a stopped sandbox again on its disk (or resume a paused one)."""
        return to_info(await svc.lifecycle.start(sandbox_id))

    @router.put("/sandboxes/{sandbox_id}/timeout", response_model=SandboxInfo)
    async def set_timeout(svc: Svc, sandbox_id: str, body: TimeoutUpdate) -> SandboxInfo:
        """End the sandbox's lifetime this long from now (0: never); see `on_timeout`."""
        return to_info(await svc.lifecycle.set_timeout(sandbox_id, body.seconds))

    @router.post("/sandboxes/{sandbox_id}/snapshots", status_code=201, response_model=SnapshotInfo)
    async def create_snapshot(
        svc: Svc, sandbox_id: str, body: SnapshotCreate | None = None
    ) -> SnapshotInfo:
        name = body.name if body is not None else None
        return snapshot_info(await svc.lifecycle.snapshot(sandbox_id, name))

    @router.post("/sandboxes/{sandbox_id}/fork", status_code=201, response_model=SandboxList)
    async def fork(svc: Svc, sandbox_id: str, body: ForkRequest | None = None) -> SandboxList:
        count = body.count if body is not None else 1
        records = await svc.lifecycle.fork(sandbox_id, count)
        return SandboxList(sandboxes=[to_info(r) for r in records])

    @router.get("/snapshots", response_model=SnapshotList)
    async def list_snapshots(
        svc: Svc, sandbox_id: Annotated[str | None, Query()] = None
    ) -> SnapshotList:
        return SnapshotList(
            snapshots=[snapshot_info(s) for s in svc.lifecycle.list_snapshots(sandbox_id)]
        )

    @router.get("/snapshots/{snapshot_id}", response_model=SnapshotInfo)
    async def get_snapshot(svc: Svc, snapshot_id: str) -> SnapshotInfo:
        return snapshot_info(svc.lifecycle.get_snapshot(snapshot_id))

    @router.delete("/snapshots/{snapshot_id}", status_code=204)
    async def delete_snapshot(svc: Svc, snapshot_id: str) -> Response:
        await svc.lifecycle.delete_snapshot(snapshot_id)
        return Response(status_code=204)

    @router.post("/sandboxes/{sandbox_id}/backups", status_code=201, response_model=BackupInfo)
    async def create_backup(svc: Svc, sandbox_id: str, body: BackupCreate) -> BackupInfo:
        """Write the sandbox's disk to S3 (zstd; incremental against its last backup there)."""
        return backup_info(await svc.backups.backup(sandbox_id, _target(body)))

    @router.get("/sandboxes/{sandbox_id}/backups", response_model=BackupList)
    async def list_backups(svc: Svc, sandbox_id: str) -> BackupList:
        return BackupList(backups=[backup_info(b) for b in svc.backups.of_sandbox(sandbox_id)])

    @router.post("/backups/restore", status_code=201, response_model=SandboxInfo)
    async def restore_backup(svc: Svc, body: RestoreRequest) -> SandboxInfo:
        """A new sandbox from a backup (made on this server or another)."""
        request = body.sandbox or SandboxCreate()
        return to_info(await svc.backups.restore(_target(body), body.backup_id, request))

    return router
