"""Teams, their quotas, and which team owns an image name: records and the SQL behind them.

Kept apart from _sqlite.py (sandboxes, keys, snapshots): `SqliteStore` mixes `SqliteTeams` in,
and `Store` includes `TeamStore`. The SQL is plain and portable (TEXT/INTEGER/REAL, no
SQLite-only statements) so a PostgreSQL store can run the same.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Protocol

DEFAULT_TEAM = "default"  # the team of rows from before teams (migration 9 names it too)

# A key's token bucket, (tokens, at: wall-clock seconds), None before its first request; the
# step returns the bucket to keep (services/_ratelimit.py holds the arithmetic).
RateBucket = tuple[float, float]
RateStep = Callable[[RateBucket | None], RateBucket]


@dataclass(frozen=True)
class Quota:
    """A team's limits; None: no limit (rates: the server's default)."""

    max_running: int | None = None  # sandboxes not stopped (running, paused, being created)
    max_cpu: float | None = None  # sum of `cpu` over those
    max_memory_mb: int | None = None  # sum of `memory_mb` over those
    max_disk_mb: int | None = None  # sum of `disk_mb` over every sandbox (stopped keep disks)
    max_lifetime: float | None = None  # seconds; also the lifetime of a create that gives none
    max_snapshots: int | None = None
    rate_per_second: float | None = None  # requests per second per key (token bucket refill)
    rate_burst: int | None = None  # the bucket's size

    def merged(self, changes: dict[str, object]) -> Quota:
        known = {f.name for f in fields(Quota)}
        return Quota(**{**asdict(self), **{k: v for k, v in changes.items() if k in known}})


QUOTA_COLUMNS = tuple(f.name for f in fields(Quota))


@dataclass(frozen=True)
class TeamRecord:
    name: str
    created_at: str
    quota: Quota = Quota()

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> TeamRecord:
        return cls(
            name=row["name"],
            created_at=row["created_at"],
            quota=Quota(**{c: row[c] for c in QUOTA_COLUMNS}),
        )


class TeamStore(Protocol):
    def insert_team(self, record: TeamRecord) -> bool: ...
    def get_team(self, name: str) -> TeamRecord | None: ...
    # From memory where the store keeps the row current (store/_row_watch.py), as
    # `cached_sandbox` and `current_sandbox`.
    def cached_team(self, name: str) -> tuple[bool, TeamRecord | None]: ...
    def current_team(self, name: str) -> TeamRecord | None: ...
    def list_teams(self) -> list[TeamRecord]: ...
    def delete_team(self, name: str) -> bool: ...
    def set_team_quota(self, name: str, quota: Quota) -> bool: ...
    def set_image_owner(self, name: str, team: str) -> None: ...
    def image_owners(self) -> dict[str, str]: ...
    def delete_image_owner(self, name: str) -> None: ...
    def step_rate_bucket(self, key_id: str, step: RateStep) -> None: ...
    def forget_rate_buckets(self, before: float) -> None: ...


class SqliteTeams:
    """`TeamStore` for `SqliteStore` (which provides `_db` and `_tx`)."""

    _db: sqlite3.Connection

    if TYPE_CHECKING:  # provided by the store class this is mixed into

        def _tx(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def insert_team(self, record: TeamRecord) -> bool:
        """False if the name is taken."""
        columns = ", ".join(("name", "created_at", *QUOTA_COLUMNS))
        marks = ", ".join("?" * (2 + len(QUOTA_COLUMNS)))
        values = (
            record.name,
            record.created_at,
            *(getattr(record.quota, c) for c in QUOTA_COLUMNS),
        )
        try:
            with self._tx() as db:
                db.execute(f"INSERT INTO teams ({columns}) VALUES ({marks})", values)
        except sqlite3.IntegrityError:
            return False
        return True

    def get_team(self, name: str) -> TeamRecord | None:
        row = self._db.execute("SELECT * FROM teams WHERE name = ?", (name,)).fetchone()
        return TeamRecord.from_row(row) if row else None

    def cached_team(self, name: str) -> tuple[bool, TeamRecord | None]:
        return False, None  # NB: never (a file other processes may write is read)

    def current_team(self, name: str) -> TeamRecord | None:
        return self.get_team(name)

    def list_teams(self) -> list[TeamRecord]:
        rows = self._db.execute("SELECT * FROM teams ORDER BY name").fetchall()
        return [TeamRecord.from_row(r) for r in rows]

    def delete_team(self, name: str) -> bool:
        """Deletes the team and its keys (the caller checks it owns nothing any more)."""
        with self._tx() as db:
            cur = db.execute("DELETE FROM teams WHERE name = ?", (name,))
            db.execute("DELETE FROM api_keys WHERE team = ?", (name,))
        return cur.rowcount > 0

    def set_team_quota(self, name: str, quota: Quota) -> bool:
        assignments = ", ".join(f"{c} = ?" for c in QUOTA_COLUMNS)
        values = (*(getattr(quota, c) for c in QUOTA_COLUMNS), name)
        with self._tx() as db:
            cur = db.execute(f"UPDATE teams SET {assignments} WHERE name = ?", values)
        return cur.rowcount > 0

    def set_image_owner(self, name: str, team: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM image_owners WHERE name = ?", (name,))
            db.execute("INSERT INTO image_owners (name, team) VALUES (?, ?)", (name, team))

    def image_owners(self) -> dict[str, str]:
        rows: Iterator[sqlite3.Row] = self._db.execute("SELECT name, team FROM image_owners")
        return {r["name"]: r["team"] for r in rows}

    def delete_image_owner(self, name: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM image_owners WHERE name = ?", (name,))

    def step_rate_bucket(self, key_id: str, step: RateStep) -> None:
        """Replace a key's bucket by `step` of it, in one transaction (BEGIN IMMEDIATE: no
        other writer between the read and the write)."""
        with self._tx() as db:
            row = db.execute(
                "SELECT tokens, at FROM rate_buckets WHERE key_id = ?", (key_id,)
            ).fetchone()
            tokens, at = step(None if row is None else (row["tokens"], row["at"]))
            db.execute(
                "INSERT INTO rate_buckets (key_id, tokens, at) VALUES (?, ?, ?)"
                " ON CONFLICT (key_id) DO UPDATE SET tokens = excluded.tokens, at = excluded.at",
                (key_id, tokens, at),
            )

    def forget_rate_buckets(self, before: float) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM rate_buckets WHERE at < ?", (before,))
