"""Teams and their quotas (the store's records, checked and cached), and the one check that
keeps a member key off another team's sandbox routes."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping

from hutch.server._errors import (
    InvalidRequest,
    SandboxNotFound,
    TeamConflict,
    TeamNotFound,
)
from hutch.server.services._caller import Caller
from hutch.server.services._keys import now_iso
from hutch.server.store._sqlite import SandboxRecord, Store
from hutch.server.store._teams import DEFAULT_TEAM, Quota, TeamRecord

TEAM_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
TEAM_NAME_RULE = "1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"


def check_team_name(name: str) -> str:
    if not TEAM_NAME_RE.match(name):
        raise InvalidRequest(f"invalid team name {name!r}: use {TEAM_NAME_RULE}")
    return name


class Teams:
    """Teams and their quotas, with the quotas cached briefly (every request reads its team's
    rate limit; a change shows within `CACHE_SECONDS`, at once on this server). A store that
    keeps rows in memory (PostgreSQL replicas: store/_row_watch.py) answers instead, and no
    cache here: a change through another replica shows once its notification is heard, and
    at once while the channel is down (each request reads)."""

    CACHE_SECONDS = 2.0

    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: dict[str, tuple[float, Quota]] = {}

    def create(self, name: str, quota: Quota | None = None) -> TeamRecord:
        record = TeamRecord(
            name=check_team_name(name), created_at=now_iso(), quota=quota or Quota()
        )
        if not self._store.insert_team(record):
            raise TeamConflict(f"a team named {name!r} exists; choose another name")
        return record

    def get(self, name: str) -> TeamRecord:
        record = self._store.get_team(name)
        if record is None:
            raise TeamNotFound(
                f"no team {name!r}; list teams with GET /v1/teams (`hutch teams ls`)"
            )
        return record

    def list(self) -> list[TeamRecord]:
        return self._store.list_teams()

    def delete(self, name: str) -> None:
        self.get(name)
        if name == DEFAULT_TEAM:
            raise TeamConflict(
                "the default team cannot be deleted (existing resources belong to it)",
                code="team_not_empty",
            )
        owned = sum(1 for r in self._store.list_sandboxes() if r.team == name)
        snaps = sum(1 for s in self._store.list_snapshots() if s.team == name)
        if owned or snaps:
            raise TeamConflict(
                f"team {name!r} still owns {owned} sandbox(es) and {snaps} snapshot(s); "
                "destroy them first (an admin key lists every team's)",
                code="team_not_empty",
            )
        for image, team in self._store.image_owners().items():
            if team == name:
                self._store.delete_image_owner(image)
        self._store.delete_team(name)
        self._cache.pop(name, None)

    def set_quota(self, name: str, changes: Mapping[str, object]) -> TeamRecord:
        record = self.get(name)
        quota = record.quota.merged(dict(changes))
        self._store.set_team_quota(name, quota)
        self._cache.pop(name, None)
        return TeamRecord(name=record.name, created_at=record.created_at, quota=quota)

    def quota(self, name: str) -> Quota:
        cached = self.cached_quota(name)
        if cached is not None:
            return cached
        if self._store.rows_watched:
            return _quota_of(self._store.current_team(name))
        now = time.monotonic()
        quota = _quota_of(self._store.get_team(name))
        self._cache[name] = (now, quota)
        return quota

    def cached_quota(self, name: str) -> Quota | None:
        """The team's quota from the store's memory, or if read within CACHE_SECONDS (no
        store call); else None."""
        if self._store.rows_watched:
            known, record = self._store.cached_team(name)
            return _quota_of(record) if known else None
        cached = self._cache.get(name)
        if cached is not None and time.monotonic() - cached[0] < self.CACHE_SECONDS:
            return cached[1]
        return None

    @staticmethod
    def path_needs_check(caller: Caller, path_params: Mapping[str, str]) -> bool:
        """Whether `check_sandbox_path` has a sandbox to look up for this caller."""
        return "sandbox_id" in path_params and not caller.is_admin

    def check_sandbox_path(self, caller: Caller, path_params: Mapping[str, str]) -> None:
        """A route on another team's sandbox answers as for an unknown id (one check for
        every `/v1/sandboxes/{sandbox_id}/...` route, whatever service it calls)."""
        sandbox_id = path_params.get("sandbox_id")
        if sandbox_id is None or caller.is_admin:
            return
        _check_team(caller, sandbox_id, self._store.current_sandbox(sandbox_id))

    def checked_from_memory(self, caller: Caller, path_params: Mapping[str, str]) -> bool:
        """`check_sandbox_path` when the store knows the row from memory (True: done, no
        round trip); False: make the check."""
        sandbox_id = path_params.get("sandbox_id")
        if sandbox_id is None or caller.is_admin:
            return True
        known, record = self._store.cached_sandbox(sandbox_id)
        if known:
            _check_team(caller, sandbox_id, record)
        return known


def _quota_of(record: TeamRecord | None) -> Quota:
    return record.quota if record is not None else Quota()


def _check_team(caller: Caller, sandbox_id: str, record: SandboxRecord | None) -> None:
    if record is not None and record.team != caller.team:
        raise SandboxNotFound(sandbox_id)
