"""Warm pools: how many started sandboxes each pooled image has ready (`GET /v1/pools`)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field


class PoolInfo(BaseModel):
    image: str
    size: int = Field(description="how many ready sandboxes the pool keeps (HUTCH_WARM_POOLS)")
    ready: int = Field(description="how many are ready now (a create takes one at once)")


class PoolList(BaseModel):
    pools: list[PoolInfo]


def build_pools_router(require_key: Callable[..., Coroutine[Any, Any, object]]) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])

    @router.get("/pools", response_model=PoolList)
    async def list_pools(request: Request) -> PoolList:
        status = request.app.state.services.host.pool_status()
        return PoolList(
            pools=[
                PoolInfo(image=name, size=size, ready=ready)
                for name, (size, ready) in sorted(status.items())
            ]
        )

    return router
