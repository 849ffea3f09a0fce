"""`PostgresStore`: the `Store` (server/store/_records.py) on PostgreSQL, for several API
replicas sharing one database (``HUTCH_DATABASE_URL=postgresql://…``; SQLite stays the default).

The services call the store synchronously from the event loop (as they call SQLite), so every
call is bounded: a connection is made within CONNECT_TIMEOUT, a pooled one is waited for at
most POOL_TIMEOUT, and a statement runs at most STATEMENT_TIMEOUT_MS; past that the call
raises instead of stalling the loop. On loopback one call is a few hundred microseconds
(bench/store_latency.py).

What replicas must agree on is decided by the database, never by a replica's memory:
- status changes are conditional UPDATEs (`transition`: ``WHERE status = ANY(expected)``);
- warm-pool claims take one ready row with ``FOR UPDATE SKIP LOCKED``;
- `hold_lock` is a session advisory lock (``pg_try_advisory_lock``) on a connection of its
  own: held while this process lives, released by PostgreSQL when it dies, so another
  replica takes over at its next try.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from hutch.server.store._migrations import pending, statements
from hutch.server.store._postgres_nodes import PostgresNodes
from hutch.server.store._postgres_teams import PostgresTeams
from hutch.server.store._postgres_watch import KEY_ROW, PostgresWatch
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
    TeamAdmission,
)
from hutch.server.store._row_watch import SandboxRows

log = logging.getLogger("hutch.server.store")

T = TypeVar("T")
Row = dict[str, Any]
Conn = psycopg.Connection[Row]

CONNECT_TIMEOUT = 5  # seconds (libpq takes whole seconds)
POOL_TIMEOUT = 5.0
STATEMENT_TIMEOUT_MS = 5000
POOL_MAX = 8
# The advisory lock that orders migrations of replicas starting at once.
MIGRATION_LOCK = "hutch:migrations"
# The listening connection's name (pg_stat_activity), apart from the pool's.
ROWS_APPLICATION = "hutch-rows"


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for `name`."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _connect_kwargs(statement_timeout_ms: int = STATEMENT_TIMEOUT_MS) -> dict[str, Any]:
    return {
        "autocommit": True,
        "row_factory": dict_row,
        "connect_timeout": CONNECT_TIMEOUT,
        "application_name": "hutch",
        "options": f"-c statement_timeout={statement_timeout_ms}",
        # NB: a replica cut off by the network must lose its advisory locks in seconds, not
        # after the kernel's 2-hour default: the server probes idle sessions.
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
    }


class PostgresStore(PostgresWatch, PostgresTeams, PostgresNodes):
    """`Store` on a PostgreSQL database; any number of instances (replicas) may share it."""

    remote = True

    def __init__(
        self,
        url: str,
        *,
        pool_max: int = POOL_MAX,
        statement_timeout_ms: int = STATEMENT_TIMEOUT_MS,
    ) -> None:
        self._url = url
        self._pool: ConnectionPool[Conn] = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_max,
            kwargs=_connect_kwargs(statement_timeout_ms),
            timeout=POOL_TIMEOUT,
            name="hutch-store",
            open=False,
        )
        self._pool.open(wait=True, timeout=POOL_TIMEOUT + CONNECT_TIMEOUT)
        # The hot paths' calls run on these threads, off the event loop (_off_loop.py). Half
        # the pool: a call may take a second connection while it holds one (a create's
        # admission reads the team's quota inside the insert's transaction), so all threads
        # at once must never hold the whole pool.
        self._offload = ThreadPoolExecutor(max(1, pool_max // 2), thread_name_prefix="hutch-store")
        # One session per lock name: an advisory lock lives as long as its session.
        self._locks: dict[str, Conn] = {}
        self._held: set[str] = set()
        # Rows answered from memory while change notifications are heard (`watch_sandboxes`).
        self._watch: SandboxRows | None = None
        try:
            self._migrate()
        except BaseException:
            self._pool.close()
            raise

    # -- plumbing ---------------------------------------------------------------------------

    def _run(self, work: Callable[[Conn], T]) -> T:
        """`work` on a pooled connection; once more on a fresh one if the first was dead (the
        server restarted, or a network blip closed it while it sat in the pool)."""
        for attempt in (1, 2):
            with self._pool.connection() as conn:
                try:
                    return work(conn)
                except psycopg.OperationalError:
                    if attempt == 2 or not conn.closed:
                        raise
                    log.warning("store connection lost; retrying on a new one")
            # The others in the pool most likely died with it (a database restart).
            self._pool.check()
        raise AssertionError("unreachable")  # pragma: no cover

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        def work(conn: Conn) -> list[Row]:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

        return self._run(work)

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> Row | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def _count(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        return self._run(lambda conn: conn.execute(sql, params).rowcount)

    def _migrate(self) -> None:
        def work(conn: Conn) -> None:
            # Replicas starting together: one migrates, the others wait and find it done.
            conn.execute("SELECT pg_advisory_lock(%s)", (lock_key(MIGRATION_LOCK),))
            try:
                conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                row = conn.execute("SELECT MAX(version) AS v FROM schema_version").fetchone()
                for version, migration in pending((row or {}).get("v") or 0):
                    with conn.transaction():
                        for statement in statements(migration, "postgres"):
                            conn.execute(statement)
                        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key(MIGRATION_LOCK),))

        self._run(work)

    @property
    def schema_version(self) -> int:
        row = self._one("SELECT MAX(version) AS v FROM schema_version")
        return int(row["v"]) if row else 0

    @property
    def offload(self) -> Executor | None:
        return self._offload

    def close(self) -> None:
        if self._watch is not None:
            self._watch.stop()
        self._offload.shutdown(wait=True)
        for name in list(self._locks):
            self.release_lock(name)
        self._pool.close()

    # -- sandboxes --------------------------------------------------------------------------

    def insert_sandbox(
        self,
        record: SandboxRecord,
        secrets: Mapping[str, bytes] | None = None,
        admit: TeamAdmission | None = None,
    ) -> bool:
        """Insert, with its sealed `secrets` in the same transaction; False if the id is
        taken. `admit` sees the team's sandboxes first, in the same transaction, under the
        team's lock (every replica's inserts for one team queue on it), and may raise."""

        row = record.insert_values()

        def insert(conn: Conn) -> bool:
            cur = conn.execute(
                f"INSERT INTO sandboxes ({INSERT_COLUMNS})"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (id) DO NOTHING",
                row,
            )
            if cur.rowcount == 0:
                return False
            if secrets:
                cur.executemany(
                    "INSERT INTO sandbox_secrets (sandbox_id, name, ciphertext)"
                    " VALUES (%s, %s, %s)",
                    [(record.id, name, token) for name, token in secrets.items()],
                )
            return True

        def work(conn: Conn) -> bool:
            if admit is None and not secrets:
                # One statement is its own transaction (autocommit): no BEGIN and COMMIT
                # round trips around it.
                return insert(conn)
            with conn.transaction():
                if admit is not None:
                    admit(_team_rows(conn, record.team))
                return insert(conn)

        inserted = self._run(work)
        self._touched(record.id)
        return inserted

    def claim_start(
        self,
        sandbox_id: str,
        expected: Collection[str],
        admit: TeamAdmission,
        now: float,
        stale_before: float,
    ) -> bool:
        def work(conn: Conn) -> bool:
            with conn.transaction():
                row = conn.execute(
                    "SELECT team FROM sandboxes WHERE id = %s", (sandbox_id,)
                ).fetchone()
                if row is None:
                    return False
                admit(_team_rows(conn, row["team"]))
                claimed = conn.execute(
                    "UPDATE sandboxes SET start_claimed_at = %s WHERE id = %s"
                    " AND status = ANY(%s)"
                    " AND (start_claimed_at IS NULL OR start_claimed_at < %s)",
                    (now, sandbox_id, list(expected), stale_before),
                )
                return claimed.rowcount == 1

        claimed = self._run(work)
        self._touched(sandbox_id)
        return claimed

    def end_start_claim(self, sandbox_id: str) -> None:
        self._count("UPDATE sandboxes SET start_claimed_at = NULL WHERE id = %s", (sandbox_id,))
        self._touched(sandbox_id)

    def set_runtime_id(self, sandbox_id: str, runtime_id: str) -> None:
        self._count("UPDATE sandboxes SET runtime_id = %s WHERE id = %s", (runtime_id, sandbox_id))
        self._touched(sandbox_id)

    def get_sandbox(self, sandbox_id: str) -> SandboxRecord | None:
        row = self._one("SELECT * FROM sandboxes WHERE id = %s", (sandbox_id,))
        return SandboxRecord.from_row(row) if row else None

    def watch_sandboxes(self) -> None:
        """Answer rows from memory while every change of them is heard (LISTEN on a
        connection of its own; store/_postgres_watch.py). An API replica calls it at its
        start."""
        if self._watch is None:
            self._watch = SandboxRows(
                lambda: psycopg.connect(
                    self._url, **{**_connect_kwargs(), "application_name": ROWS_APPLICATION}
                ),
                self.get_sandbox,
            )
            self._watch.start()

    def list_sandboxes(self) -> list[SandboxRecord]:
        rows = self._rows("SELECT * FROM sandboxes ORDER BY created_at, id")
        return [SandboxRecord.from_row(r) for r in rows]

    def watched_sandboxes(self) -> list[tuple[str, str]]:
        return [(r["id"], r["status"]) for r in self._rows(WATCHED_SQL)]

    def sandbox_counts(self) -> dict[str, int]:
        return {r["status"]: int(r["n"]) for r in self._rows(COUNTS_SQL)}

    def team_quota_rows(self, team: str) -> list[QuotaRow]:
        return [QuotaRow.from_row(r) for r in self._rows(_QUOTA_SQL, (team,))]

    def set_sandbox_status(self, sandbox_id: str, status: str) -> None:
        self._count("UPDATE sandboxes SET status = %s WHERE id = %s", (status, sandbox_id))
        self._touched(sandbox_id)

    def delete_sandbox(self, sandbox_id: str) -> None:
        def work(conn: Conn) -> None:
            with conn.transaction():
                for table, column in (
                    ("sandboxes", "id"),
                    ("sandbox_secrets", "sandbox_id"),
                    ("exposed_ports", "sandbox_id"),
                ):
                    conn.execute(f"DELETE FROM {table} WHERE {column} = %s", (sandbox_id,))

        self._run(work)
        self._touched(sandbox_id)

    # NB: status_reason lives in the spec (JSON text); set in the same UPDATE as the status so
    # that a concurrent update_sandbox_spec cannot interleave between a read and a write.
    _SET_STATE = (
        "UPDATE sandboxes SET status = %s, expires_at = %s, spec = jsonb_set(spec::jsonb,"
        " '{status_reason}', COALESCE(to_jsonb(%s::text), 'null'::jsonb))::text WHERE id = %s"
    )

    def set_sandbox_state(
        self, sandbox_id: str, status: str, reason: str | None, expires_at: float | None
    ) -> None:
        """Status, its reason and the expiry in one statement (a lifecycle step)."""
        self._count(self._SET_STATE, (status, expires_at, reason, sandbox_id))
        self._touched(sandbox_id)

    def transition(
        self,
        sandbox_id: str,
        expected: Collection[str],
        status: str,
        reason: str | None,
        expires_at: float | None,
    ) -> bool:
        sql = self._SET_STATE + " AND status = ANY(%s)"
        params = (status, expires_at, reason, sandbox_id, list(expected))
        watch = self._watch
        if watch is None or status in expected:
            changed = self._count(sql, params)
            self._touched(sandbox_id)
            return changed > 0

        # NB: the row as written is kept (_row_watch.py `expect`): the next request on the
        # sandbox (a create's first exec) reads nothing. A status change always notifies.
        def work(conn: Conn) -> Row | None:
            watch.expect(sandbox_id, conn.info.backend_pid)
            return conn.execute(sql + " RETURNING *", params).fetchone()

        row = None
        try:
            row = self._run(work)
        finally:
            watch.wrote(sandbox_id, SandboxRecord.from_row(row) if row else None)
        return row is not None

    def update_sandbox_spec(self, record: SandboxRecord) -> None:
        self._count("UPDATE sandboxes SET spec = %s WHERE id = %s", (record.spec_json(), record.id))
        self._touched(record.id)

    # -- snapshots and backups --------------------------------------------------------------

    def insert_snapshot(
        self, record: SnapshotRecord, admit: SnapshotAdmission | None = None
    ) -> bool:
        """False if the id or the name is taken. `admit` sees how many snapshots the team
        has, in the same transaction, under the team's lock, and may raise."""

        def work(conn: Conn) -> bool:
            with conn.transaction():
                if admit is not None:
                    _lock_team(conn, record.team)
                    count = conn.execute(
                        "SELECT COUNT(*) AS n FROM snapshots WHERE team = %s", (record.team,)
                    ).fetchone()
                    admit(int((count or {}).get("n") or 0))
                cur = conn.execute(
                    "INSERT INTO snapshots (id, name, sandbox_id, image, image_id, created_at,"
                    " spec, team) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
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
                return cur.rowcount > 0

        return self._run(work)

    def get_snapshot(self, snapshot_id: str) -> SnapshotRecord | None:
        """By id or by name."""
        row = self._one(
            "SELECT * FROM snapshots WHERE id = %s OR name = %s ORDER BY id = %s DESC LIMIT 1",
            (snapshot_id, snapshot_id, snapshot_id),
        )
        return SnapshotRecord(**row) if row else None

    def list_snapshots(self) -> list[SnapshotRecord]:
        rows = self._rows("SELECT * FROM snapshots ORDER BY created_at, id")
        return [SnapshotRecord(**r) for r in rows]

    def delete_snapshot(self, snapshot_id: str) -> bool:
        return self._count("DELETE FROM snapshots WHERE id = %s", (snapshot_id,)) > 0

    def insert_backup(self, record: BackupRecord) -> None:
        self._count(
            "INSERT INTO backups (id, sandbox_id, bucket, endpoint, prefix, parent_id, snapshot,"
            " created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
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
        # NB: SQLite breaks created_at ties by rowid; microsecond timestamps of backups that
        # take seconds each do not tie, and the id keeps the order stable if they did.
        rows = self._rows(
            "SELECT * FROM backups WHERE sandbox_id = %s ORDER BY created_at, id", (sandbox_id,)
        )
        return [BackupRecord(**r) for r in rows]

    def clear_backup_snapshot(self, backup_id: str) -> None:
        self._count("UPDATE backups SET snapshot = NULL WHERE id = %s", (backup_id,))

    # -- ports, keys, secrets ---------------------------------------------------------------

    def insert_port(self, record: PortRecord) -> PortRecord:
        """Insert, or return the port's existing record (exposing twice keeps the URL)."""

        def work(conn: Conn) -> Row | None:
            with conn.transaction():
                conn.execute(
                    "INSERT INTO exposed_ports (sandbox_id, port, name, token, created_at)"
                    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (sandbox_id, port) DO NOTHING",
                    (record.sandbox_id, record.port, record.name, record.token, record.created_at),
                )
                return conn.execute(
                    "SELECT * FROM exposed_ports WHERE sandbox_id = %s AND port = %s",
                    (record.sandbox_id, record.port),
                ).fetchone()

        row = self._run(work)
        assert row is not None
        return PortRecord(**row)

    def delete_port(self, sandbox_id: str, port: int) -> bool:
        return (
            self._count(
                "DELETE FROM exposed_ports WHERE sandbox_id = %s AND port = %s", (sandbox_id, port)
            )
            > 0
        )

    def list_ports(self, sandbox_id: str | None = None) -> list[PortRecord]:
        if sandbox_id is None:
            rows = self._rows("SELECT * FROM exposed_ports ORDER BY sandbox_id, port")
        else:
            rows = self._rows(
                "SELECT * FROM exposed_ports WHERE sandbox_id = %s ORDER BY port", (sandbox_id,)
            )
        return [PortRecord(**r) for r in rows]

    def insert_key(self, record: ApiKeyRecord) -> None:
        self._count(
            "INSERT INTO api_keys (id, name, prefix, key_hash, created_at, team, role,"
            " expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
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
        self._touched(KEY_ROW + record.key_hash)

    def list_keys(self) -> list[ApiKeyRecord]:
        return [
            ApiKeyRecord(**r) for r in self._rows("SELECT * FROM api_keys ORDER BY created_at, id")
        ]

    def find_key_by_hash(self, key_hash: str) -> ApiKeyRecord | None:
        row = self._one("SELECT * FROM api_keys WHERE key_hash = %s", (key_hash,))
        return ApiKeyRecord(**row) if row else None

    def delete_key(self, key_id: str) -> bool:
        row = self._one("DELETE FROM api_keys WHERE id = %s RETURNING key_hash", (key_id,))
        if row is None:
            return False
        self._touched(KEY_ROW + row["key_hash"])
        return True

    def set_secrets(self, sandbox_id: str, sealed: dict[str, bytes]) -> None:
        def work(conn: Conn) -> None:
            with conn.transaction():
                conn.execute("DELETE FROM sandbox_secrets WHERE sandbox_id = %s", (sandbox_id,))
                if sealed:
                    conn.cursor().executemany(
                        "INSERT INTO sandbox_secrets (sandbox_id, name, ciphertext)"
                        " VALUES (%s, %s, %s)",
                        [(sandbox_id, name, token) for name, token in sealed.items()],
                    )

        self._run(work)

    def get_secrets(self, sandbox_id: str) -> dict[str, bytes]:
        rows = self._rows(
            "SELECT name, ciphertext FROM sandbox_secrets WHERE sandbox_id = %s", (sandbox_id,)
        )
        return {r["name"]: bytes(r["ciphertext"]) for r in rows}

    # -- what several API replicas need -----------------------------------------------------

    def hold_lock(self, name: str) -> bool:
        conn = self._locks.get(name)
        try:
            if conn is None:
                conn = self._locks[name] = psycopg.connect(self._url, **_connect_kwargs())
            if name in self._held:
                # Still ours while the session lives: one round trip proves it does.
                conn.execute("SELECT 1")
                return True
            row = conn.execute(
                "SELECT pg_try_advisory_lock(%s) AS ok", (lock_key(name),)
            ).fetchone()
        except psycopg.Error as exc:
            if name in self._held:
                log.warning("lost the database lock %r: %s", name, exc)
            self.release_lock(name)
            return False
        if row is None or not row["ok"]:
            return False
        log.info("took the database lock %r", name)
        self._held.add(name)
        return True

    def release_lock(self, name: str) -> None:
        conn = self._locks.pop(name, None)
        if conn is None:
            return
        if name in self._held:
            self._held.discard(name)
            # NB: unlocked before the close returns: the server ends a closed session a
            # moment later, and the next holder should not wait for that.
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key(name),))
        conn.close()  # ends the session: any advisory lock left goes with it

    def set_active_at(self, sandbox_id: str, at: float) -> None:
        # NB: no later time is overwritten by an earlier one from a slower replica.
        self._count(
            "UPDATE sandboxes SET active_at = %s WHERE id = %s"
            " AND (active_at IS NULL OR active_at < %s)",
            (at, sandbox_id, at),
        )

    def add_pool_entry(self, record: PoolEntryRecord) -> None:
        self._count(
            "INSERT INTO pool_entries (runtime_id, node, image_id, created_at, claimed_by)"
            " VALUES (%s, %s, %s, %s, %s)",
            (record.runtime_id, record.node, record.image_id, record.created_at, record.claimed_by),
        )

    def claim_pool_entry(self, node: str, image_id: str, sandbox_id: str) -> str | None:
        # NB: SKIP LOCKED: a row another replica is claiming right now is passed over, not
        # waited for; one that was claimed meanwhile fails the re-check of `claimed_by IS
        # NULL` and the scan goes on to the next.
        row = self._one(
            "UPDATE pool_entries SET claimed_by = %s WHERE runtime_id = ("
            " SELECT runtime_id FROM pool_entries"
            " WHERE node = %s AND image_id = %s AND claimed_by IS NULL"
            " ORDER BY created_at DESC, runtime_id LIMIT 1 FOR UPDATE SKIP LOCKED"
            ") RETURNING runtime_id",
            (sandbox_id, node, image_id),
        )
        return str(row["runtime_id"]) if row else None

    def delete_pool_entry(self, runtime_id: str) -> None:
        self._count("DELETE FROM pool_entries WHERE runtime_id = %s", (runtime_id,))

    def list_pool_entries(self, node: str) -> list[PoolEntryRecord]:
        rows = self._rows(
            "SELECT * FROM pool_entries WHERE node = %s ORDER BY created_at, runtime_id", (node,)
        )
        return [PoolEntryRecord(**r) for r in rows]


def _lock_team(conn: Conn, team: str) -> None:
    """The team's lock until the transaction ends: every replica's admissions for one team
    (creates, starts, snapshots) queue on it."""
    # NB: an advisory lock, not FOR UPDATE on the team's row: it holds for a team with no
    # row too, and ends with the transaction. Read committed: a SELECT after it sees what the
    # previous holder committed.
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(f"hutch:team:{team}"),))


# NB: json_to_record parses each spec once (`spec::json->>'cpu'` and the like parsed it once
# per setting).
_QUOTA_SQL = (
    "SELECT id, status, start_claimed_at, q.cpu, q.memory_mb, q.disk_mb FROM sandboxes"
    " CROSS JOIN LATERAL json_to_record(spec::json) AS q(cpu float8, memory_mb float8,"
    " disk_mb float8) WHERE team = %s"
)


def _team_rows(conn: Conn, team: str) -> list[QuotaRow]:
    """The team's sandboxes as its quotas count them, read under the team's lock."""
    _lock_team(conn, team)
    return [QuotaRow.from_row(r) for r in conn.execute(_QUOTA_SQL, (team,)).fetchall()]
