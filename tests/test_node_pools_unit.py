"""A node's share of the cluster's warm pools (server/_node_pools.py) and a replica's claim
order (services/_pool_claims.py), on a real SQLite store: no root, no sandboxes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import cast

from hutch.runtime import ImageStore
from hutch.server._node_pools import NodePoolLedger
from hutch.server.services._placement import Need
from hutch.server.services._pool_claims import claim_need, holding, placed_on
from hutch.server.store._nodes import NodeRecord
from hutch.server.store._sqlite import PoolEntryRecord, SandboxRecord, SqliteStore


class _Images:
    def get(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(id=f"id-{name}")


def _store(tmp_path: Path, *, cpu: float = 8, mem: int = 16384) -> SqliteStore:
    store = SqliteStore(tmp_path / "db")
    for name in ("n1", "n2", "n3"):
        store.heartbeat_node(
            NodeRecord(name, f"http://{name}:7171", cpu, mem, 65536, last_heartbeat=time.time())
        )
    return store


def _ledger(store: SqliteStore, node: str) -> NodePoolLedger:
    return NodePoolLedger(store, node, cast(ImageStore, _Images()))


def test_each_ready_node_keeps_its_share_and_a_draining_one_none(tmp_path: Path) -> None:
    store = _store(tmp_path)
    sizes = {"default": 5, "python": 1}
    shares = [asyncio.run(_ledger(store, n).sizes(sizes)) for n in ("n1", "n2", "n3")]
    assert [s["default"] for s in shares] == [2, 2, 1]  # the first ones take the remainder
    assert [s["python"] for s in shares] == [1, 0, 0]
    store.set_node_state("n2", "draining")
    assert asyncio.run(_ledger(store, "n2").sizes(sizes)) == {"default": 0, "python": 0}
    assert asyncio.run(_ledger(store, "n1").sizes(sizes))["default"] == 3  # of 2 nodes now


def test_a_share_is_capped_by_the_free_capacity(tmp_path: Path) -> None:
    # 3 cpu per node; one 2-cpu sandbox on n1 leaves room for one default (1 cpu) pooled one.
    store = _store(tmp_path, cpu=3)
    record = SandboxRecord("sb-big", "running", "default", "img", "", cpu=2, memory_mb=512)
    store.insert_sandbox(record, None, None)
    store.set_sandbox_node("sb-big", "n1")
    ledger = _ledger(store, "n1")
    assert asyncio.run(ledger.sizes({"default": 9})) == {"default": 1}
    # Once that one is listed it takes the room, and it is kept (not counted twice).
    asyncio.run(ledger.listed("pool-a", "id-default"))
    assert asyncio.run(ledger.sizes({"default": 9})) == {"default": 1}


def test_a_replica_claims_a_listed_one_once_and_the_node_takes_back_only_unclaimed(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    ledger = _ledger(store, "n2")
    for rid in ("pool-a", "pool-b"):
        asyncio.run(ledger.listed(rid, "id-default"))
    assert holding(store, ["n1", "n2", "n3"], "id-default") == {"n2"}
    # Placement counts them: two default sandboxes' memory on n2.
    placed = placed_on(store, store.list_nodes())
    assert sum(r.memory_mb for n, r in placed if n == "n2") == 2048
    first = store.claim_pool_entry("n2", "id-default", "sb-1")
    assert first is not None
    assert store.claim_pool_entry("n2", "id-default", "sb-2") not in (None, first)
    assert store.claim_pool_entry("n2", "id-default", "sb-3") is None
    assert asyncio.run(ledger.take_back("id-default")) is None  # both are claimed
    # Claimed and never handed out: abandoned after a while, not at once.
    assert asyncio.run(ledger.abandoned(["pool-a", "pool-b"])) == []
    # A claim adds only what the sandbox asks beyond the pooled one's own limits.
    assert claim_need(Need(2, 2048, 4096)) == Need(1, 1024, 0)


def test_rows_left_by_an_earlier_run_of_the_node_go(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.add_pool_entry(PoolEntryRecord("pool-old", "n1", "id-default", "t"))
    assert asyncio.run(_ledger(store, "n1").abandoned([])) == []
    assert store.list_pool_entries("n1") == []
