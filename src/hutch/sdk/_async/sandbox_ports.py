"""A sandbox's ways in and out: bucket mounts, exposed ports and preview URLs, the egress
policy. Short names for `Buckets` (buckets.py) and `Ports` (ports.py); `AsyncSandbox` inherits
them."""

# ruff: noqa: ASYNC109 -- `timeout` in wait_for_port is enforced by the server.

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from typing import Any

from hutch.sdk._async.buckets import Buckets
from hutch.sdk._async.ports import ExposedPort, Ports
from hutch.sdk._models import BucketMount


class PortMethods:
    """Buckets, ports and network (mixed into `AsyncSandbox`, which sets these fields)."""

    buckets: Buckets
    ports: Ports

    async def mount_bucket(
        self,
        bucket: str,
        mount_path: str,
        endpoint: str,
        credentials: Mapping[str, str],
        read_only: bool = False,
        prefix: str | None = None,
        *,
        region: str | None = None,
    ) -> BucketMount:
        """Mount an S3-compatible bucket inside the running sandbox; see :meth:`Buckets.mount`."""
        return await self.buckets.mount(
            bucket,
            mount_path,
            endpoint,
            credentials,
            read_only,
            prefix,
            region=region,
        )

    async def unmount_bucket(self, mount_path: str) -> None:
        """Unmount the bucket at ``mount_path``; see :meth:`Buckets.unmount`."""
        await self.buckets.unmount(mount_path)

    async def list_bucket_mounts(self) -> builtins.list[BucketMount]:
        """The buckets mounted in this sandbox."""
        return await self.buckets.list()

    async def expose_port(self, port: int, name: str | None = None) -> ExposedPort:
        """Make a port reachable at a preview URL; see :meth:`Ports.expose`."""
        return await self.ports.expose(port, name)

    async def wait_for_port(
        self, port: int, *, mode: str = "tcp", path: str = "/", timeout: float = 60.0
    ) -> int | None:
        """Wait until something listens on ``port`` inside the sandbox, whatever started it
        (``mode="http"``: until ``GET path`` answers 200-399; returns that status).

        Raises:
            ProcessTimeout: Nothing was ready within ``timeout`` seconds.
            InvalidRequest: ``port`` is outside 1-65535 or ``mode`` is unknown.
        """
        return await self.ports.wait_for_port(port, mode=mode, http_path=path, timeout=timeout)

    async def get_preview_url(self, port: int) -> str:
        """The preview URL of a port, exposing it first if needed (see `expose_port`)."""
        return (await self.expose_port(port)).url

    async def unexpose_port(self, port: int) -> None:
        """Close a port's preview URL; see :meth:`Ports.unexpose`."""
        await self.ports.unexpose(port)

    async def get_exposed_ports(self) -> builtins.list[ExposedPort]:
        """The sandbox's exposed ports with their preview URLs, by port number."""
        return await self.ports.list()

    async def get_network(self) -> dict[str, Any]:
        """The sandbox's egress policy and address; see :meth:`Ports.get_network`."""
        return await self.ports.get_network()

    async def set_network(
        self, network: str, allow: Sequence[str] = (), deny: Sequence[str] = ()
    ) -> dict[str, Any]:
        """Replace the sandbox's egress policy; see :meth:`Ports.set_network`."""
        return await self.ports.set_network(network, allow, deny)
