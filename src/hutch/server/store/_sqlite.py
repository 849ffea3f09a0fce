"""`SqliteStore`: the `Store` (server/store/_records.py) on one SQLite file in WAL mode, the
single-host default. `PostgresStore` (_postgres.py) is the same contract for several API
replicas. The schema of both is one list of migrations (_migrations.py).
"""

from __future__ import annotations

import functools
import inspect
import json
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from hutch.server.store._migrations import MIGRATIONS, pending, statements
from hutch.server.store._nodes import NodeRows
from hutch.server.store._records import (
    COUNTS_SQL,
    INSERT_COLUMNS,
    WATCHED_SQL,
    ApiKeyRecord,
    BackupRecord,
    PoolEntryRecord,
    PortRecord,
    QuotaRow,
    SandboxRecord,
    SnapshotAdmission,
    SnapshotRecord,
    Store,
    TeamAdmission,
)
from hutch.server.store._teams import SqliteTeams

# Kept importable from here: most of the server imports the records from this module.
S = TypeVar("S")
T = TypeVar("T")
# `current_sandbox` keeps at most this many records (a host runs at most ~1,000 sandboxes).
MAX_ROWS_KEPT = 4096

__all__ = [
    "MIGRATIONS",
    "ApiKeyRecord",
    "BackupRecord",
    "PoolEntryRecord",
    "PortRecord",
    "SandboxRecord",
    "SnapshotRecord",
    "SqliteStore",
    "Store",
]


def _locked(fn: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(fn)
    def locked(self: Any, *args: Any, **kwargs: Any) -> T:
        with self._lock:
            return fn(self, *args, **kwargs)

    return locked


def _serialized(cls: type[S]) -> type[S]:
    """Every public method of `cls` (and its mixins) holds the store's lock while it runs:
    one connection, shared by the event loop and the store's thread, must never have two
    transactions interleaved on it. `close` waits for the thread first, so it takes the lock
    itself."""
    for klass in reversed(cls.__mro__[:-1]):
        for name, fn in vars(klass).items():
            if not name.startswith("_") and name != "close" and inspect.isfunction(fn):
                setattr(cls, name, _locked(fn))
    return cls


@_serialized
class SqliteStore(SqliteTeams, NodeRows):
    """`Store` on one SQLite file in WAL mode; safe to open after a ``kill -9``."""

    remote = False

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # NB: isolation_level=None: we open transactions ourselves, so a migration and its
        # version bump commit together or not at all.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # NB: NORMAL, not FULL: in WAL mode a commit then writes the WAL without an fsync (the
        # WAL is synced at checkpoints). A kill -9 loses nothing; a power loss may lose the last
        # commits, and with them sandboxes whose containers died with the host anyway (the
        # sweep removes what is left of them). FULL would put an fsync on every create.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._lock = threading.RLock()
        # `current_sandbox`'s memory: records as read, good while the file is what it was
        # (`_data_version`); an exec's sandbox read was ~0.1 ms of the server's ~0.5 ms.
        self._rows: dict[str, SandboxRecord] = {}
        self._rows_version: tuple[int, int] = (-1, -1)
        # One thread: the calls it runs are serialized by the lock anyway (_off_loop.py).
        self._offload = ThreadPoolExecutor(1, thread_name_prefix="hutch-store")
        self._migrate()

    @property
    def offload(self) -> Executor | None:
        return self._offload

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")

    def _migrate(self) -> None:
        self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self._db.execute("SELECT MAX(version) AS v FROM schema_version").fetchone()
        for version, migration in pending(row["v"] or 0):
            with self._tx() as db:
                for statement in statements(migration, "sqlite"):
                    db.execute(statement)
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0])

    def close(self) -> None:
        self._offload.shutdown(wait=True)
        with self._lock:
            self._db.close()

    def insert_sandbox(
        self,
        record: SandboxRecord,
        secrets: Mapping[str, bytes] | None = None,
        admit: TeamAdmission | None = None,
    ) -> bool:
        """Insert, with its sealed `secrets` in the same transaction; False if the id is taken
        (the caller decides what that means). `admit` sees the team's sandboxes first, in the
        same transaction (BEGIN IMMEDIATE: no other writer in between), and may raise."""
        try:
            with self._tx() as db:
                if admit is not None:
                    admit(_team_quota_rows(db, record.team))
                db.execute(
                    f"INSERT INTO sandboxes ({INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    record.insert_values(),
                )
                if secrets:
                    db.executemany(
                        "INSERT INTO sandbox_secrets (sandbox_id, name, ciphertext)"
                        " VALUES (?, ?, ?)",
                        [(record.id, name, token) for name, token in secrets.items()],
                    )
        except sqlite3.IntegrityError:
            return False
        return True

    def claim_start(
        self,
        sandbox_id: str,
        expected: Collection[str],
        admit: TeamAdmission,
        now: float,
        stale_before: float,
    ) -> bool:
        wanted = list(expected)
        marks = ", ".join("?" * len(wanted))
        with self._tx() as db:  # BEGIN IMMEDIATE: the one writer, as for a create's insert
            row = db.execute("SELECT team FROM sandboxes WHERE id = ?", (sandbox_id,)).fetchone()
            if row is None:
                return False
            admit(_team_quota_rows(db, row["team"]))
            claimed = db.execute(
                "UPDATE sandboxes SET start_claimed_at = ? WHERE id = ?"
                f" AND status IN ({marks})"
                " AND (start_claimed_at IS NULL OR start_claimed_at < ?)",
                (now, sandbox_id, *wanted, stale_before),
            )
            return claimed.rowcount == 1

    def end_start_claim(self, sandbox_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE sandboxes SET start_claimed_at = NULL WHERE id = ?", (sandbox_id,))

    def set_runtime_id(self, sandbox_id: str, runtime_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE sandboxes SET runtime_id = ? WHERE id = ?", (runtime_id, sandbox_id))

    def get_sandbox(self, sandbox_id: str) -> SandboxRecord | None:
        row = self._db.execute("SELECT * FROM sandboxes WHERE id = ?", (sandbox_id,)).fetchone()
        return SandboxRecord.from_row(row) if row else None

    def cached_sandbox(self, sandbox_id: str) -> tuple[bool, SandboxRecord | None]:
        # NB: never without asking the file, which other processes may write (a cluster on
        # one machine): `current_sandbox` asks whether it changed, then answers from memory.
        return False, None

    def current_sandbox(self, sandbox_id: str) -> SandboxRecord | None:
        """`get_sandbox`, from memory while nothing was written to the file since it was read
        (by this connection or any other, another process's included)."""
        version = self._data_version()
        if version != self._rows_version:
            self._rows.clear()
            self._rows_version = version
        record = self._rows.get(sandbox_id)
        if record is None:
            record = self.get_sandbox(sandbox_id)
            if record is not None:
                if len(self._rows) >= MAX_ROWS_KEPT:
                    self._rows.clear()
                self._rows[sandbox_id] = record
        return record

    def _data_version(self) -> tuple[int, int]:
        """Changes when anything is written to the file: SQLite's `data_version` counts other
        connections' commits, `total_changes` this connection's own row changes (a rolled
        back one too, which only costs a read)."""
        other = self._db.execute("PRAGMA data_version").fetchone()[0]
        return other, self._db.total_changes

    def forget_sandbox(self, sandbox_id: str) -> bool:
        return False

    @property
    def rows_live(self) -> bool:
        return False

    @property
    def rows_watched(self) -> bool:
        return False

    def watch_sandboxes(self) -> None:
        pass  # nothing to hear on a file

    def list_sandboxes(self) -> list[SandboxRecord]:
        rows = self._db.execute("SELECT * FROM sandboxes ORDER BY created_at, id").fetchall()
        return [SandboxRecord.from_row(r) for r in rows]

    def watched_sandboxes(self) -> list[tuple[str, str]]:
        """(id, status) of the running and paused sandboxes: what the death watch asks the
        host about twice a second, without building every row (15 ms a call for 1,000)."""
        rows = self._db.execute(WATCHED_SQL).fetchall()
        return [(r["id"], r["status"]) for r in rows]

    def sandbox_counts(self) -> dict[str, int]:
        """status -> how many sandboxes are in it (the metrics' gauge, counted by SQLite)."""
        return {r["status"]: r["n"] for r in self._db.execute(COUNTS_SQL).fetchall()}

    def team_quota_rows(self, team: str) -> list[QuotaRow]:
        return _team_quota_rows(self._db, team)

    def set_sandbox_status(self, sandbox_id: str, status: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE sandboxes SET status = ? WHERE id = ?", (status, sandbox_id))

    def delete_sandbox(self, sandbox_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM sandboxes WHERE id = ?", (sandbox_id,))
            db.execute("DELETE FROM sandbox_secrets WHERE sandbox_id = ?", (sandbox_id,))
            db.execute("DELETE FROM exposed_ports WHERE sandbox_id = ?", (sandbox_id,))

    def set_sandbox_state(
        self, sandbox_id: str, status: str, reason: str | None, expires_at: float | None
    ) -> None:
        """Status, its reason and the expiry in one transaction (a lifecycle step)."""
        with self._tx() as db:
            row = db.execute("SELECT spec FROM sandboxes WHERE id = ?", (sandbox_id,)).fetchone()
            if row is None:
                return
            spec = json.loads(row["spec"])
            spec["status_reason"] = reason
            db.execute(
                "UPDATE sandboxes SET status = ?, expires_at = ?, spec = ? WHERE id = ?",
                (status, expires_at, json.dumps(spec), sandbox_id),
            )

    def insert_snapshot(
        self, record: SnapshotRecord, admit: SnapshotAdmission | None = None
    ) -> bool:
        """False if the id or the name is taken. `admit` sees how many snapshots the team
        has, in the same transaction, and may raise."""
        try:
            with self._tx() as db:
                if admit is not None:
                    admit(_team_snapshots(db, record.team))
                db.execute(
                    "INSERT INTO snapshots (id, name, sandbox_id, image, image_id, created_at,"
                    " spec, team) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.id,
                        record.name,
                        record.sandbox_id,
                        record.image,
                        record.image_id,
                        record.created_at,
                        record.spec,
                        record.team,
                    ),
                )
        except sqlite3.IntegrityError:
            return False
        return True

    def get_snapshot(self, snapshot_id: str) -> SnapshotRecord | None:
        """By id or by name."""
        row = self._db.execute(
            "SELECT * FROM snapshots WHERE id = ? OR name = ?", (snapshot_id, snapshot_id)
        ).fetchone()
        return SnapshotRecord(**dict(row)) if row else None

    def list_snapshots(self) -> list[SnapshotRecord]:
        rows = self._db.execute("SELECT * FROM snapshots ORDER BY created_at, id").fetchall()
        return [SnapshotRecord(**dict(r)) for r in rows]

    def delete_snapshot(self, snapshot_id: str) -> bool:
        with self._tx() as db:
            cur = db.execute("DELETE FROM snapshots WHERE id = ?", (snapshot_id,))
        return cur.rowcount > 0

    def insert_backup(self, record: BackupRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO backups (id, sandbox_id, bucket, endpoint, prefix, parent_id,"
                " snapshot, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.sandbox_id,
                    record.bucket,
                    record.endpoint,
                    record.prefix,
                    record.parent_id,
                    record.snapshot,
                    record.created_at,
                ),
            )

    def list_backups(self, sandbox_id: str) -> list[BackupRecord]:
        rows = self._db.execute(
            "SELECT * FROM backups WHERE sandbox_id = ? ORDER BY created_at, rowid", (sandbox_id,)
        ).fetchall()
        return [BackupRecord(**dict(r)) for r in rows]

    def clear_backup_snapshot(self, backup_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE backups SET snapshot = NULL WHERE id = ?", (backup_id,))

    def update_sandbox_spec(self, record: SandboxRecord) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE sandboxes SET spec = ? WHERE id = ?", (record.spec_json(), record.id)
            )

    def insert_port(self, record: PortRecord) -> PortRecord:
        """Insert, or return the port's existing record (exposing twice keeps the URL)."""
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO exposed_ports (sandbox_id, port, name, token, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (record.sandbox_id, record.port, record.name, record.token, record.created_at),
            )
            row = db.execute(
                "SELECT * FROM exposed_ports WHERE sandbox_id = ? AND port = ?",
                (record.sandbox_id, record.port),
            ).fetchone()
        return PortRecord(**dict(row))

    def delete_port(self, sandbox_id: str, port: int) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM exposed_ports WHERE sandbox_id = ? AND port = ?", (sandbox_id, port)
            )
        return cur.rowcount > 0

    def list_ports(self, sandbox_id: str | None = None) -> list[PortRecord]:
        if sandbox_id is None:
            rows = self._db.execute("SELECT * FROM exposed_ports ORDER BY sandbox_id, port")
        else:
            rows = self._db.execute(
                "SELECT * FROM exposed_ports WHERE sandbox_id = ? ORDER BY port", (sandbox_id,)
            )
        return [PortRecord(**dict(r)) for r in rows.fetchall()]

    def insert_key(self, record: ApiKeyRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO api_keys (id, name, prefix, key_hash, created_at, team, role,"
                " expires_at) VALUES (?,?,?,?,?,?,?,?)",
                (
                    record.id,
                    record.name,
                    record.prefix,
                    record.key_hash,
                    record.created_at,
                    record.team,
                    record.role,
                    record.expires_at,
                ),
            )

    def list_keys(self) -> list[ApiKeyRecord]:
        rows = self._db.execute("SELECT * FROM api_keys ORDER BY created_at, id").fetchall()
        return [ApiKeyRecord(**dict(r)) for r in rows]

    def find_key_by_hash(self, key_hash: str) -> ApiKeyRecord | None:
        row = self._db.execute("SELECT * FROM api_keys WHERE key_hash = ?", (key_hash,)).fetchone()
        return ApiKeyRecord(**dict(row)) if row else None

    def cached_key(self, key_hash: str) -> tuple[bool, ApiKeyRecord | None]:
        return False, None  # NB: never (as `cached_sandbox`)

    def current_key(self, key_hash: str) -> ApiKeyRecord | None:
        return self.find_key_by_hash(key_hash)

    def delete_key(self, key_id: str) -> bool:
        with self._tx() as db:
            cur = db.execute("DELETE FROM api_keys WHERE id = ?", (key_id,))
        return cur.rowcount > 0

    def set_secrets(self, sandbox_id: str, sealed: dict[str, bytes]) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM sandbox_secrets WHERE sandbox_id = ?", (sandbox_id,))
            db.executemany(
                "INSERT INTO sandbox_secrets (sandbox_id, name, ciphertext) VALUES (?, ?, ?)",
                [(sandbox_id, name, token) for name, token in sealed.items()],
            )

    def get_secrets(self, sandbox_id: str) -> dict[str, bytes]:
        rows = self._db.execute(
            "SELECT name, ciphertext FROM sandbox_secrets WHERE sandbox_id = ?", (sandbox_id,)
        ).fetchall()
        return {r["name"]: bytes(r["ciphertext"]) for r in rows}

    # -- what several API replicas need (one process: trivially true) ---------------------

    def transition(
        self,
        sandbox_id: str,
        expected: Collection[str],
        status: str,
        reason: str | None,
        expires_at: float | None,
    ) -> bool:
        wanted = list(expected)
        marks = ", ".join("?" * len(wanted))
        with self._tx() as db:
            row = db.execute(
                f"SELECT spec FROM sandboxes WHERE id = ? AND status IN ({marks})",
                (sandbox_id, *wanted),
            ).fetchone()
            if row is None:
                return False
            spec = json.loads(row["spec"])
            spec["status_reason"] = reason
            db.execute(
                "UPDATE sandboxes SET status = ?, expires_at = ?, spec = ? WHERE id = ?",
                (status, expires_at, json.dumps(spec), sandbox_id),
            )
        return True

    def hold_lock(self, name: str) -> bool:
        # NB: one SQLite file has one server: it is always the only one.
        return True

    def release_lock(self, name: str) -> None:
        pass

    def set_active_at(self, sandbox_id: str, at: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE sandboxes SET active_at = ? WHERE id = ?"
                " AND (active_at IS NULL OR active_at < ?)",
                (at, sandbox_id, at),
            )

    def add_pool_entry(self, record: PoolEntryRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO pool_entries (runtime_id, node, image_id, created_at, claimed_by)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    record.runtime_id,
                    record.node,
                    record.image_id,
                    record.created_at,
                    record.claimed_by,
                ),
            )

    def claim_pool_entry(self, node: str, image_id: str, sandbox_id: str) -> str | None:
        # BEGIN IMMEDIATE takes the write lock first: claims are one at a time.
        with self._tx() as db:
            row = db.execute(
                "SELECT runtime_id FROM pool_entries WHERE node = ? AND image_id = ?"
                " AND claimed_by IS NULL ORDER BY created_at DESC, runtime_id LIMIT 1",
                (node, image_id),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE pool_entries SET claimed_by = ? WHERE runtime_id = ?",
                (sandbox_id, row["runtime_id"]),
            )
        return str(row["runtime_id"])

    def delete_pool_entry(self, runtime_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM pool_entries WHERE runtime_id = ?", (runtime_id,))

    def list_pool_entries(self, node: str) -> list[PoolEntryRecord]:
        rows = self._db.execute(
            "SELECT * FROM pool_entries WHERE node = ? ORDER BY created_at, runtime_id", (node,)
        ).fetchall()
        return [PoolEntryRecord(**dict(r)) for r in rows]


def _team_snapshots(db: sqlite3.Connection, team: str) -> int:
    return int(db.execute("SELECT COUNT(*) FROM snapshots WHERE team = ?", (team,)).fetchone()[0])


_QUOTA_SQL = (
    "SELECT id, status, start_claimed_at, json_extract(spec, '$.cpu') AS cpu,"
    " json_extract(spec, '$.memory_mb') AS memory_mb, json_extract(spec, '$.disk_mb') AS disk_mb"
    " FROM sandboxes WHERE team = ?"
)


def _team_quota_rows(db: sqlite3.Connection, team: str) -> list[QuotaRow]:
    """The team's sandboxes as its quotas count them (by the `sandboxes_team` index)."""
    return [QuotaRow.from_row(r) for r in db.execute(_QUOTA_SQL, (team,))]
