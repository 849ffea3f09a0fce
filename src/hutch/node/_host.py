"""`SandboxHost`: what the API asks of the host that runs a sandbox, by sandbox id.

The API never handles runtime ids (a pooled sandbox runs under its pool's id, see
docs/architecture.md) nor the runtime itself: it calls this interface. `LocalHost` implements
it in-process for one host; `hutch node` serves a `LocalHost` over HTTP (node/_node_api.py)
and the API reaches it there through a remote implementation of the same Protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Protocol

from hutch.node._agent_client import AgentConnection
from hutch.node._bucket_closes import flush_now, tell_agent
from hutch.node._deaths import InitWatch
from hutch.node._disk_backups import receive_disk, send_disk
from hutch.node._pools import WarmPools
from hutch.runtime import (
    BackupTarget,
    BucketMount,
    BucketRequest,
    Image,
    Limits,
    NetworkPolicy,
    OomKill,
    Runtime,
    SandboxSpec,
    SandboxUsage,
    StorageError,
)


class SandboxHost(Protocol):
    """One host's sandboxes. `spec.id` of a `SandboxSpec` is the runtime id the manager chose
    (the sandbox id, or a pool's id); every other argument is a sandbox id."""

    def supports(self, runtime: str) -> bool:
        """Whether this host can run sandboxes with `runtime` ("runc", "gvisor")."""
        ...

    async def create(
        self,
        sandbox_id: str,
        spec: SandboxSpec,
        *,
        defer_network: bool,
        snapshot: str | None = None,
    ) -> None:
        """Start a new sandbox; its agent listens when this returns (`network_ready` next
        when `defer_network`). `snapshot`: a disk snapshot of this host (`take_snapshot`)
        the new disk starts as."""
        ...

    async def prepare_create(self, sandbox_id: str, spec: SandboxSpec) -> None:
        """What `create` can do before the sandbox's row is written, beside its insert (a
        cluster: placement's read); here, nothing."""
        ...

    async def network_ready(self, sandbox_id: str) -> None: ...

    async def start_existing(self, sandbox_id: str, spec: SandboxSpec) -> None:
        """Run a stopped sandbox again on its kept disk (a running one is left as it is)."""
        ...

    async def stop(self, sandbox_id: str) -> None: ...

    async def destroy(self, sandbox_id: str) -> None: ...

    async def pause(self, sandbox_id: str) -> None: ...

    async def resume(self, sandbox_id: str) -> None: ...

    async def states(self, sandbox_ids: Collection[str]) -> dict[str, str]:
        """sandbox id -> runc status (created, running, pausing, paused, stopped) of those
        that have a container; the others are absent."""
        ...

    async def sweep(self, keep: Collection[str]) -> list[str]:
        """Remove every sandbox of this host whose sandbox id is not in `keep`."""
        ...

    async def restore_buckets(self, sandbox_id: str) -> None:
        """Re-adopt, or mount again, the sandbox's bucket mounts (after a restart)."""
        ...

    async def connect_agent(self, sandbox_id: str, *, timeout: float) -> AgentConnection:  # noqa: ASYNC109
        """A new connection to the sandbox's agent (the gateway's one way in)."""
        ...

    def gateway_address(self, sandbox_id: str) -> str | None:
        """The host side of the sandbox's veth (None: no network yet)."""
        ...

    def address(self, sandbox_id: str) -> str | None:
        """The sandbox's address on its veth (None: it has no network)."""
        ...

    async def set_network_policy(self, sandbox_id: str, policy: NetworkPolicy) -> None: ...

    async def mount_bucket(self, sandbox_id: str, request: BucketRequest) -> BucketMount: ...

    async def unmount_bucket(self, sandbox_id: str, mount_path: str) -> None: ...

    async def bucket_mounts(self, sandbox_id: str) -> list[BucketMount]:
        """The sandbox's bucket mounts (on a cluster: as its node has them)."""
        ...

    async def usage(self, sandbox_id: str, *, disk: bool = True) -> SandboxUsage:
        """What the sandbox uses now (its disk too unless `disk` is False: a slower read)."""
        ...

    def storage_usage(self) -> tuple[int, int]:
        """(used, total) bytes of the host's sandbox storage."""
        ...

    async def take_snapshot(
        self, sandbox_id: str, snapshot_id: str, *, spare: bool = False
    ) -> None:
        """Keep the sandbox's disk as it is now, as snapshot `snapshot_id` (files only).
        `spare`: with a copy ready for the next create from it (one btrfs commit more)."""
        ...

    async def fork_disks(self, sandbox_id: str, copy_ids: Sequence[str]) -> None:
        """Copies of the sandbox's disk as it is now, all alike, one per id, each for the one
        create that takes it over (`create(snapshot=id)`); no snapshot is kept. Returns once
        they are under way: a create waits for its copy only where it needs the disk. One a
        create did not take is removed by `delete_snapshot(id)` (or at the next start)."""
        ...

    async def delete_snapshot(self, snapshot_id: str) -> None:
        """Remove a disk snapshot (gone already: nothing to do)."""
        ...

    async def has_snapshot(self, snapshot_id: str) -> bool:
        """Whether the snapshot's data is there (a create from it can start)."""
        ...

    async def send_backup(
        self, snapshot_id: str, target: BackupTarget, name: str, *, parent: str | None
    ) -> bool:
        """Write disk snapshot `snapshot_id` (`take_snapshot`) to object `name` at `target`,
        incrementally against snapshot `parent` if that is on the same host; returns whether
        it was. The host streams it itself (node/_disk_backups.py). Raises BackupFailed."""
        ...

    async def receive_backup(
        self,
        target: BackupTarget,
        names: Sequence[str],
        last: str,
        snapshot_id: str,
        *,
        limits: Limits,
    ) -> None:
        """Receive a backup chain (objects `names`, oldest first) from `target` as disk
        snapshot `snapshot_id`, on a host that can then run a sandbox of `limits` from it
        (`create(snapshot=)`). Raises BackupFailed."""
        ...

    async def claim_pooled(
        self,
        sandbox_id: str,
        image: Image,
        limits: Limits,
        env: Mapping[str, str],
        runtime: str,
    ) -> tuple[str, AgentConnection] | None:
        """A started sandbox of `image` from a warm pool, set up with `limits` and `env`, for
        sandbox `sandbox_id`: (its runtime id, a connection to its agent); None: none ready
        (a cold start). On a cluster the store's claim hands each one out once."""
        ...

    def pool_status(self) -> dict[str, tuple[int, int]]:
        """image name -> (configured size, sandboxes ready now)."""
        ...

    async def drain_pooled(self, image_id: str) -> None:
        """Destroy the ready pooled sandboxes of `image_id` (before the image is removed)."""
        ...

    def start_pools(self) -> None:
        """Start filling the warm pools (in the background)."""
        ...

    async def stop_pools(self) -> None: ...

    async def dead(self, sandbox_ids: Collection[str]) -> dict[str, str]:
        """sandbox id -> why (`runtime_gone: ...`, `oom_killed: ...`, `agent_exited: ...`),
        for those of these running sandboxes whose init has ended and that no longer run;
        the others are watched from now on (node/_deaths.py)."""
        ...

    async def oom_kills(self, sandbox_ids: Collection[str]) -> list[tuple[str, OomKill]]:
        """(sandbox id, kill) for each OOM kill in these sandboxes' user code since the last
        call (each kill is reported once)."""
        ...

    def close_watch(self) -> None:
        """Stop watching inits (the death watch ended)."""
        ...


class LocalHost:
    """This host: the runtime, addressed through the sandbox id -> runtime id mapping."""

    def __init__(
        self,
        runtime: Runtime,
        runtime_id: Callable[[str], str],
        pools: WarmPools | None = None,
    ) -> None:
        self._runtime = runtime
        self._runtime_id = runtime_id
        self._inits: InitWatch | None = None
        self.pools = pools

    @property
    def runtime(self) -> Runtime:
        """The runtime itself, for what only this host's own parts do (the node API's disk
        moves, the egress proxy)."""
        return self._runtime

    def supports(self, runtime: str) -> bool:
        return self._runtime.supports(runtime)

    async def create(
        self,
        sandbox_id: str,
        spec: SandboxSpec,
        *,
        defer_network: bool,
        snapshot: str | None = None,
    ) -> None:
        if snapshot is not None:
            spec = replace(spec, disk_from=self._runtime.snapshots.path(snapshot))
        await self._runtime.create(spec, defer_network=defer_network)

    async def prepare_create(self, sandbox_id: str, spec: SandboxSpec) -> None:
        return None  # one host: nothing to read before its create

    async def network_ready(self, sandbox_id: str) -> None:
        await self._runtime.network_ready(self._runtime_id(sandbox_id))

    async def start_existing(self, sandbox_id: str, spec: SandboxSpec) -> None:
        await self._runtime.start_existing(spec)

    async def stop(self, sandbox_id: str) -> None:
        await self._runtime.stop(self._runtime_id(sandbox_id))

    async def destroy(self, sandbox_id: str) -> None:
        await self._runtime.destroy(self._runtime_id(sandbox_id))

    async def pause(self, sandbox_id: str) -> None:
        await self._runtime.pause(self._runtime_id(sandbox_id))

    async def resume(self, sandbox_id: str) -> None:
        await self._runtime.resume(self._runtime_id(sandbox_id))

    async def states(self, sandbox_ids: Collection[str]) -> dict[str, str]:
        containers = await self._runtime.list_sandboxes()
        found = {sid: containers.get(self._runtime_id(sid)) for sid in sandbox_ids}
        return {sid: state for sid, state in found.items() if state is not None}

    async def sweep(self, keep: Collection[str]) -> list[str]:
        return await self._runtime.sweep({self._runtime_id(sid) for sid in keep})

    async def restore_buckets(self, sandbox_id: str) -> None:
        rid = self._runtime_id(sandbox_id)
        await self._runtime.buckets.restore(rid, self._runtime.rootfs(rid))
        mounts = self._runtime.buckets.list(rid)
        if mounts:  # a restarted sandbox's agent knows nothing of them
            await tell_agent(self.agent_socket(sandbox_id), mounts)

    async def connect_agent(self, sandbox_id: str, *, timeout: float) -> AgentConnection:  # noqa: ASYNC109
        return await AgentConnection.connect(self.agent_socket(sandbox_id), timeout=timeout)

    def agent_socket(self, sandbox_id: str) -> Path:
        return self._runtime.agent_socket(self._runtime_id(sandbox_id))

    def gateway_address(self, sandbox_id: str) -> str | None:
        return self._runtime.sandbox_gateway(self._runtime_id(sandbox_id))

    def address(self, sandbox_id: str) -> str | None:
        return self._runtime.sandbox_address(self._runtime_id(sandbox_id))

    async def set_network_policy(self, sandbox_id: str, policy: NetworkPolicy) -> None:
        await self._runtime.set_network_policy(self._runtime_id(sandbox_id), policy)

    async def mount_bucket(self, sandbox_id: str, request: BucketRequest) -> BucketMount:
        rid = self._runtime_id(sandbox_id)
        mount = await self._runtime.buckets.mount(rid, self._runtime.rootfs(rid), request)
        await tell_agent(self.agent_socket(sandbox_id), self._runtime.buckets.list(rid))
        return mount

    async def unmount_bucket(self, sandbox_id: str, mount_path: str) -> None:
        rid = self._runtime_id(sandbox_id)
        # Under gVisor a file the sandbox closed may still be open on the host: its close
        # waits in the sentry's queue, and rclone uploads only after the host's close.
        await flush_now(self.agent_socket(sandbox_id), self._runtime.buckets.list(rid))
        await self._runtime.buckets.unmount(rid, self._runtime.rootfs(rid), mount_path)
        await tell_agent(self.agent_socket(sandbox_id), self._runtime.buckets.list(rid))

    async def bucket_mounts(self, sandbox_id: str) -> list[BucketMount]:
        return self._runtime.buckets.list(self._runtime_id(sandbox_id))

    async def usage(self, sandbox_id: str, *, disk: bool = True) -> SandboxUsage:
        return await self._runtime.usage(self._runtime_id(sandbox_id), disk=disk)

    def storage_usage(self) -> tuple[int, int]:
        return self._runtime.storage_usage()

    async def take_snapshot(
        self, sandbox_id: str, snapshot_id: str, *, spare: bool = False
    ) -> None:
        await asyncio.to_thread(
            partial(self._runtime.snapshots.take, spare=spare),
            self._runtime_id(sandbox_id),
            snapshot_id,
        )

    async def fork_disks(self, sandbox_id: str, copy_ids: Sequence[str]) -> None:
        self._runtime.snapshots.fork_later(self._runtime_id(sandbox_id), copy_ids)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        snapshots = self._runtime.snapshots
        with contextlib.suppress(StorageError):  # a commit that failed left nothing
            await snapshots.settle(snapshots.path(snapshot_id))
        if snapshots.available(snapshot_id):  # a fork's copy, taken over by its create, is not
            await asyncio.to_thread(snapshots.delete, snapshot_id)

    async def has_snapshot(self, snapshot_id: str) -> bool:
        return self._runtime.snapshots.available(snapshot_id)

    async def send_backup(
        self, snapshot_id: str, target: BackupTarget, name: str, *, parent: str | None
    ) -> bool:
        return await send_disk(self._runtime, snapshot_id, target, name, parent)

    async def receive_backup(
        self,
        target: BackupTarget,
        names: Sequence[str],
        last: str,
        snapshot_id: str,
        *,
        limits: Limits,
    ) -> None:
        await receive_disk(self._runtime, target, names, last, snapshot_id)

    async def claim_pooled(
        self,
        sandbox_id: str,
        image: Image,
        limits: Limits,
        env: Mapping[str, str],
        runtime: str,
    ) -> tuple[str, AgentConnection] | None:
        if self.pools is None:
            return None
        return await self.pools.claim(image, limits, env, runtime)

    def pool_status(self) -> dict[str, tuple[int, int]]:
        return {} if self.pools is None else self.pools.status()

    async def drain_pooled(self, image_id: str) -> None:
        if self.pools is not None:
            await self.pools.drain_image(image_id)

    def start_pools(self) -> None:
        if self.pools is not None:
            self.pools.start()

    async def stop_pools(self) -> None:
        if self.pools is not None:
            await self.pools.stop()

    def start_watch(self) -> None:
        """Begin watching inits and OOM kills now rather than at the first question (a
        node: the replicas ask about a sandbox only once they see it)."""
        self._init_watch()

    def _init_watch(self) -> InitWatch:
        if self._inits is None:
            self._inits = InitWatch(self._runtime)
        return self._inits

    async def dead(self, sandbox_ids: Collection[str]) -> dict[str, str]:
        by_rid = {self._runtime_id(sid): sid for sid in sandbox_ids}
        found = await self._init_watch().dead(by_rid)
        return {by_rid[rid]: why for rid, why in found.items()}

    async def oom_kills(self, sandbox_ids: Collection[str]) -> list[tuple[str, OomKill]]:
        by_rid = {self._runtime_id(sid): sid for sid in sandbox_ids}
        return [(by_rid[k.runtime_id], k) for k in self._init_watch().oom_kills(by_rid)]

    def close_watch(self) -> None:
        if self._inits is not None:
            self._inits.close()
            self._inits = None
