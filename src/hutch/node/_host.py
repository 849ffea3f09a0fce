"""`SandboxHost`: what the API asks of the host that runs a sandbox, by sandbox id.

The API never handles runtime ids (a pooled sandbox runs under its pool's id, see
docs/architecture.md) nor the runtime itself: it calls this interface. `LocalHost` implements
it in-process for one host; a node API across hosts would implement the same Protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from hutch.runtime import BucketMount, BucketRequest, NetworkPolicy, Runtime, SandboxUsage


class SandboxHost(Protocol):
    def address(self, sandbox_id: str) -> str | None:
        """The sandbox's address on its veth (None: it has no network)."""
        ...

    async def set_network_policy(self, sandbox_id: str, policy: NetworkPolicy) -> None: ...

    async def mount_bucket(self, sandbox_id: str, request: BucketRequest) -> BucketMount: ...

    async def unmount_bucket(self, sandbox_id: str, mount_path: str) -> None: ...

    def bucket_mounts(self, sandbox_id: str) -> list[BucketMount]: ...

    async def usage(self, sandbox_id: str, *, disk: bool = True) -> SandboxUsage:
        """What the sandbox uses now (its disk too unless `disk` is False: a slower read)."""
        ...

    def storage_usage(self) -> tuple[int, int]:
        """(used, total) bytes of the host's sandbox storage."""
        ...


class LocalHost:
    """This host: the runtime, addressed through the sandbox id -> runtime id mapping."""

    def __init__(self, runtime: Runtime, runtime_id: Callable[[str], str]) -> None:
        self._runtime = runtime
        self._runtime_id = runtime_id

    def address(self, sandbox_id: str) -> str | None:
        return self._runtime.sandbox_address(self._runtime_id(sandbox_id))

    async def set_network_policy(self, sandbox_id: str, policy: NetworkPolicy) -> None:
        await self._runtime.set_network_policy(self._runtime_id(sandbox_id), policy)

    async def mount_bucket(self, sandbox_id: str, request: BucketRequest) -> BucketMount:
        rid = self._runtime_id(sandbox_id)
        return await self._runtime.buckets.mount(rid, self._runtime.rootfs(rid), request)

    async def unmount_bucket(self, sandbox_id: str, mount_path: str) -> None:
        rid = self._runtime_id(sandbox_id)
        await self._runtime.buckets.unmount(rid, self._runtime.rootfs(rid), mount_path)

    def bucket_mounts(self, sandbox_id: str) -> list[BucketMount]:
        return self._runtime.buckets.list(self._runtime_id(sandbox_id))

    async def usage(self, sandbox_id: str, *, disk: bool = True) -> SandboxUsage:
        return await self._runtime.usage(self._runtime_id(sandbox_id), disk=disk)

    def storage_usage(self) -> tuple[int, int]:
        return self._runtime.storage_usage()
