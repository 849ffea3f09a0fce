"""``POST /v1/sandboxes/{id}/wait-for-port``: wait for a port to listen, whatever started it.

The process route of the same name also ends when its process does; this one is for a server
started any other way (a session, a terminal, a user's ``nohup``), as ``hutch wait-port`` does.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from hutch._wire.agent_calls import PortCheckArgs
from hutch.server._deps import ERROR_RESPONSES, Svc, require_key


class SandboxPortWait(BaseModel):
    model_config = ConfigDict(extra="forbid")

    port: int = Field(ge=1, le=65535)
    mode: Literal["tcp", "http"] = "tcp"
    path: str = Field(default="/", pattern=r"^/")
    status_min: int = Field(default=200, ge=100, le=599)
    status_max: int = Field(default=399, ge=100, le=599)
    timeout: float = Field(default=60.0, gt=0, le=3600)


class SandboxPortWaitResult(BaseModel):
    ready: bool
    status: int | None = None


def build_port_wait_router() -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], responses=ERROR_RESPONSES)

    @router.post("/sandboxes/{sandbox_id}/wait-for-port", response_model=SandboxPortWaitResult)
    async def wait_for_port(
        svc: Svc, sandbox_id: str, body: SandboxPortWait
    ) -> SandboxPortWaitResult:
        """Poll the port from inside the sandbox (its loopback) until it accepts (``http``:
        answers ``GET path`` with a status in range) or ``timeout`` seconds pass; ``ready``
        says which."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + body.timeout
        check: PortCheckArgs = {"port": body.port, "mode": body.mode, "path": body.path}
        while True:
            result = await svc.sandboxes.agent_call(sandbox_id)("port_check", **check)
            status = result.get("status")
            ready = bool(result.get("ready")) and (
                status is None or body.status_min <= int(status) <= body.status_max
            )
            if ready or loop.time() > deadline:
                return SandboxPortWaitResult(ready=ready, status=status)
            await asyncio.sleep(0.1)

    return router
