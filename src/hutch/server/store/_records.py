"""The `Store` contract: the records the server keeps and the one protocol every store
(SQLite on one host, PostgreSQL for several API replicas) implements. Records in, records out;
nothing of Hutch's is imported here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

from hutch.server.store._nodes import NodeStore
from hutch.server.store._teams import DEFAULT_TEAM, TeamStore

# The columns a new sandbox row is inserted with (`SandboxRecord.insert_values`).
INSERT_COLUMNS = "id, status, image, image_id, created_at, expires_at, spec, runtime_id, team"


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
    # When it was last used through any API replica (wall clock; services/_activity.py).
    active_at: float | None = None
    team: str = DEFAULT_TEAM
    # When a replica claimed it (stopped) to start it (wall clock; Store.claim_start).
    start_claimed_at: float | None = None

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

    def insert_values(self) -> tuple[object, ...]:
        """The values of its row's insert, in `INSERT_COLUMNS`' order (both stores)."""
        return (
            self.id,
            self.status,
            self.image,
            self.image_id,
            self.created_at,
            self.expires_at,
            self.spec_json(),
            self.runtime_id,
            self.team,
        )

    def spec_json(self) -> str:
        return json.dumps({name: getattr(self, name) for name in self._SPEC_FIELDS})

    @classmethod
    def from_spec_json(cls, spec: str) -> SandboxRecord:
        """Only the settings of a `spec_json()` (a snapshot's), on a placeholder record."""
        known = {k: v for k, v in json.loads(spec).items() if k in cls._SPEC_FIELDS}
        return cls(id="", status="", image="", image_id="", created_at="", **known)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> SandboxRecord:
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
            team=row["team"],
            active_at=row["active_at"],
            start_claimed_at=row["start_claimed_at"],
            **known,
        )


@dataclass(frozen=True)
class ApiKeyRecord:
    id: str
    name: str
    prefix: str
    key_hash: str
    created_at: str
    team: str = DEFAULT_TEAM
    role: str = "member"  # admin | member
    expires_at: float | None = None  # unix time; None: never


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
    team: str = DEFAULT_TEAM


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


@dataclass(frozen=True)
class PoolEntryRecord:
    """A warm-pool sandbox started on `node` and ready to be handed out (until `claimed_by`)."""

    runtime_id: str
    node: str
    image_id: str
    created_at: str
    claimed_by: str | None = None


@dataclass(frozen=True)
class QuotaRow:
    """What a team's quotas count of one sandbox (services/_quotas.py).

    Read by a query that takes only these out of the row (the database reads the spec's JSON),
    not by decoding whole records: decoding a team of 200 took 26 ms at load on SQLite, on the
    event loop, in every create and start."""

    id: str
    status: str
    cpu: float
    memory_mb: int
    disk_mb: int
    start_claimed_at: float | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> QuotaRow:
        """From a row with these columns (each store's query takes cpu, memory_mb and
        disk_mb out of the spec); a spec without a setting (a row from before it existed) has
        SandboxRecord's default."""
        base = SandboxRecord

        def num(name: str, default: float) -> float:
            value = row[name]
            return default if value is None else float(value)

        return cls(
            id=row["id"],
            status=row["status"],
            cpu=num("cpu", base.cpu),
            memory_mb=int(num("memory_mb", base.memory_mb)),
            disk_mb=int(num("disk_mb", base.disk_mb)),
            start_claimed_at=row["start_claimed_at"],
        )


# Checks a new sandbox against its team's sandboxes, inside the insert's transaction (the
# team's quotas: services/_quotas.py); raises to refuse it.
TeamAdmission = Callable[[list[QuotaRow]], None]
# Checks a new snapshot against the number its team keeps, inside the insert's transaction.
SnapshotAdmission = Callable[[int], None]


# What the death watch asks about (`Store.watched_sandboxes`): the same SQL in both dialects.
WATCHED_SQL = "SELECT id, status FROM sandboxes WHERE status IN ('running', 'paused')"
# How many sandboxes are in each state (`Store.sandbox_counts`, the metrics' gauge).
COUNTS_SQL = "SELECT status, COUNT(*) AS n FROM sandboxes GROUP BY status"


class Store(TeamStore, NodeStore, Protocol):
    """What the server keeps. Every method is synchronous and short (one transaction); a
    store bounds how long one call may take (PostgreSQL: connect, pool and statement
    timeouts). `offload` is where a call that waits on the network should run instead of the
    event loop (None: in place), `remote` whether a call is a round trip to a server;
    the hot paths call through `_off_loop`."""

    @property
    def offload(self) -> Executor | None: ...

    @property
    def remote(self) -> bool: ...

    def close(self) -> None: ...
    def insert_sandbox(
        self,
        record: SandboxRecord,
        secrets: Mapping[str, bytes] | None = None,
        admit: TeamAdmission | None = None,
    ) -> bool: ...
    def get_sandbox(self, sandbox_id: str) -> SandboxRecord | None: ...
    # The row from memory where the store keeps it current (store/_row_watch.py): (True, row
    # or None) known, (False, None) not; `current_sandbox` reads when memory does not know.
    def cached_sandbox(self, sandbox_id: str) -> tuple[bool, SandboxRecord | None]: ...
    def current_sandbox(self, sandbox_id: str) -> SandboxRecord | None: ...
    def forget_sandbox(self, sandbox_id: str) -> bool: ...
    @property
    def rows_live(self) -> bool: ...
    # Whether the store keeps rows in memory at all (then no other cache may answer for one).
    @property
    def rows_watched(self) -> bool: ...
    def watch_sandboxes(self) -> None: ...

    def list_sandboxes(self) -> list[SandboxRecord]: ...
    def watched_sandboxes(self) -> list[tuple[str, str]]: ...
    def sandbox_counts(self) -> dict[str, int]: ...
    def team_quota_rows(self, team: str) -> list[QuotaRow]: ...
    def set_sandbox_status(self, sandbox_id: str, status: str) -> None: ...
    def delete_sandbox(self, sandbox_id: str) -> None: ...
    def insert_key(self, record: ApiKeyRecord) -> None: ...
    def list_keys(self) -> list[ApiKeyRecord]: ...
    def find_key_by_hash(self, key_hash: str) -> ApiKeyRecord | None: ...
    def cached_key(self, key_hash: str) -> tuple[bool, ApiKeyRecord | None]: ...
    def current_key(self, key_hash: str) -> ApiKeyRecord | None: ...
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
    # A start's admission, as a create's: under the team's lock, `admit` sees the team's rows,
    # then the sandbox (still in an `expected` status) is marked claimed at `now`. False if
    # it is not in such a status or another replica's claim newer than `stale_before` holds.
    def claim_start(
        self,
        sandbox_id: str,
        expected: Collection[str],
        admit: TeamAdmission,
        now: float,
        stale_before: float,
    ) -> bool: ...
    def end_start_claim(self, sandbox_id: str) -> None: ...
    def insert_snapshot(
        self, record: SnapshotRecord, admit: SnapshotAdmission | None = None
    ) -> bool: ...
    def get_snapshot(self, snapshot_id: str) -> SnapshotRecord | None: ...
    def list_snapshots(self) -> list[SnapshotRecord]: ...
    def delete_snapshot(self, snapshot_id: str) -> bool: ...
    def insert_backup(self, record: BackupRecord) -> None: ...
    def list_backups(self, sandbox_id: str) -> list[BackupRecord]: ...
    def clear_backup_snapshot(self, backup_id: str) -> None: ...
    # -- what several API replicas on one database need -----------------------------------
    def transition(
        self,
        sandbox_id: str,
        expected: Collection[str],
        status: str,
        reason: str | None,
        expires_at: float | None,
    ) -> bool:
        """Like `set_sandbox_state`, only while the status is one of `expected` (one
        conditional UPDATE); False if another replica changed it first or it is gone."""
        ...

    def hold_lock(self, name: str) -> bool:
        """Whether this store holds the database-wide lock `name`, taking it when free; kept
        until `release_lock`, `close` or this process's death. One process: always True."""
        ...

    def release_lock(self, name: str) -> None: ...
    def set_active_at(self, sandbox_id: str, at: float) -> None: ...
    def add_pool_entry(self, record: PoolEntryRecord) -> None: ...
    def claim_pool_entry(self, node: str, image_id: str, sandbox_id: str) -> str | None:
        """The runtime id of a ready pool sandbox of `image_id` on `node`, now claimed by
        `sandbox_id` (the newest first); None when none is ready. Never the same one twice,
        whatever the number of replicas claiming at once."""
        ...

    def delete_pool_entry(self, runtime_id: str) -> None: ...
    def list_pool_entries(self, node: str) -> list[PoolEntryRecord]: ...
