"""Exposed ports (preview URLs) and the network policy of a sandbox."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hutch.sdk._async.client import AsyncClient


@dataclass(frozen=True)
class ExposedPort:
    """A port of the sandbox reachable at `url` (anyone with the URL can open it)."""

    port: int
    name: str | None
    url: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExposedPort:
        return cls(port=int(data["port"]), name=data.get("name"), url=str(data["url"]))


async def expose_port(
    client: AsyncClient, path: str, port: int, name: str | None = None
) -> ExposedPort:
    body = await client.request("POST", f"{path}/ports", json={"port": port, "name": name})
    return ExposedPort.from_json(body)


async def unexpose_port(client: AsyncClient, path: str, port: int) -> None:
    await client.request("DELETE", f"{path}/ports/{int(port)}")


async def get_exposed_ports(client: AsyncClient, path: str) -> list[ExposedPort]:
    body = await client.request("GET", f"{path}/ports")
    return [ExposedPort.from_json(p) for p in body["ports"]]


async def set_network(
    client: AsyncClient,
    path: str,
    network: str,
    allow: Sequence[str] = (),
    deny: Sequence[str] = (),
) -> dict[str, Any]:
    body = {"network": network, "network_allow": list(allow), "network_deny": list(deny)}
    result: dict[str, Any] = await client.request("PUT", f"{path}/network", json=body)
    return result


async def get_network(client: AsyncClient, path: str) -> dict[str, Any]:
    result: dict[str, Any] = await client.request("GET", f"{path}/network")
    return result


async def wait_for_port(
    client: AsyncClient,
    path: str,
    port: int,
    *,
    mode: str = "tcp",
    http_path: str = "/",
    timeout: float = 60.0,  # noqa: ASYNC109 -- the server's wait, not a client deadline
) -> int | None:
    """Wait until ``port`` listens inside the sandbox; the HTTP status with ``mode="http"``."""
    from hutch.sdk._exceptions import ProcessTimeout

    body = {"port": port, "mode": mode, "path": http_path, "timeout": timeout}
    result = await client.request("POST", f"{path}/wait-for-port", json=body)
    if not result.get("ready"):
        raise ProcessTimeout(f"nothing was listening on port {port} within {timeout:g}s")
    status = result.get("status")
    return int(status) if status is not None else None
