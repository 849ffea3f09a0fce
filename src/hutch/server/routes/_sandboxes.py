"""Sandboxes: create, get-or-create, list, get, destroy (`/v1/sandboxes`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from hutch.server._deps import ERROR_RESPONSES, Svc, require_key
from hutch.server._errors import InvalidRequest
from hutch.server._models import SandboxCreate, SandboxInfo, SandboxList
from hutch.server.routes._buckets import mount_info
from hutch.server.services._sandboxes import to_info


def build_sandboxes_router() -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], responses=ERROR_RESPONSES)

    @router.post("/sandboxes", status_code=201, response_model=SandboxInfo)
    async def create_sandbox(svc: Svc, body: SandboxCreate | None = None) -> SandboxInfo:
        with svc.metrics.creates.time():
            record = await svc.lifecycle.create(body or SandboxCreate())
        return to_info(record)

    @router.put("/sandboxes/{sandbox_id}", response_model=SandboxInfo)
    async def get_or_create_sandbox(
        svc: Svc, sandbox_id: str, response: Response, body: SandboxCreate | None = None
    ) -> SandboxInfo:
        record, created = await svc.lifecycle.get_or_create(sandbox_id, body or SandboxCreate())
        response.status_code = 201 if created else 200
        return to_info(record)

    @router.get("/sandboxes", response_model=SandboxList)
    async def list_sandboxes(
        svc: Svc, label: Annotated[list[str] | None, Query()] = None
    ) -> SandboxList:
        labels: dict[str, str] = {}
        for item in label or []:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise InvalidRequest(
                    f"label filter {item!r} must look like key=value",
                    fields=[{"loc": ["query", "label"], "message": "expected key=value"}],
                )
            labels[key] = value
        return SandboxList(
            sandboxes=[to_info(r) for r in await svc.sandboxes.list_off_loop(labels)]
        )

    @router.get("/sandboxes/{sandbox_id}", response_model=SandboxInfo)
    async def get_sandbox(svc: Svc, sandbox_id: str) -> SandboxInfo:
        info = to_info(await svc.sandboxes.fetch(sandbox_id))
        info.mounts = [mount_info(m) for m in await svc.host.bucket_mounts(sandbox_id)]
        return info

    @router.delete("/sandboxes/{sandbox_id}", status_code=204)
    async def destroy_sandbox(svc: Svc, sandbox_id: str) -> Response:
        await svc.sandboxes.destroy(sandbox_id)
        return Response(status_code=204)

    return router
