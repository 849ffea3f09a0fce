"""Team quotas at create: running sandboxes, total cpu, memory and disk, lifetime, snapshots;
and `cpu` no larger than the host's cores.

Race-free, in two steps:
- in this process: the check and the reservation happen with no await between them (so on
  the one event loop no other create can interleave), and a reservation counts until the
  create has finished, its row then counting instead. This refuses early, before any work.
- across API replicas sharing one database: the sandbox's row is inserted (before its
  container is made, or before a pooled one is handed out) in the transaction that checks
  the team's rows again, under the team's lock (`Store.insert_sandbox(admit=...)`: an
  advisory transaction lock on PostgreSQL, BEGIN IMMEDIATE on SQLite). The database is the
  authority: 20 concurrent creates split over two replicas against a quota of 5: exactly 5.
- a start (a stopped sandbox holds cpu and memory again) is admitted the same way: under the
  team's lock the team's rows are checked and the sandbox is marked claimed
  (`Store.claim_start`); a claimed row counts as holding until the start ends, or for
  START_CLAIM_SECONDS if its replica died meanwhile. A snapshot's row is inserted in the
  transaction that counts the team's snapshots (`Store.insert_snapshot(admit=...)`).

Both checks read only the team's rows (by the `sandboxes_team` index), and of each only what
a quota counts (`QuotaRow`: the database takes cpu, memory and disk out of the spec): they run
on the event loop, in every create and start, and decoding whole records of every sandbox
had them hold it for tens of milliseconds at a few hundred sandboxes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from hutch.server._errors import InvalidRequest, QuotaExceeded, SandboxStateConflict
from hutch.server._models import SandboxCreate
from hutch.server.services._caller import current_team
from hutch.server.store._records import QuotaRow, SnapshotAdmission, TeamAdmission
from hutch.server.store._sqlite import SandboxRecord, Store
from hutch.server.store._teams import Quota

# States whose sandbox holds cpu and memory (a stopped one holds its disk only).
_HOLDING = frozenset({"creating", "running", "paused"})
# How long a start's claim counts when its replica never ends it (it died mid-start): longer
# than a start takes on a loaded host, so a live start is never left uncounted.
START_CLAIM_SECONDS = 300.0
# What a start may start from (services/_lifecycle.py boots these).
_STARTABLE = ("stopped", "error")


class StartedElsewhere(SandboxStateConflict):
    """Another request (another API replica) claimed this sandbox's start first: wait for
    its start instead of booting it twice."""


def _holds(row: QuotaRow, now: float) -> bool:
    """Whether the row holds cpu and memory: running, or claimed by a start under way."""
    if row.status in _HOLDING:
        return True
    claimed = row.start_claimed_at
    return claimed is not None and claimed >= now - START_CLAIM_SECONDS


@dataclass(frozen=True)
class _Need:
    team: str
    cpu: float
    memory_mb: int
    disk_mb: int


@dataclass
class Usage:
    running: int = 0
    cpu: float = 0.0
    memory_mb: int = 0
    disk_mb: int = 0

    def add(self, need: _Need | QuotaRow, *, holding: bool = True) -> None:
        if holding:
            self.running += 1
            self.cpu += need.cpu
            self.memory_mb += need.memory_mb
        self.disk_mb += need.disk_mb


class Quotas:
    def __init__(
        self, store: Store, quota_of: Callable[[str], Quota], *, host_cpus: int | None
    ) -> None:
        self._store = store
        self._quota_of = quota_of
        self.host_cpus = host_cpus
        self._pending: dict[str, _Need] = {}  # sandbox id -> what its create reserved

    def usage(self, team: str) -> Usage:
        """What the team's sandboxes hold now, with the creates under way."""
        use = Usage()
        now = time.time()
        # NB: the team's rows only, and only what the quotas count of them (not every
        # sandbox of every team, decoded: this runs on the event loop in every create).
        for record in self._store.team_quota_rows(team):
            pending = record.id in self._pending
            if pending and record.status not in _STARTABLE:
                continue  # a create under way: its reservation counts instead of its row
            # A start under way: its row holds the disk, its reservation the cpu and memory.
            use.add(record, holding=not pending and _holds(record, now))
        for need in self._pending.values():
            if need.team == team:
                use.add(need)
        return use

    def lifetime_cap(self) -> float | None:
        """The longest lifetime the caller's team allows (None: no limit)."""
        return self._quota_of(current_team()).max_lifetime

    @asynccontextmanager
    async def admit(self, sandbox_id: str, request: SandboxCreate) -> AsyncIterator[None]:
        """Reserve what the create asks for while it runs.

        Raises:
            InvalidRequest: cpu above the host's cores (cpu_above_host).
            QuotaExceeded: over one of the team's limits (the message names it and the use).
        """
        # NB: None in a cluster: the API's host runs no sandbox; placement answers no_capacity
        # when no node has the cores.
        if self.host_cpus is not None and request.cpu > self.host_cpus:
            raise InvalidRequest(
                f"cpu {request.cpu:g} is more than this host has ({self.host_cpus} cores); "
                f"ask for at most {self.host_cpus}",
                code="cpu_above_host",
            )
        team = current_team()
        _check_lifetime(team, self._quota_of(team), request.lifetime)
        need = _Need(team, request.cpu, request.memory_mb, request.disk_mb)
        async with self._reserve(sandbox_id, need, "this create"):
            yield

    def admit_rows(self, record: SandboxRecord) -> TeamAdmission | None:
        """The check of a new sandbox's row against its team's rows, which the store runs in
        the insert's transaction (the rows are every replica's, creates under way included);
        None when the team's quota limits none of what it counts (nothing to check)."""
        # NB: then the insert takes no team lock and reads no rows: on PostgreSQL that is four
        # round trips of every create (lock, read, BEGIN, COMMIT). The check in the
        # transaction read the quota from memory as this does, so a quota set meanwhile
        # counts from the creates that start after it, as before.
        if not _limits_use(self._quota_of(record.team)):
            return None
        need = _Need(record.team, record.cpu, record.memory_mb, record.disk_mb)
        return self._admit_rows(record.id, need, "this create")

    def admit_start_rows(self, record: SandboxRecord) -> TeamAdmission:
        """The check of a stopped sandbox's start against its team's rows, which the store
        runs in the transaction that claims it (`Store.claim_start`)."""
        # NB: disk 0: a stopped sandbox's row holds its disk already.
        need = _Need(record.team, record.cpu, record.memory_mb, 0)
        return self._admit_rows(record.id, need, "this start")

    def _admit_rows(self, sandbox_id: str, need: _Need, what: str) -> TeamAdmission:
        def admit(rows: list[QuotaRow]) -> None:
            use = Usage()
            now = time.time()
            for row in rows:
                # A start's own row: its disk counts (held already), its cpu is `need`'s.
                use.add(row, holding=row.id != sandbox_id and _holds(row, now))
            _check(need.team, self._quota_of(need.team), use, need, what)

        return admit

    @asynccontextmanager
    async def admit_start(self, record: SandboxRecord) -> AsyncIterator[None]:
        """Admit a stopped sandbox's start (it holds cpu and memory again) while it runs:
        first against this replica's view, then in the database under the team's lock.

        Raises:
            QuotaExceeded: the start would put the team over a limit.
            StartedElsewhere: another request (on any replica) is starting it, or it is no
                longer stopped.
        """
        # NB: disk 0: a stopped sandbox's row holds its disk already.
        need = _Need(record.team, record.cpu, record.memory_mb, 0)
        async with self._reserve(record.id, need, "this start"):
            now = time.time()
            admit = self.admit_start_rows(record)
            if not self._store.claim_start(
                record.id, _STARTABLE, admit, now, now - START_CLAIM_SECONDS
            ):
                raise StartedElsewhere(
                    f"sandbox {record.id} is being started by another request, or is no "
                    "longer stopped; look at its state and retry"
                )
            try:
                yield
            finally:
                self._store.end_start_claim(record.id)

    def check_lifetime(self, team: str, seconds: float) -> None:
        """A new lifetime (set_timeout) within the team's longest."""
        _check_lifetime(team, self._quota_of(team), seconds)

    @asynccontextmanager
    async def _reserve(self, sandbox_id: str, need: _Need, what: str) -> AsyncIterator[None]:
        # NB: no await from the check to the reservation: no other create can slip in between.
        quota = self._quota_of(need.team)
        if _limits_use(quota):  # else no read of the team's rows (a round trip in a cluster)
            _check(need.team, quota, self.usage(need.team), need, what)
        self._pending[sandbox_id] = need
        try:
            yield
        finally:
            self._pending.pop(sandbox_id, None)

    def admit_snapshot(self, team: str) -> SnapshotAdmission:
        """The check of one more snapshot for `team`, given how many it has: early against
        this replica's view, and again in the transaction that inserts the snapshot's row.

        Raises:
            QuotaExceeded: the team is at its snapshots quota (when the check is called).
        """
        limit = self._quota_of(team).max_snapshots

        def admit(used: int) -> None:
            if limit is not None and used >= limit:
                raise QuotaExceeded(
                    f"team {team!r} is at its snapshots quota (max_snapshots {limit}): {used} "
                    "in use; delete one (`hutch snapshot rm`) or ask an admin to raise it"
                )

        return admit


def _check_lifetime(team: str, quota: Quota, lifetime: float | None) -> None:
    limit = quota.max_lifetime
    if limit is None or (lifetime and lifetime <= limit):
        return
    asked = f"{lifetime:g}s" if lifetime else "no limit"
    raise QuotaExceeded(
        f"team {team!r} allows a lifetime (timeout) of at most {limit:g}s; this asks for "
        f"{asked}: give a timeout of {limit:g}s or less"
    )


def _limits_use(quota: Quota) -> bool:
    """Whether the quota limits anything `_check` counts (what the team's rows hold)."""
    limits = (quota.max_running, quota.max_cpu, quota.max_memory_mb, quota.max_disk_mb)
    return any(limit is not None for limit in limits)


def _check(team: str, quota: Quota, use: Usage, need: _Need, what: str) -> None:
    checks: list[tuple[str, float | None, float, float, str]] = [
        ("running sandboxes", quota.max_running, use.running, 1, "max_running"),
        ("cpu", quota.max_cpu, use.cpu, need.cpu, "max_cpu"),
        ("memory_mb", quota.max_memory_mb, use.memory_mb, need.memory_mb, "max_memory_mb"),
        ("disk_mb", quota.max_disk_mb, use.disk_mb, need.disk_mb, "max_disk_mb"),
    ]
    for resource, limit, used, asked, name in checks:
        if limit is not None and used + asked > limit:
            raise QuotaExceeded(
                f"team {team!r} is over its {resource} quota ({name} {limit:g}): {used:g} in "
                f"use, {what} asks for {asked:g} more; destroy or stop sandboxes, or ask an "
                "admin to raise it (`hutch teams quota`)"
            )
