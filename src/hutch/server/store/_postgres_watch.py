"""Rows from memory on PostgreSQL (store/_row_watch.py), mixed into `PostgresStore`: a
sandbox's row, an API key's and a team's, each answered from what this replica read while
every change of it is heard, else read."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from hutch.server.store._records import ApiKeyRecord, SandboxRecord
from hutch.server.store._row_watch import SandboxRows
from hutch.server.store._teams import TeamRecord

# The names of a key's and a team's rows in memory, as their triggers notify them
# (migration 20); a sandbox's row is named by its id.
KEY_ROW = "key:"
TEAM_ROW = "team:"


class PostgresWatch:
    """The store's memory of rows (`_watch`, None until `watch_sandboxes`)."""

    _watch: SandboxRows | None

    if TYPE_CHECKING:  # provided by the store class this is mixed into

        def get_sandbox(self, sandbox_id: str) -> SandboxRecord | None: ...
        def find_key_by_hash(self, key_hash: str) -> ApiKeyRecord | None: ...
        def get_team(self, name: str) -> TeamRecord | None: ...

    def cached_sandbox(self, sandbox_id: str) -> tuple[bool, SandboxRecord | None]:
        """(True, the row or None) when memory holds it and is current; else (False, None)."""
        if self._watch is None:
            return False, None
        return self._watch.cached(sandbox_id)

    def current_sandbox(self, sandbox_id: str) -> SandboxRecord | None:
        """`get_sandbox`, from memory when it is current (then no round trip)."""
        if self._watch is None:
            return self.get_sandbox(sandbox_id)
        return self._watch.read(sandbox_id)

    def cached_key(self, key_hash: str) -> tuple[bool, ApiKeyRecord | None]:
        """The key's row when memory holds it and is current: (True, row); else (False, None).
        Only found keys are kept: an unknown digest is read each time."""
        if self._watch is None:
            return False, None
        known, row = self._watch.cached_as(KEY_ROW + key_hash)
        return known, cast("ApiKeyRecord | None", row)

    def current_key(self, key_hash: str) -> ApiKeyRecord | None:
        """`find_key_by_hash`, from memory when it is current."""
        if self._watch is None:
            return self.find_key_by_hash(key_hash)
        # NB: digests come from clients: a miss is not kept (random keys must not fill memory).
        return self._watch.read_as(
            KEY_ROW + key_hash, lambda: self.find_key_by_hash(key_hash), keep_none=False
        )

    def cached_team(self, name: str) -> tuple[bool, TeamRecord | None]:
        """The team's row when memory holds it and is current: (True, row or None if there
        is no such team); else (False, None)."""
        if self._watch is None:
            return False, None
        known, row = self._watch.cached_as(TEAM_ROW + name)
        return known, cast("TeamRecord | None", row)

    def current_team(self, name: str) -> TeamRecord | None:
        """`get_team`, from memory when it is current."""
        if self._watch is None:
            return self.get_team(name)
        return self._watch.read_as(TEAM_ROW + name, lambda: self.get_team(name))

    @property
    def rows_watched(self) -> bool:
        """Whether this store keeps rows in memory (`watch_sandboxes` was called): then only
        memory it keeps current may answer for a row, never a cache of the caller's."""
        return self._watch is not None

    def changes_heard_up_to(self, at: float) -> bool:
        """Whether memory has heard every change committed before `at` (time.monotonic();
        tests wait on it)."""
        return self._watch is not None and self._watch.heard_up_to(at)

    def forget_sandbox(self, sandbox_id: str) -> bool:
        """Forget the row kept in memory; whether there was one in use."""
        return self._watch is not None and self._watch.forget(sandbox_id)

    @property
    def rows_live(self) -> bool:
        """Whether rows are answered from memory now (change notifications are heard)."""
        return self._watch is not None and self._watch.live

    def _touched(self, name: str | None) -> None:
        """Forget the row `name` (a sandbox's id, KEY_ROW or TEAM_ROW + …; None: every row).
        NB: our own write is known here before its notification comes back."""
        if self._watch is not None:
            self._watch.changed(name)
