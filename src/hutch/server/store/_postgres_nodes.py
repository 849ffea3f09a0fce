"""`NodeStore` on PostgreSQL, mixed into `PostgresStore` as `NodeRows` is into `SqliteStore`
(the same SQL, with psycopg's placeholders)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg

from hutch.server.store._nodes import (
    PLACED_LIMITS_SQL,
    PLACEMENT_SQL,
    SET_SANDBOX_NODE_SQL,
    SET_SNAPSHOT_NODE_SQL,
    SNAPSHOT_NODES_BEFORE_SQL,
    STAMP_SNAPSHOT_NODES_SQL,
    NodeRecord,
    NodeState,
    PlacedLimits,
    Placement,
    like_prefix,
    pool_sizes_json,
    runtimes_json,
)

T = TypeVar("T")
Row = dict[str, Any]
Conn = psycopg.Connection[Row]

_LIST_NODES = "SELECT * FROM nodes ORDER BY name"
# NB: json_to_record parses each spec once (as the quota read does).
_PLACED_LIMITS = PLACED_LIMITS_SQL.format(
    p="%s",
    spec="q.cpu, q.memory_mb, q.disk_mb",
    lateral=" CROSS JOIN LATERAL json_to_record(s.spec::json) AS "
    "q(cpu float8, memory_mb float8, disk_mb float8)",
)


class PostgresNodes:
    """`NodeStore` for `PostgresStore` (which provides `_run`, `_rows` and `_count`)."""

    if TYPE_CHECKING:  # provided by the store class this is mixed into

        def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]: ...
        def _count(self, sql: str, params: tuple[Any, ...] = ()) -> int: ...
        def _run(self, work: Callable[[Conn], T]) -> T: ...

    def heartbeat_node(self, node: NodeRecord) -> NodeRecord:
        """Insert or refresh a node's row; a `lost` node that beats again is `ready`, a
        `draining` one stays draining."""
        rows = self._rows(
            "INSERT INTO nodes (name, address, cpu, memory_mb, disk_mb, used_cpu, "
            "used_memory_mb, used_disk_mb, state, last_heartbeat, pool_sizes, runtimes) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'ready', %s, %s, %s) "
            "ON CONFLICT (name) DO UPDATE SET address = excluded.address, "
            "cpu = excluded.cpu, memory_mb = excluded.memory_mb, disk_mb = excluded.disk_mb, "
            "used_cpu = excluded.used_cpu, used_memory_mb = excluded.used_memory_mb, "
            "used_disk_mb = excluded.used_disk_mb, last_heartbeat = excluded.last_heartbeat, "
            "pool_sizes = excluded.pool_sizes, runtimes = excluded.runtimes, "
            "state = CASE WHEN nodes.state = 'draining' THEN 'draining' ELSE 'ready' END "
            "RETURNING *",
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
        return NodeRecord.from_row(rows[0])

    def list_nodes(self) -> list[NodeRecord]:
        return [NodeRecord.from_row(r) for r in self._rows(_LIST_NODES)]

    def get_node(self, name: str) -> NodeRecord | None:
        rows = self._rows("SELECT * FROM nodes WHERE name = %s", (name,))
        return NodeRecord.from_row(rows[0]) if rows else None

    def set_node_state(self, name: str, state: NodeState, *, only_from: str | None = None) -> bool:
        if only_from is None:
            return self._count("UPDATE nodes SET state = %s WHERE name = %s", (state, name)) > 0
        return (
            self._count(
                "UPDATE nodes SET state = %s WHERE name = %s AND state = %s",
                (state, name, only_from),
            )
            > 0
        )

    def set_sandbox_node(self, sandbox_id: str, node: str, runtime_id: str | None = None) -> None:
        self._count(SET_SANDBOX_NODE_SQL.format(p="%s"), (sandbox_id, node, runtime_id))

    def sandbox_placement(self, sandbox_id: str) -> Placement | None:
        rows = self._rows(PLACEMENT_SQL.format(p="%s"), (sandbox_id,))
        return Placement.from_row(rows[0]) if rows else None

    def sandbox_node(self, sandbox_id: str) -> str | None:
        rows = self._rows("SELECT node FROM sandbox_nodes WHERE sandbox_id = %s", (sandbox_id,))
        return str(rows[0]["node"]) if rows else None

    def sandbox_runtime_id(self, sandbox_id: str) -> str | None:
        rows = self._rows(
            "SELECT COALESCE(runtime_id, id) AS rid FROM sandboxes WHERE id = %s", (sandbox_id,)
        )
        return str(rows[0]["rid"]) if rows else None

    def sandboxes_on(self, node: str) -> list[str]:
        rows = self._rows(
            "SELECT sandbox_id FROM sandbox_nodes WHERE node = %s ORDER BY sandbox_id", (node,)
        )
        return [str(r["sandbox_id"]) for r in rows]

    def placed_limits(self, but: str = "") -> list[PlacedLimits]:
        return [PlacedLimits.from_row(r) for r in self._rows(_PLACED_LIMITS, (but,))]

    def placement_rows(self, but: str = "") -> tuple[list[NodeRecord], list[PlacedLimits]]:
        def work(conn: Conn) -> tuple[list[Row], list[Row]]:
            # NB: both reads in one pipeline: one round trip before each create's node call.
            with conn.pipeline():
                nodes = conn.execute(_LIST_NODES)
                placed = conn.execute(_PLACED_LIMITS, (but,))
            return nodes.fetchall(), placed.fetchall()

        nodes, placed = self._run(work)
        return [NodeRecord.from_row(r) for r in nodes], [PlacedLimits.from_row(r) for r in placed]

    def placements_on(self, node: str) -> dict[str, str | None]:
        rows = self._rows(
            "SELECT sandbox_id, runtime_id FROM sandbox_nodes WHERE node = %s ORDER BY sandbox_id",
            (node,),
        )
        return {str(r["sandbox_id"]): r["runtime_id"] for r in rows}

    def forget_sandbox_node(self, sandbox_id: str) -> None:
        self._count("DELETE FROM sandbox_nodes WHERE sandbox_id = %s", (sandbox_id,))

    def set_snapshot_node(self, snapshot_id: str, node: str) -> None:
        self._count(SET_SNAPSHOT_NODE_SQL.format(p="%s"), (snapshot_id, node, time.time()))

    def snapshot_node(self, snapshot_id: str) -> str | None:
        rows = self._rows("SELECT node FROM snapshot_nodes WHERE snapshot_id = %s", (snapshot_id,))
        return str(rows[0]["node"]) if rows else None

    def forget_snapshot_node(self, snapshot_id: str) -> None:
        self._count("DELETE FROM snapshot_nodes WHERE snapshot_id = %s", (snapshot_id,))

    def snapshot_nodes_before(self, prefix: str, before: float, now: float) -> list[str]:
        like = like_prefix(prefix)
        self._count(STAMP_SNAPSHOT_NODES_SQL.format(p="%s"), (now, like))
        rows = self._rows(SNAPSHOT_NODES_BEFORE_SQL.format(p="%s"), (like, before))
        return [str(r["snapshot_id"]) for r in rows]
