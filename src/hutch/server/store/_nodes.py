"""The nodes of a cluster and which node holds which sandbox (multi-node mode only).

Plain portable SQL: the PostgreSQL store (_postgres_nodes.py) runs the same statements with
its own placeholders; the tables are migration 10 (_migrations.py), the runtime id of
`sandbox_nodes` migration 15.
Each node daemon upserts its row every heartbeat; the API reads them to place sandboxes and
marks a silent node `lost`. A sandbox's node lives in its own table so that single-host mode's
sandbox rows stay exactly as they were.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal, Protocol

NodeState = Literal["ready", "draining", "lost"]


@dataclass
class NodeRecord:
    """One node: where its API listens, what it has and what its sandboxes take."""

    name: str
    address: str  # http://host:port of its node API
    cpu: float
    memory_mb: int
    disk_mb: int
    used_cpu: float = 0.0
    used_memory_mb: int = 0
    used_disk_mb: int = 0
    state: str = "ready"  # NodeState
    last_heartbeat: float = 0.0  # time.time() of its last heartbeat
    # Its warm pools as configured (image name -> the cluster's size; `hutch node`'s
    # HUTCH_WARM_POOLS): what a replica's GET /v1/pools shows.
    pool_sizes: dict[str, int] = field(default_factory=dict)
    # The sandbox runtimes it can run ("runc", and "gvisor" where runsc is installed).
    runtimes: tuple[str, ...] = ("runc",)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> NodeRecord:
        values = {f.name: row[f.name] for f in fields(cls)}
        values["pool_sizes"] = _pool_sizes(values["pool_sizes"])
        values["runtimes"] = _runtimes(values["runtimes"])
        return cls(**values)


def _pool_sizes(text: str | None) -> dict[str, int]:
    if not text:
        return {}  # NB: a node of a Hutch from before migration 17 reports none
    return {str(name): int(size) for name, size in json.loads(text).items()}


def pool_sizes_json(node: NodeRecord) -> str:
    return json.dumps(node.pool_sizes, sort_keys=True)


def _runtimes(text: str | None) -> tuple[str, ...]:
    if not text:
        return ("runc",)  # NB: a node of a Hutch from before migration 18 runs runc only
    return tuple(str(name) for name in json.loads(text))


def runtimes_json(node: NodeRecord) -> str:
    return json.dumps(list(node.runtimes))


_NODE_COLUMNS = ", ".join(f"n.{f.name}" for f in fields(NodeRecord))
# A sandbox's node and runtime id with its node's row, in one read (every call to a node).
PLACEMENT_SQL = (
    f"SELECT sn.node AS placed_on, sn.runtime_id AS placed_as, {_NODE_COLUMNS} "
    "FROM sandbox_nodes sn LEFT JOIN nodes n ON n.name = sn.node WHERE sn.sandbox_id = {p}"
)
# Snapshots named `prefix`… recorded before a time; rows from before migration 16 get one first
# (a replica of an older Hutch may be using them now).
STAMP_SNAPSHOT_NODES_SQL = (
    "UPDATE snapshot_nodes SET recorded_at = {p} WHERE recorded_at IS NULL AND snapshot_id LIKE {p}"
)
SNAPSHOT_NODES_BEFORE_SQL = (
    "SELECT snapshot_id FROM snapshot_nodes WHERE snapshot_id LIKE {p} AND recorded_at < {p} "
    "ORDER BY snapshot_id"
)
SET_SNAPSHOT_NODE_SQL = (
    "INSERT INTO snapshot_nodes (snapshot_id, node, recorded_at) VALUES ({p}, {p}, {p}) "
    "ON CONFLICT (snapshot_id) DO UPDATE SET node = excluded.node, "
    "recorded_at = excluded.recorded_at"
)
# Recording a placement; a runtime id of None keeps the one recorded (a replica of a Hutch from
# before migration 15 moves a sandbox so).
SET_SANDBOX_NODE_SQL = (
    "INSERT INTO sandbox_nodes (sandbox_id, node, runtime_id) VALUES ({p}, {p}, {p}) "
    "ON CONFLICT (sandbox_id) DO UPDATE SET node = excluded.node, "
    "runtime_id = COALESCE(excluded.runtime_id, sandbox_nodes.runtime_id)"
)


# What each placed sandbox takes of its node, in one read (placement reads it at every
# create): its node, status and limits (parsed from the spec by the database), then a row per
# ready pooled sandbox (`pooled`; it takes the pools' limits, which the caller knows). `{spec}`
# is the dialect's JSON columns of `s.spec` as cpu, memory_mb and disk_mb.
PLACED_LIMITS_SQL = (
    "SELECT sn.node AS node, s.status AS status, {spec}, 0 AS pooled "
    "FROM sandbox_nodes sn JOIN sandboxes s ON s.id = sn.sandbox_id{lateral} "
    "WHERE sn.sandbox_id <> {p} "
    "UNION ALL SELECT node, 'running', NULL, NULL, NULL, 1 FROM pool_entries "
    "WHERE claimed_by IS NULL"
)


@dataclass(frozen=True)
class PlacedLimits:
    """One sandbox as its node's capacity counts it (a pooled one has no limits here)."""

    node: str
    status: str
    cpu: float
    memory_mb: float
    disk_mb: float
    pooled: bool

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> PlacedLimits:
        return cls(
            str(row["node"]),
            str(row["status"]),
            float(row["cpu"] or 0),
            float(row["memory_mb"] or 0),
            float(row["disk_mb"] or 0),
            bool(row["pooled"]),
        )


@dataclass
class Placement:
    """Where a sandbox is: its node's name, the id that node knows it by, the node's row."""

    node: str
    # None: recorded before migration 15 (the sandbox's own row has it).
    runtime_id: str | None
    record: NodeRecord | None  # None: the node's row is gone

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Placement:
        record = NodeRecord.from_row(row) if row["name"] is not None else None
        placed_as = row["placed_as"]
        return cls(str(row["placed_on"]), None if placed_as is None else str(placed_as), record)


class NodeStore(Protocol):
    """The nodes of a cluster (unused on one host); part of `Store`."""

    def heartbeat_node(self, node: NodeRecord) -> NodeRecord: ...
    def list_nodes(self) -> list[NodeRecord]: ...
    def get_node(self, name: str) -> NodeRecord | None: ...
    def set_node_state(
        self, name: str, state: NodeState, *, only_from: str | None = None
    ) -> bool: ...
    # `runtime_id`: what the node knows it by from now on (None: unchanged, as in a move).
    def set_sandbox_node(
        self, sandbox_id: str, node: str, runtime_id: str | None = None
    ) -> None: ...
    def sandbox_node(self, sandbox_id: str) -> str | None: ...
    def sandbox_placement(self, sandbox_id: str) -> Placement | None: ...
    # The name its node knows it by (a pooled one keeps its pool's); None: no such sandbox.
    def sandbox_runtime_id(self, sandbox_id: str) -> str | None: ...
    def sandboxes_on(self, node: str) -> list[str]: ...
    # Every placed sandbox's limits and every ready pooled sandbox (sandbox `but` left out).
    def placed_limits(self, but: str = "") -> list[PlacedLimits]: ...
    # `list_nodes` and `placed_limits` together: what placement reads (one round trip).
    def placement_rows(self, but: str = "") -> tuple[list[NodeRecord], list[PlacedLimits]]: ...
    # sandbox id -> the runtime id its node knows it by (None: recorded before migration 15).
    def placements_on(self, node: str) -> dict[str, str | None]: ...
    def forget_sandbox_node(self, sandbox_id: str) -> None: ...
    # A disk snapshot lives on the node of the sandbox it was taken from.
    def set_snapshot_node(self, snapshot_id: str, node: str) -> None: ...
    def snapshot_node(self, snapshot_id: str) -> str | None: ...
    def forget_snapshot_node(self, snapshot_id: str) -> None: ...
    # Those named `prefix`… recorded before `before` (a row without a time gets `now`).
    def snapshot_nodes_before(self, prefix: str, before: float, now: float) -> list[str]: ...


class NodeRows:
    """The node methods of `SqliteStore` (mixed in; `_tx` and `_db` are the store's)."""

    _db: sqlite3.Connection

    if TYPE_CHECKING:  # provided by the store class this is mixed into

        def _tx(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def heartbeat_node(self, node: NodeRecord) -> NodeRecord:
        """Insert or refresh a node's row: address, capacity, use and heartbeat time. A `lost`
        node that beats again is `ready`; a `draining` one stays draining."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO nodes (name, address, cpu, memory_mb, disk_mb, used_cpu, "
                "used_memory_mb, used_disk_mb, state, last_heartbeat, pool_sizes, runtimes) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'ready', ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET address = excluded.address, "
                "cpu = excluded.cpu, memory_mb = excluded.memory_mb, disk_mb = excluded.disk_mb, "
                "used_cpu = excluded.used_cpu, used_memory_mb = excluded.used_memory_mb, "
                "used_disk_mb = excluded.used_disk_mb, last_heartbeat = excluded.last_heartbeat, "
                "pool_sizes = excluded.pool_sizes, runtimes = excluded.runtimes, "
                "state = CASE WHEN nodes.state = 'draining' THEN 'draining' ELSE 'ready' END",
                (
                    node.name,
                    node.address,
                    node.cpu,
                    node.memory_mb,
                    node.disk_mb,
                    node.used_cpu,
                    node.used_memory_mb,
                    node.used_disk_mb,
                    node.last_heartbeat,
                    pool_sizes_json(node),
                    runtimes_json(node),
                ),
            )
            row = db.execute("SELECT * FROM nodes WHERE name = ?", (node.name,)).fetchone()
        return NodeRecord.from_row(row)

    def list_nodes(self) -> list[NodeRecord]:
        rows = self._db.execute("SELECT * FROM nodes ORDER BY name").fetchall()
        return [NodeRecord.from_row(r) for r in rows]

    def get_node(self, name: str) -> NodeRecord | None:
        row = self._db.execute("SELECT * FROM nodes WHERE name = ?", (name,)).fetchone()
        return NodeRecord.from_row(row) if row is not None else None

    def set_node_state(self, name: str, state: NodeState, *, only_from: str | None = None) -> bool:
        """Set a node's state (only if it is `only_from` now, when given); True if changed."""
        with self._tx() as db:
            if only_from is None:
                cur = db.execute("UPDATE nodes SET state = ? WHERE name = ?", (state, name))
            else:
                cur = db.execute(
                    "UPDATE nodes SET state = ? WHERE name = ? AND state = ?",
                    (state, name, only_from),
                )
        return cur.rowcount > 0

    def set_sandbox_node(self, sandbox_id: str, node: str, runtime_id: str | None = None) -> None:
        with self._tx() as db:
            db.execute(SET_SANDBOX_NODE_SQL.format(p="?"), (sandbox_id, node, runtime_id))

    def sandbox_placement(self, sandbox_id: str) -> Placement | None:
        row = self._db.execute(PLACEMENT_SQL.format(p="?"), (sandbox_id,)).fetchone()
        return Placement.from_row(row) if row is not None else None

    def placed_limits(self, but: str = "") -> list[PlacedLimits]:
        sql = PLACED_LIMITS_SQL.format(
            p="?",
            spec="json_extract(s.spec, '$.cpu') AS cpu, json_extract(s.spec, '$.memory_mb') "
            "AS memory_mb, json_extract(s.spec, '$.disk_mb') AS disk_mb",
            lateral="",
        )
        return [PlacedLimits.from_row(r) for r in self._db.execute(sql, (but,))]

    def placement_rows(self, but: str = "") -> tuple[list[NodeRecord], list[PlacedLimits]]:
        return self.list_nodes(), self.placed_limits(but)

    def sandbox_node(self, sandbox_id: str) -> str | None:
        row = self._db.execute(
            "SELECT node FROM sandbox_nodes WHERE sandbox_id = ?", (sandbox_id,)
        ).fetchone()
        return str(row["node"]) if row is not None else None

    def sandbox_runtime_id(self, sandbox_id: str) -> str | None:
        row = self._db.execute(
            "SELECT COALESCE(runtime_id, id) AS rid FROM sandboxes WHERE id = ?", (sandbox_id,)
        ).fetchone()
        return str(row["rid"]) if row is not None else None

    def sandboxes_on(self, node: str) -> list[str]:
        rows = self._db.execute(
            "SELECT sandbox_id FROM sandbox_nodes WHERE node = ? ORDER BY sandbox_id", (node,)
        ).fetchall()
        return [str(r["sandbox_id"]) for r in rows]

    def placements_on(self, node: str) -> dict[str, str | None]:
        rows = self._db.execute(
            "SELECT sandbox_id, runtime_id FROM sandbox_nodes WHERE node = ? ORDER BY sandbox_id",
            (node,),
        ).fetchall()
        return {str(r["sandbox_id"]): r["runtime_id"] for r in rows}

    def forget_sandbox_node(self, sandbox_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM sandbox_nodes WHERE sandbox_id = ?", (sandbox_id,))

    def set_snapshot_node(self, snapshot_id: str, node: str) -> None:
        with self._tx() as db:
            db.execute(SET_SNAPSHOT_NODE_SQL.format(p="?"), (snapshot_id, node, time.time()))

    def snapshot_node(self, snapshot_id: str) -> str | None:
        row = self._db.execute(
            "SELECT node FROM snapshot_nodes WHERE snapshot_id = ?", (snapshot_id,)
        ).fetchone()
        return str(row["node"]) if row is not None else None

    def forget_snapshot_node(self, snapshot_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM snapshot_nodes WHERE snapshot_id = ?", (snapshot_id,))

    def snapshot_nodes_before(self, prefix: str, before: float, now: float) -> list[str]:
        like = like_prefix(prefix)
        with self._tx() as db:
            db.execute(STAMP_SNAPSHOT_NODES_SQL.format(p="?"), (now, like))
            rows = db.execute(SNAPSHOT_NODES_BEFORE_SQL.format(p="?"), (like, before)).fetchall()
        return [str(r["snapshot_id"]) for r in rows]


def like_prefix(prefix: str) -> str:
    if any(c in prefix for c in "%_\\"):
        raise ValueError(f"a LIKE prefix with a wildcard: {prefix!r}")
    return prefix + "%"
