"""A node's warm pools on a cluster: its `PoolLedger` in the cluster's store (node/_pools.py).

The configured size of a pool (`HUTCH_WARM_POOLS` of `hutch node`) is the cluster's: each
ready node keeps its share (the size split over the ready nodes by name, the first ones taking
the remainder), and no more than its free capacity allows (its sandboxes and its own ready
pooled ones counted, as placement counts them). A draining or lost node keeps none. The ready
ones are listed in `pool_entries`, where replicas claim them (services/_pool_claims.py).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Collection, Mapping

from hutch.runtime import ImageNotFound, ImageStore
from hutch.server.services._cluster_host import FRESH_FOR
from hutch.server.services._keys import now_iso
from hutch.server.services._placement import free_capacity
from hutch.server.services._pool_claims import POOL_NEED, placed_on
from hutch.server.store._sqlite import PoolEntryRecord, Store

# A listed sandbox claimed this long ago and still not handed out: its replica died between
# the claim and its call to the node.
ABANDONED_AFTER = 30.0


class NodePoolLedger:
    def __init__(self, store: Store, node: str, images: ImageStore) -> None:
        self._store = store
        self._node = node
        self._images = images
        self._claimed_seen: dict[str, float] = {}

    async def sizes(self, configured: Mapping[str, int]) -> dict[str, int]:
        return await asyncio.to_thread(self._sizes, configured)

    def _sizes(self, configured: Mapping[str, int]) -> dict[str, int]:
        now = time.time()
        nodes = [
            n
            for n in self._store.list_nodes()
            if n.state == "ready" and now - n.last_heartbeat <= FRESH_FOR
        ]
        names = sorted(n.name for n in nodes)
        if self._node not in names:
            return {name: 0 for name in configured}
        i, count = names.index(self._node), len(names)
        share = {
            name: size // count + (1 if i < size % count else 0)
            for name, size in configured.items()
        }
        me = [n for n in nodes if n.name == self._node]
        free = free_capacity(me, placed_on(self._store, me))[self._node]
        room = int(
            min(
                free.cpu // POOL_NEED.cpu if POOL_NEED.cpu else 1 << 20,
                free.memory_mb // max(POOL_NEED.memory_mb, 1),
                free.disk_mb // max(POOL_NEED.disk_mb, 1),
            )
        )
        room = max(room, 0)
        listed = Counter(
            e.image_id for e in self._store.list_pool_entries(self._node) if e.claimed_by is None
        )
        for name in sorted(share):
            try:
                have = listed.get(self._images.get(name).id, 0)
            except ImageNotFound:
                continue
            more = min(max(share[name] - have, 0), room)
            room -= more
            share[name] = min(share[name], have + more)
        return share

    async def listed(self, runtime_id: str, image_id: str) -> None:
        entry = PoolEntryRecord(runtime_id, self._node, image_id, now_iso())
        await asyncio.to_thread(self._store.add_pool_entry, entry)

    async def take_back(self, image_id: str) -> str | None:
        # NB: claimed as any replica claims (SKIP LOCKED): one a replica holds is not taken.
        rid = await asyncio.to_thread(
            self._store.claim_pool_entry, self._node, image_id, f"node:{self._node}"
        )
        if rid is not None:
            await asyncio.to_thread(self._store.delete_pool_entry, rid)
        return rid

    async def unlisted(self, runtime_id: str) -> None:
        self._claimed_seen.pop(runtime_id, None)
        await asyncio.to_thread(self._store.delete_pool_entry, runtime_id)

    async def abandoned(self, ready: Collection[str]) -> list[str]:
        entries = await asyncio.to_thread(self._store.list_pool_entries, self._node)
        now = time.monotonic()
        gone = []
        for entry in entries:
            if entry.runtime_id not in ready:
                # Left by an earlier run of this node (its containers were swept at start).
                await asyncio.to_thread(self._store.delete_pool_entry, entry.runtime_id)
            elif entry.claimed_by is not None:
                first = self._claimed_seen.setdefault(entry.runtime_id, now)
                if now - first >= ABANDONED_AFTER:
                    gone.append(entry.runtime_id)
        return gone
