"""A fork's copies left by an API replica that died mid-fork (docs/cluster.md).

A fork on a cluster records the node of each of its per-child copies (`snapshot_nodes`, by
`ClusterHost.fork_disks`) and removes copies and rows once its creates are done
(services/_forks.py). A replica that dies in between leaves both for good: the rows in the
store, the copies on the source's node (a disk each), and those it sent to other nodes for
children placed there (services/_fork_sends.py: recorded in that replica's memory only). The
reconciler, on the one replica that holds its lock, removes the copies whose rows are older
than any fork in flight: from every node that answers (a copy's id is random, so no other
snapshot has it; a node without it has nothing to do), the source's node last, then the row.
"""

from __future__ import annotations

import logging
import math

from hutch.node import NodeRefused, NodeUnavailable
from hutch.server._errors import ApiError
from hutch.server.services._cluster_host import ClusterHost
from hutch.server.services._sandbox_create import ABANDONED_CREATE_AFTER
from hutch.server.store._off_loop import off_loop
from hutch.server.store._sqlite import Store

log = logging.getLogger("hutch.server")

# What a fork names the copies of its source's disk (services/_forks.py).
FORK_COPY_PREFIX = "fork-"
# Older than any fork in flight: its creates have ended by then (a create older than this
# has nobody finishing it either).
LEFT_AFTER = ABANDONED_CREATE_AFTER
# How often the reconciler looks: one read of a small table (and a replica seldom dies).
LOOK_EVERY = 10.0


class ForkLeftovers:
    def __init__(self, store: Store, host: ClusterHost) -> None:
        self._store = store
        self._host = host
        self._looked = -math.inf

    async def tick(self, wall: float, mono: float) -> list[str]:
        """Remove the fork copies left longer than LEFT_AFTER (every LOOK_EVERY seconds);
        the ids removed. One whose node does not answer stays, for the next look."""
        if mono - self._looked < LOOK_EVERY:
            return []
        self._looked = mono
        left = await off_loop(
            self._store,
            self._store.snapshot_nodes_before,
            FORK_COPY_PREFIX,
            wall - LEFT_AFTER,
            wall,
        )
        removed = []
        nodes = await off_loop(self._store, self._store.list_nodes) if left else []
        lost = {n.name for n in nodes if n.state == "lost"}
        for copy_id in left:
            home = await off_loop(self._store, self._store.snapshot_node, copy_id)
            if home in lost:
                continue  # NB: its row says where the copy is: both wait for the node's return
            for node in nodes:
                if node.name == home or node.name in lost:
                    continue
                try:
                    # NB: where the dead replica may have sent it; a node that does not
                    # answer keeps it (the source's copy and the row are what is counted).
                    await self._host.remote(node.name, node).delete_snapshot(copy_id)
                except (NodeUnavailable, NodeRefused) as exc:
                    log.debug("node %s: fork copy %s not dropped: %s", node.name, copy_id, exc)
            try:
                # The source's node drops its copy, then the row goes.
                await self._host.delete_snapshot(copy_id)
            except (ApiError, NodeRefused, OSError) as exc:
                log.warning("fork copy %s, left by a replica: not removed yet: %s", copy_id, exc)
                continue
            log.info("removed fork copy %s, left by a replica that died mid-fork", copy_id)
            removed.append(copy_id)
        return removed
