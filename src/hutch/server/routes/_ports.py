"""Routes for a sandbox's network: its egress policy and its exposed ports (preview URLs)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response

from hutch.proxy import new_token, preview_url
from hutch.runtime import NetworkPolicy
from hutch.server._deps import ERROR_RESPONSES, Svc, require_key
from hutch.server._errors import InvalidRequest, PortNotExposed, SandboxNotRunning
from hutch.server._models import (
    ExposedPort,
    ExposedPortList,
    NetworkInfo,
    NetworkUpdate,
    PortExpose,
)
from hutch.server._offline_env import offline_env_change
from hutch.server.services._keys import now_iso
from hutch.server.store._sqlite import PortRecord


def _port_rule(port: int, reserved: frozenset[int]) -> None:
    if not 1 <= port <= 65535:
        raise InvalidRequest(
            f"port {port} is out of range: expose a TCP port from 1 to 65535",
            code="invalid_port",
            fields=[{"loc": ["body", "port"], "message": "must be 1-65535"}],
        )
    if port in reserved:
        raise InvalidRequest(
            f"port {port} is reserved by Hutch (reserved: {sorted(reserved)}); use another port",
            code="invalid_port",
            fields=[{"loc": ["body", "port"], "message": "reserved by Hutch"}],
        )


async def _follow_offline_env(
    svc: Svc, sandbox_id: str, policy: NetworkPolicy, user_env: dict[str, str]
) -> None:
    await svc.sandboxes.agent_call(sandbox_id)("set_env", env=offline_env_change(policy, user_env))


def build_ports_router() -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], responses=ERROR_RESPONSES)

    def to_port(svc: Svc, record: PortRecord) -> ExposedPort:
        previews = svc.previews
        url = preview_url(
            previews.domain,
            previews.url_port or svc.config.port,
            record.sandbox_id,
            record.port,
            record.token,
            previews.scheme,
        )
        return ExposedPort(port=record.port, name=record.name, url=url)

    @router.post("/sandboxes/{sandbox_id}/ports", response_model=ExposedPort)
    async def expose_port(svc: Svc, sandbox_id: str, body: PortExpose) -> ExposedPort:
        _port_rule(body.port, svc.config.reserved_ports)
        record = svc.sandboxes.get(sandbox_id)
        if record.status != "running":
            raise SandboxNotRunning(f"sandbox {sandbox_id} is {record.status}")
        stored = svc.store.insert_port(
            PortRecord(sandbox_id, body.port, body.name, new_token(), now_iso())
        )
        svc.previews.add(sandbox_id, stored.port, stored.token)
        await svc.previews.settled()
        return to_port(svc, stored)

    @router.get("/sandboxes/{sandbox_id}/ports", response_model=ExposedPortList)
    async def get_exposed_ports(svc: Svc, sandbox_id: str) -> ExposedPortList:
        svc.sandboxes.get(sandbox_id)
        return ExposedPortList(ports=[to_port(svc, r) for r in svc.store.list_ports(sandbox_id)])

    @router.delete("/sandboxes/{sandbox_id}/ports/{port}", status_code=204)
    async def unexpose_port(
        svc: Svc, sandbox_id: str, port: Annotated[int, Path(ge=1, le=65535)]
    ) -> Response:
        svc.sandboxes.get(sandbox_id)
        svc.previews.remove(sandbox_id, port)
        if not svc.store.delete_port(sandbox_id, port):
            raise PortNotExposed(f"port {port} of sandbox {sandbox_id} is not exposed")
        await svc.previews.settled()
        return Response(status_code=204)

    @router.get("/sandboxes/{sandbox_id}/network", response_model=NetworkInfo)
    async def get_network(svc: Svc, sandbox_id: str) -> NetworkInfo:
        r = svc.sandboxes.get(sandbox_id)
        return NetworkInfo(
            network=r.network,
            network_allow=r.network_allow,
            network_deny=r.network_deny,
            address=svc.host.address(sandbox_id),
        )

    @router.put("/sandboxes/{sandbox_id}/network", response_model=NetworkInfo)
    async def set_network(svc: Svc, sandbox_id: str, body: NetworkUpdate) -> NetworkInfo:
        policy = await svc.sandboxes.policy_of(body.network, body.network_allow, body.network_deny)
        # NB: the sandbox's lock orders this with the re-resolution of allowed host names.
        async with svc.sandboxes.lock_for(sandbox_id):
            record = svc.sandboxes.get(sandbox_id)
            if record.status != "running":
                raise SandboxNotRunning(f"sandbox {sandbox_id} is {record.status}")
            await svc.host.set_network_policy(sandbox_id, policy)
            await _follow_offline_env(svc, sandbox_id, policy, record.env)
            record.network = body.network
            record.network_allow = list(body.network_allow)
            record.network_deny = list(body.network_deny)
            svc.store.update_sandbox_spec(record)
        return await get_network(svc, sandbox_id)

    return router
