"""One test body for both stores: `OpenStore` opens new instances of one SQLite file or one
PostgreSQL database (an instance per replica, or a reopen after a crash)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hutch.server.store._open import open_store
from hutch.server.store._records import SandboxRecord, Store


def record(sandbox_id: str, **kw: object) -> SandboxRecord:
    return SandboxRecord(
        id=sandbox_id, status="running", image="default", image_id="abc", created_at="t", **kw
    )  # type: ignore[arg-type]


class OpenStore:
    def __init__(self, kind: str, *, path: Path | None = None, url: str | None = None) -> None:
        self.kind = kind
        self.path = path
        self.url = url
        self.opened: list[Store] = []

    def __call__(self) -> Store:
        store = open_store(self.path or Path("/nonexistent"), self.url)
        self.opened.append(store)
        return store

    def count(self, table: str) -> int:
        return len(self.rows(f"SELECT * FROM {table}"))

    def rows(self, sql: str) -> list[tuple[object, ...]]:
        """Run `sql` behind the store's back (as an operator with psql or sqlite3 would)."""
        if self.url is not None:
            import psycopg

            with psycopg.connect(self.url) as conn:
                cur = conn.execute(sql)  # type: ignore[arg-type]
                return list(cur.fetchall()) if cur.description else []
        assert self.path is not None
        db = sqlite3.connect(self.path)
        try:
            rows = list(db.execute(sql).fetchall())
            db.commit()
            return rows
        finally:
            db.close()

    def dump(self) -> bytes:
        """Everything the database holds on disk, as bytes to search."""
        if self.url is not None:
            tables = [
                r[0]
                for r in self.rows("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            ]
            return repr([self.rows(f"SELECT * FROM {t}") for t in tables]).encode()
        assert self.path is not None
        wal = self.path.with_name(self.path.name + "-wal")
        return self.path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")

    def close_all(self) -> None:
        for store in self.opened:
            store.close()
