"""API keys: list, create, delete (`/v1/keys`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from hutch.server._deps import ERROR_RESPONSES, Svc, require_key
from hutch.server._errors import KeyNotFound
from hutch.server._models import KeyCreate, KeyCreated, KeyInfo, KeyList
from hutch.server.services._keys import create_key


def build_keys_router() -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], responses=ERROR_RESPONSES)

    @router.get("/keys", response_model=KeyList)
    async def list_keys(svc: Svc) -> KeyList:
        return KeyList(
            keys=[
                KeyInfo(id=k.id, name=k.name, prefix=k.prefix, created_at=k.created_at)
                for k in svc.store.list_keys()
            ]
        )

    @router.post("/keys", status_code=201, response_model=KeyCreated)
    async def create_api_key(svc: Svc, body: KeyCreate) -> KeyCreated:
        new = create_key(svc.store, body.name, e2b=body.e2b)
        r = new.record
        return KeyCreated(
            id=r.id, name=r.name, prefix=r.prefix, created_at=r.created_at, key=new.key
        )

    @router.delete("/keys/{key_id}", status_code=204)
    async def delete_api_key(svc: Svc, key_id: str) -> Response:
        if not svc.store.delete_key(key_id):
            raise KeyNotFound(f"no API key with id {key_id!r}; list them with GET /v1/keys")
        return Response(status_code=204)

    return router
