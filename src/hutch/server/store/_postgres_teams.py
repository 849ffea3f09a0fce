"""`TeamStore` on PostgreSQL, mixed into `PostgresStore` as `SqliteTeams` is into `SqliteStore`
(the same SQL, with psycopg's placeholders)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg

from hutch.server.store._postgres_watch import TEAM_ROW
from hutch.server.store._teams import QUOTA_COLUMNS, Quota, RateStep, TeamRecord

T = TypeVar("T")
Row = dict[str, Any]
Conn = psycopg.Connection[Row]


class PostgresTeams:
    """`TeamStore` for `PostgresStore` (which provides `_run`, `_rows` and `_count`)."""

    if TYPE_CHECKING:  # provided by the store class this is mixed into

        def _run(self, work: Callable[[Conn], T]) -> T: ...
        def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]: ...
        def _count(self, sql: str, params: tuple[Any, ...] = ()) -> int: ...
        def _touched(self, name: str | None) -> None: ...

    def insert_team(self, record: TeamRecord) -> bool:
        """False if the name is taken."""
        columns = ", ".join(("name", "created_at", *QUOTA_COLUMNS))
        marks = ", ".join(["%s"] * (2 + len(QUOTA_COLUMNS)))
        values = (
            record.name,
            record.created_at,
            *(getattr(record.quota, c) for c in QUOTA_COLUMNS),
        )
        sql = f"INSERT INTO teams ({columns}) VALUES ({marks}) ON CONFLICT DO NOTHING"
        inserted = self._count(sql, values) > 0
        self._touched(TEAM_ROW + record.name)
        return inserted

    def get_team(self, name: str) -> TeamRecord | None:
        rows = self._rows("SELECT * FROM teams WHERE name = %s", (name,))
        return TeamRecord.from_row(rows[0]) if rows else None

    def list_teams(self) -> list[TeamRecord]:
        return [TeamRecord.from_row(r) for r in self._rows("SELECT * FROM teams ORDER BY name")]

    def delete_team(self, name: str) -> bool:
        """Deletes the team and its keys (the caller checks it owns nothing any more)."""

        def work(conn: Conn) -> bool:
            with conn.transaction():
                cur = conn.execute("DELETE FROM teams WHERE name = %s", (name,))
                conn.execute("DELETE FROM api_keys WHERE team = %s", (name,))
                return cur.rowcount > 0

        deleted = self._run(work)
        self._touched(None)  # the team and its keys (rare: every row is read again)
        return deleted

    def set_team_quota(self, name: str, quota: Quota) -> bool:
        assignments = ", ".join(f"{c} = %s" for c in QUOTA_COLUMNS)
        values = (*(getattr(quota, c) for c in QUOTA_COLUMNS), name)
        updated = self._count(f"UPDATE teams SET {assignments} WHERE name = %s", values) > 0
        self._touched(TEAM_ROW + name)
        return updated

    def set_image_owner(self, name: str, team: str) -> None:
        self._count(
            "INSERT INTO image_owners (name, team) VALUES (%s, %s)"
            " ON CONFLICT (name) DO UPDATE SET team = EXCLUDED.team",
            (name, team),
        )

    def image_owners(self) -> dict[str, str]:
        rows = self._rows("SELECT name, team FROM image_owners")
        return {r["name"]: r["team"] for r in rows}

    def delete_image_owner(self, name: str) -> None:
        self._count("DELETE FROM image_owners WHERE name = %s", (name,))

    def step_rate_bucket(self, key_id: str, step: RateStep) -> None:
        """Replace a key's bucket by `step` of it, the row locked from read to write (every
        replica's requests with one key queue on it)."""

        def work(conn: Conn) -> None:
            with conn.transaction():
                # NB: a first request of a key on two replicas at once: both find no row, one
                # insert wins, the other then locks the winner's row and steps it again.
                for _ in range(2):
                    row = conn.execute(
                        "SELECT tokens, at FROM rate_buckets WHERE key_id = %s FOR UPDATE",
                        (key_id,),
                    ).fetchone()
                    if row is not None:
                        tokens, at = step((row["tokens"], row["at"]))
                        conn.execute(
                            "UPDATE rate_buckets SET tokens = %s, at = %s WHERE key_id = %s",
                            (tokens, at, key_id),
                        )
                        return
                    tokens, at = step(None)
                    cur = conn.execute(
                        "INSERT INTO rate_buckets (key_id, tokens, at) VALUES (%s, %s, %s)"
                        " ON CONFLICT (key_id) DO NOTHING",
                        (key_id, tokens, at),
                    )
                    if cur.rowcount:
                        return

        self._run(work)

    def forget_rate_buckets(self, before: float) -> None:
        self._count("DELETE FROM rate_buckets WHERE at < %s", (before,))
