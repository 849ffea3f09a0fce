"""Persistent state behind a small repository interface.

`Store` is what the rest of the server uses; `SqliteStore` is the one implementation today (one
file, WAL). A PostgreSQL store can implement the same protocol when Hutch spans several hosts.
Migrations are numbered; each runs once, in order, inside a transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass
class SandboxRecord:
    id: str
    status: str
    image: str
    image_id: str
    created_at: str
    expires_at: float | None = None
    cpu: float = 1.0
    memory_mb: int = 1024
    disk_mb: int = 4096
    pids_limit: int = 512
    network: str = "none"
    network_allow: list[str] = field(default_factory=list)
    network_deny: list[str] = field(default_factory=list)
    runtime: str = "runc"
    timeout: float | None = None
    sleep_after: float | None = None  # seconds of idleness before it sleeps
    keep_alive: bool = False
    on_idle: str = "pause"  # pause | stop
    on_timeout: str = "destroy"  # destroy | stop | pause
    status_reason: str | None = None  # why it is in its status (shown to users)
    start_entrypoint: bool = False  # started again on `start`
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    secret_names: list[str] = field(default_factory=list)  # values: sandbox_secrets, encrypted
    # The id the runtime knows it by, when not `id` (a sandbox handed out by a warm pool).
    runtime_id: str | None = None

    _SPEC_FIELDS = (
        "cpu",
        "memory_mb",
        "disk_mb",
        "pids_limit",
        "network",
        "network_allow",
        "network_deny",
        "runtime",
        "timeout",
        "sleep_after",
        "keep_alive",
        "on_idle",
        "on_timeout",
        "status_reason",
        "start_entrypoint",
        "env",
        "labels",
        "secret_names",
    )

    def spec_json(self) -> str:
        return json.dumps({name: getattr(self, name) for name in self._SPEC_FIELDS})

    @classmethod
    def from_spec_json(cls, spec: str) -> SandboxRecord:
        """Only the settings of a `spec_json()` (a snapshot's), on a placeholder record."""
        known = {k: v for k, v in json.loads(spec).items() if k in cls._SPEC_FIELDS}
        return cls(id="", status="", image="", image_id="", created_at="", **known)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> SandboxRecord:
        spec: dict[str, Any] = json.loads(row["spec"])
        known = {k: v for k, v in spec.items() if k in cls._SPEC_FIELDS}
        if isinstance(known.get("sleep_after"), str):  # rows from before it was checked
            from hutch.server._durations import parse_duration

            try:
                known["sleep_after"] = parse_duration(known["sleep_after"])
            except ValueError:
                known["sleep_after"] = None
        return cls(
            id=row["id"],
            status=row["status"],
            image=row["image"],
            image_id=row["image_id"],
            created_at=row["created_at"],
            expires_at=row["expires_at"],
            runtime_id=row["runtime_id"],
            **known,
        )


@dataclass(frozen=True)
class ApiKeyRecord:
    id: str
    name: str
    prefix: str
    key_hash: str
    created_at: str


@dataclass(frozen=True)
class PortRecord:
    sandbox_id: str
    port: int
    name: str | None
    token: str
    created_at: str


@dataclass(frozen=True)
class SnapshotRecord:
    """A sandbox's disk, kept as a read-only btrfs snapshot, with the settings to start it."""

    id: str
    name: str | None
    sandbox_id: str  # the sandbox it was taken of (it may be gone since)
    image: str
    image_id: str
    created_at: str
    spec: str  # the sandbox's SandboxRecord.spec_json() at the time


@dataclass(frozen=True)
class BackupRecord:
    id: str
    sandbox_id: str
    bucket: str
    endpoint: str
    prefix: str | None
    parent_id: str | None  # the backup this one is incremental against
    snapshot: str | None  # local snapshot id kept as the next backup's parent
    created_at: str


class Store(Protocol):
    def close(self) -> None: ...
    def insert_sandbox(
        self, record: SandboxRecord, secrets: Mapping[str, bytes] | None = None
    ) -> bool: ...
    def get_sandbox(self, sandbox_id: str) -> SandboxRecord | None: ...
    def list_sandboxes(self) -> list[SandboxRecord]: ...
    def set_sandbox_status(self, sandbox_id: str, status: str) -> None: ...
    def delete_sandbox(self, sandbox_id: str) -> None: ...
    def insert_key(self, record: ApiKeyRecord) -> None: ...
    def list_keys(self) -> list[ApiKeyRecord]: ...
    def find_key_by_hash(self, key_hash: str) -> ApiKeyRecord | None: ...
    def delete_key(self, key_id: str) -> bool: ...
    def set_secrets(self, sandbox_id: str, sealed: dict[str, bytes]) -> None: ...
    def get_secrets(self, sandbox_id: str) -> dict[str, bytes]: ...
    def update_sandbox_spec(self, record: SandboxRecord) -> None: ...
    def set_runtime_id(self, sandbox_id: str, runtime_id: str) -> None: ...
    def insert_port(self, record: PortRecord) -> PortRecord: ...
    def delete_port(self, sandbox_id: str, port: int) -> bool: ...
    def list_ports(self, sandbox_id: str | None = None) -> list[PortRecord]: ...
    def set_sandbox_state(
        self, sandbox_id: str, status: str, reason: str | None, expires_at: float | None
    ) -> None: ...
    def insert_snapshot(self, record: SnapshotRecord) -> bool: ...
    def get_snapshot(self, snapshot_id: str) -> SnapshotRecord | None: ...
    def list_snapshots(self) -> list[SnapshotRecord]: ...
    def delete_snapshot(self, snapshot_id: str) -> bool: ...
    def insert_backup(self, record: BackupRecord) -> None: ...
    def list_backups(self, sandbox_id: str) -> list[BackupRecord]: ...
    def clear_backup_snapshot(self, backup_id: str) -> None: ...


MIGRATIONS: tuple[str, ...] = (
    # 1: sandboxes and API keys
    """
    CREATE TABLE sandboxes (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        image TEXT NOT NULL,
        image_id TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at REAL,
        spec TEXT NOT NULL
    );
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        prefix TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL
    );
    """,
    # 2: sandbox secrets (values encrypted by server/services/_secrets.py; names also in the spec)
    """
    CREATE TABLE sandbox_secrets (
        sandbox_id TEXT NOT NULL,
        name TEXT NOT NULL,
        ciphertext BLOB NOT NULL,
        PRIMARY KEY (sandbox_id, name)
    );
    """,
    # 3: exposed ports and their preview-URL tokens
    """
    CREATE TABLE exposed_ports (
        sandbox_id TEXT NOT NULL,
        port INTEGER NOT NULL,
        name TEXT,
        token TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (sandbox_id, port)
    );
    """,
    # 4: the runtime id of a sandbox from a warm pool (NULL: the sandbox's own id); written in
    # the same transaction as the sandbox's row (it was a JSON file next to the db before)
    """
    ALTER TABLE sandboxes ADD COLUMN runtime_id TEXT;
    """,
    # 5: snapshots of sandbox disks (the data is a btrfs subvolume; see server/_lifecycle.py)
    """
    CREATE TABLE snapshots (
        id TEXT PRIMARY KEY,
        name TEXT UNIQUE,
        sandbox_id TEXT NOT NULL,
        image TEXT NOT NULL,
        image_id TEXT NOT NULL,
        created_at TEXT NOT NULL,
        spec TEXT NOT NULL
    );
    """,
    # 6: backups to S3 (server/_backups.py); `snapshot`: the local copy kept as the parent of
    # the next incremental backup (NULL once a newer backup took that role)
    """
    CREATE TABLE backups (
        id TEXT PRIMARY KEY,
        sandbox_id TEXT NOT NULL,
        bucket TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        prefix TEXT,
        parent_id TEXT,
        snapshot TEXT,
        created_at TEXT NOT NULL
    );
    """,
)


class SqliteStore:
    """`Store` on one SQLite file in WAL mode; safe to open after a ``kill -9``."""

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
        self._migrate()

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
        current = row["v"] or 0
        if current > len(MIGRATIONS):
            raise RuntimeError(
                f"state database schema v{current} is newer than this Hutch (v{len(MIGRATIONS)})"
            )
        for version, sql in enumerate(MIGRATIONS[current:], start=current + 1):
            with self._tx() as db:
                for statement in filter(str.strip, sql.split(";")):
                    db.execute(statement)
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def insert_sandbox(
        self, record: SandboxRecord, secrets: Mapping[str, bytes] | None = None
    ) -> bool:
        """Insert, with its sealed `secrets` in the same transaction; False if the id is taken
        (the caller decides what that means)."""
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO sandboxes (id, status, image, image_id, created_at, expires_at,"
                    " spec, runtime_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.id,
                        record.status,
                        record.image,
                        record.image_id,
                        record.created_at,
                        record.expires_at,
                        record.spec_json(),
                        record.runtime_id,
                    ),
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

    def set_runtime_id(self, sandbox_id: str, runtime_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE sandboxes SET runtime_id = ? WHERE id = ?", (runtime_id, sandbox_id))

    def get_sandbox(self, sandbox_id: str) -> SandboxRecord | None:
        row = self._db.execute("SELECT * FROM sandboxes WHERE id = ?", (sandbox_id,)).fetchone()
        return SandboxRecord.from_row(row) if row else None

    def list_sandboxes(self) -> list[SandboxRecord]:
        rows = self._db.execute("SELECT * FROM sandboxes ORDER BY created_at, id").fetchall()
        return [SandboxRecord.from_row(r) for r in rows]

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

    def insert_snapshot(self, record: SnapshotRecord) -> bool:
        """False if the id or the name is taken."""
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO snapshots (id, name, sandbox_id, image, image_id, created_at,"
                    " spec) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.id,
                        record.name,
                        record.sandbox_id,
                        record.image,
                        record.image_id,
                        record.created_at,
                        record.spec,
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
                "INSERT INTO api_keys (id, name, prefix, key_hash, created_at) VALUES (?,?,?,?,?)",
                (record.id, record.name, record.prefix, record.key_hash, record.created_at),
            )

    def list_keys(self) -> list[ApiKeyRecord]:
        rows = self._db.execute("SELECT * FROM api_keys ORDER BY created_at, id").fetchall()
        return [ApiKeyRecord(**dict(r)) for r in rows]

    def find_key_by_hash(self, key_hash: str) -> ApiKeyRecord | None:
        row = self._db.execute("SELECT * FROM api_keys WHERE key_hash = ?", (key_hash,)).fetchone()
        return ApiKeyRecord(**dict(row)) if row else None

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
