"""Which store a server opens: PostgreSQL when a database URL is configured (several API
replicas share it), else the SQLite file under HUTCH_HOME (one host; the default)."""

from __future__ import annotations

from pathlib import Path

from hutch.server.store._events import EventLog
from hutch.server.store._records import Store

URL_SCHEMES = ("postgresql://", "postgres://")


def check_database_url(url: str) -> str:
    """The URL, if it names a PostgreSQL database.

    Raises:
        ValueError: another scheme (the message says which one is taken).
    """
    if not url.startswith(URL_SCHEMES):
        raise ValueError(
            f"database URL {url.split('://')[0]!r}:// is not supported: give a PostgreSQL URL "
            "(HUTCH_DATABASE_URL=postgresql://USER:PASSWORD@HOST:5432/DB), or leave it unset "
            "for the SQLite file under HUTCH_HOME"
        )
    return url


def open_store(db_path: Path, database_url: str | None) -> Store:
    """The store for a server: PostgreSQL at `database_url`, else SQLite at `db_path`."""
    if database_url:
        # Imported here: a single-host server never loads the PostgreSQL driver.
        from hutch.server.store._postgres import PostgresStore

        return PostgresStore(check_database_url(database_url))
    from hutch.server.store._sqlite import SqliteStore

    return SqliteStore(db_path)


def open_event_log(store: Store, db_path: Path) -> EventLog:
    """The sandbox event log beside `store`: in its PostgreSQL database (on its pool), or in
    the SQLite file on a connection of its own."""
    from hutch.server.store._sqlite import SqliteStore

    if isinstance(store, SqliteStore):
        from hutch.server.store._events import SqliteEventLog

        return SqliteEventLog(db_path)
    from hutch.server.store._postgres import PostgresStore
    from hutch.server.store._postgres_events import PostgresEventLog

    assert isinstance(store, PostgresStore)
    return PostgresEventLog(store)
