"""Routes are built with the app (server/_route_state.py): FastAPI otherwise builds an included
router's routes (a pydantic adapter per parameter and response model) on the first request
that reaches the router, and that request waited for it: the first `pause` of a server took
~250 ms quiet instead of ~10 ms (the p99 of pause -> resume -> first exec)."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
from fastapi import APIRouter, FastAPI

from hutch.server import ServerConfig, create_app
from hutch.server._route_state import build_routes_now


class Thing(pydantic.BaseModel):
    id: str
    state: str


def _app() -> FastAPI:
    router = APIRouter(prefix="/v1")

    @router.post("/things/{thing_id}/pause", response_model=Thing)
    async def pause(thing_id: str) -> Thing:
        return Thing(id=thing_id, state="paused")

    app = FastAPI()
    app.include_router(router)
    return app


def _adapters_made(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The pydantic adapters made from now on (what building a route costs)."""
    made: list[Any] = []
    init = pydantic.TypeAdapter.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        made.append(args)
        init(self, *args, **kwargs)

    monkeypatch.setattr(pydantic.TypeAdapter, "__init__", counting)
    return made


async def _pause(app: FastAPI) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.post("/v1/things/t1/pause")


@pytest.mark.parametrize("built", [True, False])
def test_the_first_request_to_a_router_builds_nothing_once_the_app_did(
    monkeypatch: pytest.MonkeyPatch, built: bool
) -> None:
    app = _app()
    if built:
        assert build_routes_now(app) >= 1
    made = _adapters_made(monkeypatch)
    response = asyncio.run(_pause(app))
    assert response.json() == {"id": "t1", "state": "paused"}
    # Without the build (the control), the first request makes them: the test can fail.
    assert (made == []) is built, made


def test_the_server_app_is_built_when_it_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    with tempfile.TemporaryDirectory(prefix="hutch-route-state-", dir="/var/tmp") as home:
        app = create_app(ServerConfig(home=Path(home)))
        made = _adapters_made(monkeypatch)
        assert build_routes_now(app) >= 10  # the API's routers, the lifecycle's among them
        assert made == []
