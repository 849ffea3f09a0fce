"""Teams and their quotas (`/v1/teams`, admin keys only)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Response

from hutch.server._deps import ERROR_RESPONSES, AdminDep, Svc
from hutch.server._team_models import QuotaInfo, QuotaUpdate, TeamCreate, TeamInfo, TeamList
from hutch.server.store._teams import Quota, TeamRecord


def team_info(record: TeamRecord) -> TeamInfo:
    return TeamInfo(
        name=record.name, created_at=record.created_at, quota=QuotaInfo(**asdict(record.quota))
    )


def _changes(body: QuotaUpdate) -> dict[str, Any]:
    return body.model_dump(exclude_unset=True)


def build_teams_router() -> APIRouter:
    router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)

    @router.get("/teams", response_model=TeamList)
    async def list_teams(svc: Svc, _: AdminDep) -> TeamList:
        return TeamList(teams=[team_info(t) for t in svc.teams.list()])

    @router.post("/teams", status_code=201, response_model=TeamInfo)
    async def create_team(svc: Svc, _: AdminDep, body: TeamCreate) -> TeamInfo:
        quota = Quota().merged(_changes(body.quota)) if body.quota is not None else None
        return team_info(svc.teams.create(body.name, quota))

    @router.get("/teams/{team}", response_model=TeamInfo)
    async def get_team(svc: Svc, _: AdminDep, team: str) -> TeamInfo:
        return team_info(svc.teams.get(team))

    @router.delete("/teams/{team}", status_code=204)
    async def delete_team(svc: Svc, _: AdminDep, team: str) -> Response:
        """Refused while the team owns sandboxes or snapshots; its keys go with it."""
        svc.teams.delete(team)
        return Response(status_code=204)

    @router.patch("/teams/{team}/quota", response_model=TeamInfo)
    async def set_quota(svc: Svc, _: AdminDep, team: str, body: QuotaUpdate) -> TeamInfo:
        return team_info(svc.teams.set_quota(team, _changes(body)))

    return router
