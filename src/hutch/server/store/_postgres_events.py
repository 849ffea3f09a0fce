"""`EventLog` on PostgreSQL, on the store's own connection pool. Several API replicas may
append to one sandbox at once: a transaction-scoped advisory lock per sandbox orders them, so
the per-sandbox sequence has no gaps and no duplicates."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from hutch.server.store import _events
from hutch.server.store._events import KEEP_GONE_FOR, EventRecord
from hutch.server.store._postgres import Conn, PostgresStore


class PostgresEventLog:
    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    def close(self) -> None:
        pass  # the store owns the pool

    def append(
        self, sandbox_id: str, type: str, data: dict[str, Any], *, fresh: bool = False
    ) -> EventRecord:
        """Add one event with the sandbox's next sequence number. `fresh`: the sandbox is
        new, so the events of an earlier one with the same id are dropped first."""
        return self.append_many(sandbox_id, [(type, data)], fresh=fresh)[0]

    def append_many(
        self, sandbox_id: str, events: Sequence[tuple[str, dict[str, Any]]], *, fresh: bool = False
    ) -> list[EventRecord]:
        """`append` of each of `events` (type, data), in order, in one transaction and one
        round trip (a create's `created` and `started`)."""
        at = time.time()
        keep = _events.KEEP_PER_SANDBOX

        def work(conn: Conn) -> list[int]:
            # NB: one round trip to the database (a pipeline), not one per statement: a
            # create appends two events, and each was six round trips on the event loop.
            with conn.pipeline():
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (sandbox_id,))
                    if fresh:
                        conn.execute(
                            "DELETE FROM sandbox_events WHERE sandbox_id = %s", (sandbox_id,)
                        )
                    # Numbered under the lock: no gaps and no duplicates.
                    added = [
                        conn.execute(
                            "INSERT INTO sandbox_events (sandbox_id, seq, type, at, data)"
                            " SELECT %s, COALESCE(MAX(seq), 0) + 1, %s, %s, %s"
                            " FROM sandbox_events WHERE sandbox_id = %s RETURNING seq",
                            (sandbox_id, type, at, json.dumps(data), sandbox_id),
                        )
                        for type, data in events
                    ]
                    conn.execute(
                        "DELETE FROM sandbox_events WHERE sandbox_id = %s AND seq <= ("
                        " SELECT MAX(seq) FROM sandbox_events WHERE sandbox_id = %s) - %s",
                        (sandbox_id, sandbox_id, keep),
                    )
            rows = [cursor.fetchone() for cursor in added]
            return [int(row["seq"]) if row else 0 for row in rows]

        seqs = self._store._run(work)
        return [
            EventRecord(sandbox_id, seq, type, at, data)
            for seq, (type, data) in zip(seqs, events, strict=True)
        ]

    def since(self, sandbox_id: str, after: int, limit: int = 500) -> list[EventRecord]:
        """The sandbox's events with a sequence number above `after`, oldest first."""
        rows = self._store._rows(
            "SELECT * FROM sandbox_events WHERE sandbox_id = %s AND seq > %s ORDER BY seq LIMIT %s",
            (sandbox_id, after, limit),
        )
        return [
            EventRecord(r["sandbox_id"], r["seq"], r["type"], r["at"], json.loads(r["data"]))
            for r in rows
        ]

    def prune(self, now: float | None = None) -> int:
        """Drop the events of sandboxes gone for longer than KEEP_GONE_FOR; how many went."""
        cutoff = (time.time() if now is None else now) - KEEP_GONE_FOR
        return self._store._count(
            "DELETE FROM sandbox_events WHERE sandbox_id IN ("
            " SELECT sandbox_id FROM sandbox_events"
            " WHERE sandbox_id NOT IN (SELECT id FROM sandboxes)"
            " GROUP BY sandbox_id HAVING MAX(at) < %s)",
            (cutoff,),
        )
