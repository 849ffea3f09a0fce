"""E2B's snapshots and fork on Hutch's (btrfs snapshots of the disk; memory is not kept, as
CRIU does not work on this kernel): create, list, delete, create-from and fork; and whether a
template name exists (a snapshot is a template in E2B's API)."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from hutch.e2b._control import (
    body_of,
    domain,
    is_template,
    record_or_404,
    sandbox_body,
    services,
    tokens,
)
from hutch.e2b._errors import E2bError
from hutch.e2b._templates import TEMPLATE_IMAGES
from hutch.server.routes import visible
from hutch.server.store import SnapshotRecord

LIST_LIMIT = 100
FORK_TIMEOUT = 15  # seconds: E2B's default lifetime of a fork
MAX_FORK_TIMEOUT = 24 * 3600


class SnapshotBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str | None = None
    memory: bool | None = None


class ForkBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    count: int = Field(default=1, ge=1)
    timeout: int = Field(default=FORK_TIMEOUT, ge=1, le=MAX_FORK_TIMEOUT)


def snapshot_info(snap: SnapshotRecord) -> dict[str, Any]:
    return {"snapshotID": snap.id, "names": [snap.name] if snap.name else []}


def add_snapshot_routes(app: FastAPI) -> None:
    """On the control app (hutch.e2b._control), whose error handlers give E2B's shapes."""

    async def create_snapshot(request: Request) -> JSONResponse:
        svc = services(request)
        sandbox_id = request.path_params["sandbox_id"]
        record_or_404(svc, sandbox_id)
        body: SnapshotBody = await body_of(request, SnapshotBody)
        if body.memory:
            raise E2bError(
                400,
                "memory snapshots are not available on Hutch (CRIU does not work on this "
                "kernel); a snapshot keeps the disk: pass memory=false",
            )
        snap = await svc.lifecycle.snapshot(sandbox_id, body.name)
        return JSONResponse(snapshot_info(snap), 201)

    async def list_snapshots(request: Request) -> JSONResponse:
        svc = services(request)
        sandbox_id = request.query_params.get("sandboxID")
        name = request.query_params.get("name")
        snaps = [
            s
            for s in svc.lifecycle.list_snapshots(sandbox_id)
            if name is None or s.name == name or s.id == name
        ]
        snaps.sort(key=lambda s: (s.created_at, s.id), reverse=True)
        limit = _limit(request.query_params.get("limit"))
        offset = _offset(request.query_params.get("nextToken"))
        page = snaps[offset : offset + limit]
        headers = {}
        if offset + limit < len(snaps):
            headers["x-next-token"] = base64.urlsafe_b64encode(
                str(offset + limit).encode()
            ).decode()
        return JSONResponse([snapshot_info(s) for s in page], headers=headers)

    async def delete_snapshot(request: Request) -> Response:
        """E2B deletes a snapshot as the template it is; 404 once it is gone."""
        svc = services(request)
        template_id = request.path_params["template_id"]
        snap = svc.store.get_snapshot(template_id)
        if snap is None or not visible(snap.team):  # another team's: as if unknown
            raise E2bError(404, f"template or snapshot {template_id!r} not found")
        await svc.lifecycle.delete_snapshot(snap.id)
        return Response(status_code=204)

    async def fork(request: Request) -> JSONResponse:
        """Forks start from one snapshot of the disk taken now; each lives `timeout` s."""
        svc = services(request)
        sandbox_id = request.path_params["sandbox_id"]
        record_or_404(svc, sandbox_id)
        body: ForkBody = await body_of(request, ForkBody)
        forks = await svc.lifecycle.fork(sandbox_id, body.count)
        results = []
        for record in forks:
            record = await svc.lifecycle.set_timeout(record.id, body.timeout)
            results.append({"sandbox": sandbox_body(record, tokens(request), domain(request))})
        return JSONResponse(results, 201)

    async def template_alias(request: Request) -> JSONResponse:
        """E2B's Template.exists(name): 200 for a name a sandbox can be created from (E2B's
        templates, the caller's images and snapshots), else 404."""
        alias = request.path_params["alias"]
        if not is_template(services(request), alias):
            raise E2bError(404, f"template '{alias}' not found")
        return JSONResponse({"templateID": alias, "public": alias in TEMPLATE_IMAGES})

    sid = "/sandboxes/{sandbox_id}"
    app.add_api_route("/templates/aliases/{alias}", template_alias, methods=["GET"])
    app.add_api_route(sid + "/snapshots", create_snapshot, methods=["POST"])
    app.add_api_route("/snapshots", list_snapshots, methods=["GET"])
    app.add_api_route("/templates/{template_id}", delete_snapshot, methods=["DELETE"])
    app.add_api_route(sid + "/fork", fork, methods=["POST"])


def _limit(raw: str | None) -> int:
    try:
        limit = int(raw) if raw else LIST_LIMIT
    except ValueError:
        raise E2bError(400, f"limit {raw!r} must be a number from 1 to 100") from None
    if not 1 <= limit <= LIST_LIMIT:
        raise E2bError(400, f"limit {limit} must be from 1 to 100")
    return limit


def _offset(token: str | None) -> int:
    if not token:
        return 0
    try:
        return max(0, int(base64.urlsafe_b64decode(token.encode()).decode()))
    except (ValueError, UnicodeDecodeError):
        raise E2bError(400, f"nextToken {token!r} is not one this server gave out") from None
