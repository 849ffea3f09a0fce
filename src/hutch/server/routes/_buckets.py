"""Bucket mounts of a running sandbox: `POST/GET/DELETE /v1/sandboxes/{id}/mounts`."""

# NB: no `from __future__ import annotations`: FastAPI must see the route parameters' types.

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from hutch.runtime import (
    BucketMount,
    BucketMountFailed,
    BucketNotMounted,
    BucketPathBusy,
    BucketPathInvalid,
    BucketRequest,
    Credentials,
)
from hutch.server._deps import ERROR_RESPONSES, Svc, require_key
from hutch.server._errors import (
    ApiError,
    BucketMountFailedError,
    BucketNotMountedError,
    InvalidRequest,
    MountPathBusy,
    SandboxNotRunning,
)
from hutch.server._models import BucketMountCreate, BucketMountInfo, BucketMountList


def mount_info(record: BucketMount) -> BucketMountInfo:
    return BucketMountInfo(
        mount_path=record.mount_path,
        bucket=record.bucket,
        endpoint=record.endpoint,
        prefix=record.prefix,
        read_only=record.read_only,
    )


def _map_error(exc: Exception) -> ApiError:
    if isinstance(exc, BucketMountFailed):
        return BucketMountFailedError(str(exc))
    if isinstance(exc, BucketPathBusy):
        return MountPathBusy(str(exc))
    if isinstance(exc, BucketNotMounted):
        return BucketNotMountedError(str(exc))
    return InvalidRequest(str(exc))


def build_buckets_router() -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], responses=ERROR_RESPONSES)

    @router.post("/sandboxes/{sandbox_id}/mounts", status_code=201, response_model=BucketMountInfo)
    async def mount_bucket(svc: Svc, sandbox_id: str, body: BucketMountCreate) -> BucketMountInfo:
        record = svc.sandboxes.get(sandbox_id)
        if record.status != "running":
            raise SandboxNotRunning(
                f"sandbox {sandbox_id} is {record.status}; buckets mount only into a running "
                "sandbox"
            )
        req = BucketRequest(
            bucket=body.bucket,
            mount_path=body.mount_path,
            endpoint=body.endpoint,
            credentials=Credentials(
                access_key_id=body.credentials.access_key_id,
                secret_access_key=body.credentials.secret_access_key,
                session_token=body.credentials.session_token,
            ),
            read_only=body.read_only,
            prefix=body.prefix,
            region=body.region,
        )
        try:
            mounted = await svc.host.mount_bucket(sandbox_id, req)
        except (BucketMountFailed, BucketPathBusy, BucketPathInvalid, ValueError) as exc:
            raise _map_error(exc) from None
        return mount_info(mounted)

    @router.get("/sandboxes/{sandbox_id}/mounts", response_model=BucketMountList)
    async def list_mounts(svc: Svc, sandbox_id: str) -> BucketMountList:
        svc.sandboxes.get(sandbox_id)
        return BucketMountList(
            mounts=[mount_info(m) for m in await svc.host.bucket_mounts(sandbox_id)]
        )

    @router.delete("/sandboxes/{sandbox_id}/mounts", status_code=204)
    async def unmount_bucket(
        svc: Svc, sandbox_id: str, mount_path: Annotated[str, Query()]
    ) -> Response:
        svc.sandboxes.get(sandbox_id)
        try:
            await svc.host.unmount_bucket(sandbox_id, mount_path)
        except (BucketNotMounted, BucketPathBusy, BucketPathInvalid) as exc:
            raise _map_error(exc) from None
        return Response(status_code=204)

    return router
