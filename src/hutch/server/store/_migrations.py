"""The schema of every store, as one numbered list of migrations for SQLite and PostgreSQL.

Each migration runs once, in order, inside a transaction that also records its number in the
`schema_version` table; a database newer than this Hutch is refused.

Adding the next migration is a one-place change for both dialects: append to `MIGRATIONS`.

- Write it once, in SQL both databases take, naming the types that differ by placeholder:
  ``{blob}`` (BLOB / BYTEA), ``{double}`` (REAL / DOUBLE PRECISION) and ``{autoid}`` (an
  auto-numbered integer primary key: INTEGER PRIMARY KEY AUTOINCREMENT / BIGSERIAL PRIMARY KEY).
  Use ``{{`` and ``}}`` for a literal brace. ``TEXT``, ``INTEGER``, ``ALTER TABLE … ADD COLUMN``,
  ``CREATE INDEX … WHERE`` (partial indexes) are the same in both.
- Only where the two must differ, give `Migration(sqlite=..., postgres=...)`.
- Statements are split on ``;``, but not inside ``$$ … $$`` (a PostgreSQL function's body):
  no other semicolons inside a statement (no string literals holding one).

Never edit a migration that has shipped: a database that ran it will not run it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Dialect = Literal["sqlite", "postgres"]

TYPES: dict[Dialect, dict[str, str]] = {
    "sqlite": {
        "blob": "BLOB",
        "double": "REAL",
        "autoid": "INTEGER PRIMARY KEY AUTOINCREMENT",
    },
    "postgres": {
        "blob": "BYTEA",
        "double": "DOUBLE PRECISION",
        "autoid": "BIGSERIAL PRIMARY KEY",
    },
}


@dataclass(frozen=True)
class Migration:
    """A migration whose SQL must differ between the dialects."""

    sqlite: str
    postgres: str


MIGRATIONS: tuple[str | Migration, ...] = (
    # 1: sandboxes and API keys
    """
    CREATE TABLE sandboxes (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        image TEXT NOT NULL,
        image_id TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at {double},
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
        ciphertext {blob} NOT NULL,
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
    # 7: warm-pool sandboxes ready on a node, claimed in the database so that two API replicas
    # sharing a node never hand out one twice (PostgreSQL: FOR UPDATE SKIP LOCKED)
    """
    CREATE TABLE pool_entries (
        runtime_id TEXT PRIMARY KEY,
        node TEXT NOT NULL,
        image_id TEXT NOT NULL,
        created_at TEXT NOT NULL,
        claimed_by TEXT
    );
    CREATE INDEX pool_entries_ready ON pool_entries (node, image_id, created_at)
        WHERE claimed_by IS NULL;
    """,
    # 8: when a sandbox was last used through any API replica (idle sleep across replicas)
    """
    ALTER TABLE sandboxes ADD COLUMN active_at {double};
    """,
    # 9: teams and their quotas; the team of every key, sandbox, snapshot and API-made image
    # name (server/store/_teams.py). Existing rows belong to the `default` team; existing keys
    # stay admins (every key was one before teams existed).
    """
    CREATE TABLE teams (
        name TEXT PRIMARY KEY,
        created_at TEXT NOT NULL,
        max_running INTEGER,
        max_cpu {double},
        max_memory_mb INTEGER,
        max_disk_mb INTEGER,
        max_lifetime {double},
        max_snapshots INTEGER,
        rate_per_second {double},
        rate_burst INTEGER
    );
    INSERT INTO teams (name, created_at) VALUES ('default', '1970-01-01T00:00:00.000000Z');
    ALTER TABLE api_keys ADD COLUMN team TEXT NOT NULL DEFAULT 'default';
    ALTER TABLE api_keys ADD COLUMN role TEXT NOT NULL DEFAULT 'admin';
    ALTER TABLE api_keys ADD COLUMN expires_at {double};
    ALTER TABLE sandboxes ADD COLUMN team TEXT NOT NULL DEFAULT 'default';
    ALTER TABLE snapshots ADD COLUMN team TEXT NOT NULL DEFAULT 'default';
    CREATE TABLE image_owners (
        name TEXT PRIMARY KEY,
        team TEXT NOT NULL
    );
    CREATE INDEX sandboxes_team ON sandboxes (team);
    """,
    # 10: the nodes of a cluster and each sandbox's node (store/_nodes.py); unused on one host
    """
    CREATE TABLE nodes (
        name TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        cpu {double} NOT NULL,
        memory_mb INTEGER NOT NULL,
        disk_mb INTEGER NOT NULL,
        used_cpu {double} NOT NULL DEFAULT 0,
        used_memory_mb INTEGER NOT NULL DEFAULT 0,
        used_disk_mb INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL DEFAULT 'ready',
        last_heartbeat {double} NOT NULL
    );
    CREATE TABLE sandbox_nodes (
        sandbox_id TEXT PRIMARY KEY,
        node TEXT NOT NULL
    );
    CREATE INDEX sandbox_nodes_node ON sandbox_nodes (node);
    """,
    # 11: the event log of each sandbox (server/store/_events.py), numbered per sandbox
    """
    CREATE TABLE sandbox_events (
        sandbox_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        type TEXT NOT NULL,
        at {double} NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (sandbox_id, seq)
    );
    """,
    # 12: the node that holds each disk snapshot in a cluster (store/_nodes.py); unused on one host
    """
    CREATE TABLE snapshot_nodes (
        snapshot_id TEXT PRIMARY KEY,
        node TEXT NOT NULL
    );
    """,
    # 13: each API key's request token bucket, shared by the API replicas of one database
    # (services/_ratelimit.py); a row not touched for a while is the same as a full bucket
    """
    CREATE TABLE rate_buckets (
        key_id TEXT PRIMARY KEY,
        tokens {double} NOT NULL,
        at {double} NOT NULL
    );
    """,
    # 14: when an API replica claimed a stopped sandbox to start it (under its team's lock):
    # it counts against the team's quotas from then on (services/_quotas.py)
    """
    ALTER TABLE sandboxes ADD COLUMN start_claimed_at {double};
    """,
    # 15: the runtime id a sandbox's node knows it by, next to its node: a replica's call to a
    # node reads both at once (services/_cluster_host.py). NULL in rows from before: the
    # sandbox's own row has it.
    """
    ALTER TABLE sandbox_nodes ADD COLUMN runtime_id TEXT;
    """,
    # 16: when a snapshot's node was recorded: the reconciler removes a fork's copies whose
    # replica died before its children took them (services/_fork_leftovers.py). NULL in rows
    # from before: counted from when the reconciler first sees them.
    """
    ALTER TABLE snapshot_nodes ADD COLUMN recorded_at {double};
    """,
    # 17: the warm pools each node is configured with (its HUTCH_WARM_POOLS, JSON: image name ->
    # the cluster's size), heartbeated: a replica's GET /v1/pools reads them. NULL: a node of
    # an older Hutch
    """
    ALTER TABLE nodes ADD COLUMN pool_sizes TEXT;
    """,
    # 18: the sandbox runtimes each node can run (JSON list: "runc", "gvisor" where runsc is
    # installed), heartbeated: placement puts a gVisor sandbox only where it can run. NULL: a
    # node of an older Hutch (runc only)
    """
    ALTER TABLE nodes ADD COLUMN runtimes TEXT;
    """,
    # 19: every change of a sandbox's row (but one of its last use alone) notifies the
    # replicas listening (`NOTIFY hutch_sandboxes, '<id>'`, at commit): a replica answers a
    # sandbox's row from memory while it hears them (store/_row_watch.py). SQLite: nothing
    # (one process, or a file shared on one machine: every read reads the file)
    Migration(
        sqlite="",
        postgres="""
        CREATE FUNCTION hutch_sandbox_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                PERFORM pg_notify('hutch_sandboxes', OLD.id);
            ELSIF TG_OP = 'INSERT' THEN
                PERFORM pg_notify('hutch_sandboxes', NEW.id);
            ELSIF (to_jsonb(OLD) - 'active_at') IS DISTINCT FROM (to_jsonb(NEW) - 'active_at')
            THEN
                PERFORM pg_notify('hutch_sandboxes', OLD.id);
                PERFORM pg_notify('hutch_sandboxes', NEW.id);
            END IF;
            RETURN NULL;
        END
        $$;
        CREATE TRIGGER sandboxes_changed AFTER INSERT OR UPDATE OR DELETE ON sandboxes
            FOR EACH ROW EXECUTE FUNCTION hutch_sandbox_changed();
        """,
    ),
    # 20: every change of an API key's row or a team's row notifies the same channel
    # (`key:<key digest>`, `team:<name>`; no sandbox id holds a `:`): a replica answers a team
    # key's request (the key, its team's quota) from memory while it hears them, and a key
    # deleted or a quota changed through another replica reaches it with the notification.
    # SQLite: nothing (as 19)
    Migration(
        sqlite="",
        postgres="""
        CREATE FUNCTION hutch_key_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP <> 'INSERT' THEN
                PERFORM pg_notify('hutch_sandboxes', 'key:' || OLD.key_hash);
            END IF;
            IF TG_OP <> 'DELETE' THEN
                PERFORM pg_notify('hutch_sandboxes', 'key:' || NEW.key_hash);
            END IF;
            RETURN NULL;
        END
        $$;
        CREATE TRIGGER api_keys_changed AFTER INSERT OR UPDATE OR DELETE ON api_keys
            FOR EACH ROW EXECUTE FUNCTION hutch_key_changed();
        CREATE FUNCTION hutch_team_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP <> 'INSERT' THEN
                PERFORM pg_notify('hutch_sandboxes', 'team:' || OLD.name);
            END IF;
            IF TG_OP <> 'DELETE' THEN
                PERFORM pg_notify('hutch_sandboxes', 'team:' || NEW.name);
            END IF;
            RETURN NULL;
        END
        $$;
        CREATE TRIGGER teams_changed AFTER INSERT OR UPDATE OR DELETE ON teams
            FOR EACH ROW EXECUTE FUNCTION hutch_team_changed();
        """,
    ),
)


def migration_sql(migration: str | Migration, dialect: Dialect) -> str:
    """The migration's SQL script as `dialect` takes it."""
    if isinstance(migration, Migration):
        return migration.sqlite if dialect == "sqlite" else migration.postgres
    return migration.format_map(TYPES[dialect])


def statements(migration: str | Migration, dialect: Dialect) -> list[str]:
    """The migration's statements, one by one (drivers run one statement per call); a
    ``$$``-quoted function body is part of its statement."""
    found: list[str] = []
    current = ""
    # Even pieces are outside $$ … $$, odd ones a body, kept whole.
    for i, piece in enumerate(migration_sql(migration, dialect).split("$$")):
        if i % 2:
            current += f"$${piece}$$"
            continue
        first, *rest = piece.split(";")
        current += first
        if rest:
            found.append(current)
            *ended, current = rest
            found += ended
    return [s.strip() for s in [*found, current] if s.strip()]


def pending(current: int) -> list[tuple[int, str | Migration]]:
    """(version, migration) of what a database at schema `current` has still to run.

    Raises:
        RuntimeError: the database is newer than this Hutch.
    """
    if current > len(MIGRATIONS):
        raise RuntimeError(
            f"state database schema v{current} is newer than this Hutch (v{len(MIGRATIONS)}): "
            "upgrade Hutch, or point it at another database"
        )
    return list(enumerate(MIGRATIONS[current:], start=current + 1))
