"""Exposed ports (preview URLs) and the network policy of a sandbox."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hutch.sdk._async.client import AsyncClient
from hutch.sdk._exceptions import ProcessTimeout


@dataclass(frozen=True)
class ExposedPort:
    """A port of the sandbox reachable at `url` (anyone with the URL can open it)."""

    port: int
    name: str | None
    url: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExposedPort:
        return cls(port=int(data["port"]), name=data.get("name"), url=str(data["url"]))


class Ports:
    """Preview URLs of the sandbox's ports, and its network policy (``sb.ports``)."""

    def __init__(self, client: AsyncClient, sandbox_path: str) -> None:
        self._client = client
        self._path = sandbox_path

    async def expose(self, port: int, name: str | None = None) -> ExposedPort:
        """Make a port of the sandbox reachable at a preview URL.

        The URL is ``http://{port}-{sandbox_id}-{token}.{preview_domain}:{server_port}/``;
        anyone who has it can open it. Exposing a port twice returns the same URL.

        Args:
            port: The TCP port a server in the sandbox listens on (1-65535, any address).
            name: An optional label, returned by `get_exposed_ports`.

        Returns:
            The exposed port with its URL.

        Raises:
            InvalidRequest: The port is out of range or reserved (code ``invalid_port``).
            SandboxNotFound: The sandbox does not exist.
        """
        body = {"port": port, "name": name}
        return ExposedPort.from_json(
            await self._client.request("POST", f"{self._path}/ports", json=body)
        )

    async def unexpose(self, port: int) -> None:
        """Close a port's preview URL: it answers 404 at once, open connections close.

        Raises:
            APIError: The port is not exposed (code ``port_not_exposed``).
        """
        await self._client.request("DELETE", f"{self._path}/ports/{int(port)}")

    async def list(self) -> builtins.list[ExposedPort]:
        """The sandbox's exposed ports with their preview URLs, by port number."""
        body = await self._client.request("GET", f"{self._path}/ports")
        return [ExposedPort.from_json(p) for p in body["ports"]]

    async def set_network(
        self, network: str, allow: Sequence[str] = (), deny: Sequence[str] = ()
    ) -> dict[str, Any]:
        """Replace the sandbox's egress policy; effective for its next packet.

        Args:
            network: ``"none"`` (no outbound connections) or ``"internet"``.
            allow: CIDRs reachable even with ``"none"``.
            deny: CIDRs never reachable (wins over `allow`).

        Returns:
            The policy now in force and the sandbox's address:
            ``{"network", "network_allow", "network_deny", "address"}``.
        """
        body = {"network": network, "network_allow": list(allow), "network_deny": list(deny)}
        result: dict[str, Any] = await self._client.request(
            "PUT", f"{self._path}/network", json=body
        )
        return result

    async def get_network(self) -> dict[str, Any]:
        """The sandbox's egress policy and address:
        ``{"network", "network_allow", "network_deny", "address"}``."""
        result: dict[str, Any] = await self._client.request("GET", f"{self._path}/network")
        return result

    async def wait_for_port(
        self,
        port: int,
        *,
        mode: str = "tcp",
        http_path: str = "/",
        timeout: float = 60.0,  # noqa: ASYNC109 -- the server's wait, not a client deadline
    ) -> int | None:
        """Wait until ``port`` listens inside the sandbox; the HTTP status with ``mode="http"``.

        Raises:
            ProcessTimeout: Nothing listened on it within ``timeout`` seconds.
        """
        body = {"port": port, "mode": mode, "path": http_path, "timeout": timeout}
        result = await self._client.request("POST", f"{self._path}/wait-for-port", json=body)
        if not result.get("ready"):
            raise ProcessTimeout(f"nothing was listening on port {port} within {timeout:g}s")
        status = result.get("status")
        return int(status) if status is not None else None
