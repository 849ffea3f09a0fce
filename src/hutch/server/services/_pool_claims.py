"""Warm pools on a cluster, as the store sees them: what a node's ready pooled sandboxes take
of its capacity, and the order in which a replica claims one.

Each node lists its ready pooled sandboxes in `pool_entries` (server/_node_pools.py). They hold
the default limits (node/_pools.py `POOL_LIMITS`) like any running sandbox, so placement counts
them; a claim gives that share back to the sandbox it becomes. A replica claims a row with
`FOR UPDATE SKIP LOCKED` (store), so two replicas never get the same one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from hutch.node import POOL_LIMITS
from hutch.server.services._placement import Need, Takes, candidates
from hutch.server.store._nodes import NodeRecord, PlacedLimits
from hutch.server.store._sqlite import Store

POOL_NEED = Need(POOL_LIMITS.cpu, POOL_LIMITS.memory_mb, POOL_LIMITS.disk_mb)
# A ready pooled sandbox as placement counts it: a running sandbox of the pool's limits.
POOLED = PlacedLimits(
    "", "running", POOL_NEED.cpu, POOL_NEED.memory_mb, POOL_NEED.disk_mb, pooled=True
)


def placed_on(
    store: Store,
    nodes: Iterable[NodeRecord],
    *,
    but: str = "",
    rows: Iterable[PlacedLimits] | None = None,
) -> list[tuple[str, Takes]]:
    """(node, sandbox) of everything that takes capacity on `nodes`: the sandboxes placed
    there (sandbox `but` left out) and their unclaimed pooled sandboxes. `rows`: the
    store's `placed_limits` when read already."""
    # NB: one read, every create: it was every sandbox's row, then two reads per node.
    names = {n.name for n in nodes}
    placed: list[tuple[str, Takes]] = []
    for row in store.placed_limits(but) if rows is None else rows:
        if row.node in names:
            placed.append((row.node, POOLED if row.pooled else row))
    return placed


def placement_order(
    store: Store, need: Need, *, but: str, fresh_for: float
) -> tuple[list[str], dict[str, NodeRecord]]:
    """The nodes that can take a sandbox of `need` now, best first (sandbox `but` not counted
    where it is), and the nodes' rows as read for it (a caller need not read one again)."""
    nodes, rows = store.placement_rows(but)
    placed = placed_on(store, nodes, rows=rows)
    order = candidates(nodes, placed, need, now=time.time(), fresh_for=fresh_for)
    return order, {n.name: n for n in nodes}


def claim_order(store: Store, image_id: str, need: Need, *, fresh_for: float) -> list[str]:
    """The nodes with a ready pooled sandbox of `image_id` whose claim for a sandbox of
    `need` fits, best first."""
    nodes = [n for n in store.list_nodes() if n.state == "ready"]
    having = holding(store, [n.name for n in nodes], image_id)
    if not having:
        return []
    placed = placed_on(store, nodes)
    order = candidates(nodes, placed, claim_need(need), now=time.time(), fresh_for=fresh_for)
    return [n for n in order if n in having]


def claim_need(need: Need) -> Need:
    """What a claim adds on its node: the sandbox's limits less the pooled one's own."""
    return Need(need.cpu - POOL_NEED.cpu, need.memory_mb - POOL_NEED.memory_mb, 0)


def holding(store: Store, nodes: Iterable[str], image_id: str) -> set[str]:
    """Those of `nodes` with an unclaimed pooled sandbox of `image_id`."""
    return {
        name
        for name in nodes
        if any(
            e.image_id == image_id and e.claimed_by is None for e in store.list_pool_entries(name)
        )
    }


def pool_status(
    store: Store,
    own_sizes: Mapping[str, int],
    image_id: Callable[[str], str | None],
    *,
    fresh_for: float,
) -> dict[str, tuple[int, int]]:
    """A replica's GET /v1/pools: image name -> (configured size, ready now). The size is what
    the nodes that are not lost heartbeat (`hutch node`'s HUTCH_WARM_POOLS: the cluster's
    total, the same on every node; the largest while a change rolls out); `own_sizes` (the
    replica's own setting, not needed) only for pools no node reports (nodes of an older
    Hutch). Ready: the unclaimed entries of the ready nodes."""
    now = time.time()
    ready: dict[str, int] = {}
    sizes = dict(own_sizes)
    reported: dict[str, int] = {}
    for node in store.list_nodes():
        if node.state == "lost":
            continue
        for name, size in node.pool_sizes.items():
            reported[name] = max(reported.get(name, 0), size)
        if node.state != "ready" or now - node.last_heartbeat > fresh_for:
            continue
        for entry in store.list_pool_entries(node.name):
            if entry.claimed_by is None:
                ready[entry.image_id] = ready.get(entry.image_id, 0) + 1
    sizes.update(reported)
    return {name: (size, ready.get(image_id(name) or "", 0)) for name, size in sizes.items()}
