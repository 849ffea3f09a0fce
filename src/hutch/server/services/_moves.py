"""`hutch node drain --move`: empty a node by moving its sandboxes' disks to other nodes.

Each sandbox is stopped (its processes end; memory cannot move), its disk is snapshotted on
its node and pulled by the node placement chose (node to node, a `btrfs send` stream over
the node API: node/_disk_moves.py), made into a container there and stopped; then the store
places it on the new node and the old container goes. One that was running is started again
on its new node; a paused one stays stopped (its memory is lost), a stopped one stopped.
A sandbox that fails to move stays where it was, stopped, with the reason. Its bucket
mounts move with it: the new node pulls each mount's request, credentials included, from the
old one (node/_bucket_moves.py) and mounts them when it starts; the old node's rclone
processes go with the old container. Credentials so stay on the nodes that run the mounts,
as they did: no replica or database row ever holds them.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from dataclasses import dataclass

from hutch.node import NodeRefused, NodeUnavailable
from hutch.runtime import ImageNotFound, ImageStore, SandboxRuntimeError
from hutch.server._errors import ApiError
from hutch.server.services._cluster_host import ClusterHost
from hutch.server.services._lifecycle import Lifecycle
from hutch.server.services._placement import Need
from hutch.server.services._sandboxes import SandboxManager
from hutch.server.store._sqlite import SandboxRecord, Store

log = logging.getLogger("hutch.server")

MOVABLE = ("running", "paused", "stopped")
# What a move names the snapshot of a disk it moves, on the old node and on the new one.
MOVE_SNAPSHOT_PREFIX = "mv-"
# Longer than any move uses its snapshot: taken (a node call: 30 s at most), pulled (10 min at
# most: node/_remote.py's MOVE_TIMEOUT), then made a container and stopped (30 s each). A
# node's start removes the older ones (server/_node_daemon.py): their move ended, or died
# with its replica, or its node was away when it wanted to delete them.
MOVE_SNAPSHOT_LEFT_AFTER = 20 * 60.0


@dataclass
class Moved:
    sandbox_id: str
    to: str | None  # None: it did not move
    error: str | None = None


class Mover:
    def __init__(
        self,
        cluster: ClusterHost,
        manager: SandboxManager,
        lifecycle: Lifecycle,
        store: Store,
        images: ImageStore,
    ) -> None:
        self._cluster = cluster
        self._manager = manager
        self._lifecycle = lifecycle
        self._store = store
        self._images = images

    async def empty(self, node: str) -> list[Moved]:
        """Move every sandbox of `node` (draining: nothing new lands there meanwhile)."""
        results = []
        for sandbox_id in self._store.sandboxes_on(node):
            record = self._store.get_sandbox(sandbox_id)
            if record is None:
                continue
            if record.status not in MOVABLE:
                why = f"it is {record.status}: only running, paused or stopped sandboxes move"
                results.append(Moved(sandbox_id, None, why))
                continue
            results.append(await self.move(record, node))
        return results

    async def move(self, record: SandboxRecord, source: str) -> Moved:
        sandbox_id = record.id
        was = record.status
        try:
            # NB: asked of its node, not the lenient read of a sandbox's info (none when the
            # node does not answer): a move must not leave its mounts behind.
            mounted = bool(await self._cluster.remote(source).bucket_mounts(sandbox_id))
            if was != "stopped":
                await self._lifecycle.stop(sandbox_id, reason=f"moving off node {source}")
            async with self._manager.lock_for(sandbox_id):
                record = self._manager.get(sandbox_id)
                if record.status != "stopped":
                    raise SandboxRuntimeError(f"it became {record.status} while moving")
                need = Need(record.cpu, record.memory_mb, record.disk_mb, record.runtime)
                targets = [n for n in self._cluster.placements(need, but=sandbox_id) if n != source]
                if not targets:
                    raise SandboxRuntimeError("no other node has room for it")
                target = targets[0]
                await self._move_disk(record, source, target, mounted=mounted)
        except (ApiError, SandboxRuntimeError, NodeUnavailable, ImageNotFound) as exc:
            log.warning("sandbox %s did not move off node %s: %s", sandbox_id, source, exc)
            return Moved(sandbox_id, None, str(exc))
        log.info("sandbox %s moved from node %s to %s", sandbox_id, source, target)
        if was == "running":
            try:
                await self._lifecycle.start(sandbox_id)
            except ApiError as exc:  # moved, but not started: it says why (stopped, reason)
                return Moved(sandbox_id, target, f"moved, but did not start: {exc}")
        elif was == "paused":
            self._store.set_sandbox_state(
                sandbox_id,
                "stopped",
                f"moved from node {source} to {target}: its memory could not move",
                record.expires_at,
            )
        return Moved(sandbox_id, target)

    async def _move_disk(
        self, record: SandboxRecord, source: str, target: str, *, mounted: bool
    ) -> None:
        src, dst = self._cluster.remote(source), self._cluster.remote(target)
        snap = MOVE_SNAPSHOT_PREFIX + secrets.token_hex(6)
        spec = self._manager.spec_for(record, self._images.get(record.image_id))
        await src.take_snapshot(record.id, snap)
        try:
            await dst.pull_snapshot(snap, src)
            try:
                await dst.create(record.id, spec, defer_network=False, snapshot=snap)
                await dst.stop(record.id)
                if mounted:  # mounted there at its next start; gone from here with it
                    await dst.pull_mounts(record.id, src)
            except BaseException:
                with contextlib.suppress(NodeUnavailable, NodeRefused):
                    await dst.destroy(record.id)
                raise
            finally:
                with contextlib.suppress(NodeUnavailable, NodeRefused):
                    await dst.delete_snapshot(snap)
        finally:
            with contextlib.suppress(NodeUnavailable, NodeRefused):
                await src.delete_snapshot(snap)
        self._cluster.relocate(record.id, target, spec.id)
        try:
            await src.destroy(record.id)
        except (NodeUnavailable, NodeRefused) as exc:
            # The node sweeps it at its next start (the store no longer places it there).
            log.warning("node %s: the moved sandbox %s was not removed: %s", source, record.id, exc)
