"""The nodes of a cluster (`hutch api`, docs/cluster.md): list them, drain one (and move its
sandboxes to other nodes: services/_moves.py), make it ready.

On one host (`hutch serve`) the list is empty and drain answers 404.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from hutch.server._deps import ERROR_RESPONSES, Svc, require_key
from hutch.server._errors import NodeNotFound
from hutch.server.store._nodes import NodeRecord


class NodeInfo(BaseModel):
    name: str
    address: str
    state: str = Field(description="ready | draining (no new sandboxes) | lost (no heartbeat)")
    cpu: float
    memory_mb: int
    disk_mb: int
    runtimes: list[str] = Field(description='sandbox runtimes it can run: "runc", "gvisor"')
    sandboxes: int = Field(description="sandboxes placed on it")
    heartbeat_age: float = Field(description="seconds since its last heartbeat")


class NodeList(BaseModel):
    nodes: list[NodeInfo]


class SandboxMove(BaseModel):
    sandbox_id: str
    to: str | None = Field(description="the node it is on now (None: it did not move)")
    error: str | None = Field(description="why it did not move or start (None: it did)")


class NodeMoves(BaseModel):
    node: NodeInfo
    moves: list[SandboxMove]


def _info(svc: Svc, node: NodeRecord) -> NodeInfo:
    return NodeInfo(
        name=node.name,
        address=node.address,
        state=node.state,
        cpu=node.cpu,
        memory_mb=node.memory_mb,
        disk_mb=node.disk_mb,
        runtimes=list(node.runtimes),
        sandboxes=len(svc.store.sandboxes_on(node.name)),
        heartbeat_age=round(max(0.0, time.time() - node.last_heartbeat), 1),
    )


def build_nodes_router() -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], tags=["nodes"])

    @router.get("/nodes", response_model=NodeList, responses=ERROR_RESPONSES)
    async def list_nodes(svc: Svc) -> NodeList:
        return NodeList(nodes=[_info(svc, n) for n in svc.store.list_nodes()])

    @router.post("/nodes/{name}/drain", response_model=NodeInfo, responses=ERROR_RESPONSES)
    async def drain_node(name: str, svc: Svc) -> NodeInfo:
        """No new sandbox goes to the node; those on it keep running (`/move` moves them)."""
        return _set(svc, name, "draining")

    @router.post("/nodes/{name}/move", response_model=NodeMoves, responses=ERROR_RESPONSES)
    async def move_off_node(name: str, svc: Svc) -> NodeMoves:
        """Drain the node and move its sandboxes to other nodes: each is stopped, its disk
        sent to the node placement chooses, and started there if it was running (a paused one
        stays stopped: memory does not move). One that cannot move stays, with the reason."""
        _set(svc, name, "draining")
        if svc.mover is None:
            raise NodeNotFound(f"no node {name!r}: this server runs its sandboxes itself")
        moves = await svc.mover.empty(name)
        node = svc.store.get_node(name)
        assert node is not None
        return NodeMoves(
            node=_info(svc, node),
            moves=[SandboxMove(sandbox_id=m.sandbox_id, to=m.to, error=m.error) for m in moves],
        )

    @router.post("/nodes/{name}/ready", response_model=NodeInfo, responses=ERROR_RESPONSES)
    async def undrain_node(name: str, svc: Svc) -> NodeInfo:
        """Take new sandboxes again (a drained node); a lost node gets ready by its heartbeat."""
        return _set(svc, name, "ready", only_from="draining")

    return router


def _set(svc: Svc, name: str, state: str, only_from: str | None = None) -> NodeInfo:
    node = svc.store.get_node(name)
    if node is None:
        raise NodeNotFound(
            f"no node {name!r} in this cluster; list them with GET /v1/nodes (`hutch node ls`)"
        )
    svc.store.set_node_state(name, state, only_from=only_from)  # type: ignore[arg-type]
    updated = svc.store.get_node(name)
    assert updated is not None
    return _info(svc, updated)
