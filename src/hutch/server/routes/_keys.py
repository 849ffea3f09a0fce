"""API keys: list, create, revoke (`/v1/keys`, admin keys only)."""

from __future__ import annotations

import time
from datetime import datetime

from fastapi import APIRouter, Response

from hutch.server._deps import ERROR_RESPONSES, AdminDep, Svc
from hutch.server._errors import InvalidRequest, KeyNotFound
from hutch.server._models import KeyCreate, KeyCreated, KeyInfo, KeyList
from hutch.server.services._keys import create_key, iso_of
from hutch.server.store._sqlite import ApiKeyRecord


def key_info(k: ApiKeyRecord) -> KeyInfo:
    return KeyInfo(
        id=k.id,
        name=k.name,
        prefix=k.prefix,
        created_at=k.created_at,
        team=k.team,
        role=k.role,
        expires_at=iso_of(k.expires_at) if k.expires_at is not None else None,
    )


def _expiry(body: KeyCreate) -> float | None:
    if body.expires_in is not None and body.expires_at is not None:
        raise InvalidRequest("give expires_in or expires_at, not both")
    if body.expires_in is not None:
        return time.time() + float(body.expires_in) if float(body.expires_in) else None
    if body.expires_at is not None:
        try:
            when = datetime.fromisoformat(body.expires_at.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRequest(
                f"expires_at {body.expires_at!r} is not an ISO 8601 time "
                "(e.g. 2027-01-01T00:00:00Z)"
            ) from None
        if when.tzinfo is None:
            raise InvalidRequest("expires_at needs a time zone (e.g. a trailing Z for UTC)")
        if when.timestamp() <= time.time():
            raise InvalidRequest(f"expires_at {body.expires_at} is in the past")
        return when.timestamp()
    return None


def build_keys_router() -> APIRouter:
    router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)

    @router.get("/keys", response_model=KeyList)
    async def list_keys(svc: Svc, _: AdminDep) -> KeyList:
        return KeyList(keys=[key_info(k) for k in svc.store.list_keys()])

    @router.post("/keys", status_code=201, response_model=KeyCreated)
    async def create_api_key(svc: Svc, _: AdminDep, body: KeyCreate) -> KeyCreated:
        svc.teams.get(body.team)
        new = create_key(
            svc.store,
            body.name,
            e2b=body.e2b,
            team=body.team,
            role=body.role,
            expires_at=_expiry(body),
        )
        return KeyCreated(**key_info(new.record).model_dump(), key=new.key)

    @router.delete("/keys/{key_id}", status_code=204)
    async def delete_api_key(svc: Svc, _: AdminDep, key_id: str) -> Response:
        """Revoke: the key fails from its next request on."""
        if not svc.store.delete_key(key_id):
            raise KeyNotFound(f"no API key with id {key_id!r}; list them with GET /v1/keys")
        return Response(status_code=204)

    return router
