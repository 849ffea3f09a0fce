"""Node loss and return, seen from the API (multi-node mode; one per API replica).

Every second: a node whose last heartbeat is older than `LOST_AFTER` becomes `lost` and its
sandboxes `error` with reason `node_lost` (nothing is placed there any more); a lost node that
beats again is `ready` (its heartbeat does that) and re-adopts what still runs: each of its
sandboxes in `error: node_lost` that its node reports running or paused gets that state back.
Both replicas may run this: every step is a compare-and-set on the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from hutch.server.services._cluster_host import ClusterHost
from hutch.server.services._sandboxes import SandboxManager
from hutch.server.store._sqlite import Store

log = logging.getLogger("hutch.server")

# Nodes beat every ~2 s; marked lost after 12 s of silence, so within 15 s of a node's death
# (its last beat, this loop's period and a beat's own write included).
LOST_AFTER = 12.0
CHECK_EVERY = 1.0
NODE_LOST = "node_lost"


class NodeWatch:
    def __init__(self, store: Store, host: ClusterHost, manager: SandboxManager) -> None:
        self._store = store
        self._host = host
        self._manager = manager
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="hutch-node-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await self.check(time.time())
            except Exception:
                log.exception("checking the cluster's nodes failed")
            await asyncio.sleep(CHECK_EVERY)

    async def check(self, now: float) -> None:
        for node in self._store.list_nodes():
            silent = now - node.last_heartbeat
            if node.state != "lost" and silent > LOST_AFTER:
                if self._store.set_node_state(node.name, "lost", only_from=node.state):
                    await self._lost(node.name, silent)
            elif node.state != "lost":
                await self._readopt(node.name)

    async def _lost(self, name: str, silent: float) -> None:
        log.warning("node %s is lost (no heartbeat for %.0f s)", name, silent)
        reason = (
            f"{NODE_LOST}: node {name} stopped heartbeating {silent:.0f} s ago; the sandbox "
            "comes back if the node does, else destroy it and create a new one"
        )
        for sandbox_id in self._store.sandboxes_on(name):
            record = self._store.get_sandbox(sandbox_id)
            if record is None or record.status not in ("running", "paused", "creating"):
                continue
            self._store.set_sandbox_state(sandbox_id, "error", reason, record.expires_at)
            await self._manager.forget_agent(sandbox_id)

    async def _readopt(self, name: str) -> None:
        lost = []
        for sandbox_id in self._store.sandboxes_on(name):
            record = self._store.get_sandbox(sandbox_id)
            if (
                record is not None
                and record.status == "error"
                and (record.status_reason or "").startswith(NODE_LOST)
            ):
                lost.append(record)
        if not lost:
            return
        states = await self._host.states([r.id for r in lost])
        for record in lost:
            state = states.get(record.id)
            if state in ("running", "paused"):
                status = "running" if state == "running" else "paused"
                self._store.set_sandbox_state(record.id, status, None, record.expires_at)
                log.info("sandbox %s re-adopted on node %s (%s)", record.id, name, status)
