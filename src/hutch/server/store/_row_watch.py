"""`SandboxRows`: rows a replica may answer from memory, kept current by PostgreSQL.

Every request on a sandbox reads its row (is it running? whose is it?), and every request
with a team's key reads the key's row and its team's quota; on PostgreSQL each is a round
trip. Another replica may pause, stop, destroy or move the sandbox, revoke the key or change
the quota at any moment, so a row is served from memory only while this process hears of
every change:

- a trigger on `sandboxes` (migration 19) sends `NOTIFY hutch_sandboxes, '<id>'` for every
  insert, delete and update but one that only sets `active_at` (a sandbox's last use, written
  as it is used); triggers on `api_keys` and `teams` (migration 20) send `key:<its digest>`
  and `team:<its name>` on the same channel (no sandbox id holds a `:`). PostgreSQL sends it
  when the writer's transaction commits, whoever wrote it (a replica, its reconciler, a node
  watch, psql), and signals the listeners before the writer's COMMIT returns;
- one thread per process holds a connection of its own that LISTENs, and drops a row from
  memory as its notification arrives (not on the event loop: a busy loop does not delay it);
- every PROBE_EVERY seconds the thread notifies the channel itself (`~<its token>:<n>`: no
  sandbox id starts with `~`). PostgreSQL delivers a listener's notifications in commit
  order, so hearing its own probe back proves every change committed before the probe was
  sent has been heard. When the last probe heard back was sent more than LAG_LIMIT ago (the
  connection died, or the listener lags behind), memory is not used; each read goes to the
  database as without this, until a probe comes back. A new connection starts with nothing
  remembered.

A row is remembered only from a read that no notification of it overtook (`_changes` counts
notifications; `_changed_at` holds the count at each id's last one): a change committed after
the read started may have reached the thread before the row was stored, and the row would
then be stale. This process's own writes
drop the row at once (`changed`), before their own notification comes back.

A status change this process makes (`transition`: a create's `running`, a pause) keeps the row
its UPDATE returned instead (`expect`, then `wrote`), so the next request on the sandbox (a
create's first exec) reads nothing. That row is the one as of the write's commit: the UPDATE
waited for every earlier writer of the row and saw its change. Notifications arrive in commit
order, so one heard between `expect` and the write's own (from the same backend, the pid a
notification carries) is of an earlier commit, which the row already has; the write's own is
not a reason to forget it; every later one is, as ever.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import psycopg

from hutch.server.store._records import SandboxRecord

log = logging.getLogger("hutch.server.store")

T = TypeVar("T")

CHANNEL = "hutch_sandboxes"
PROBE_EVERY = 0.5  # seconds
# Heard nothing (not even its own probe) for this long: the channel is down or behind.
LAG_LIMIT = 2.0
RECONNECT_AFTER = 1.0
# Rows kept: a bound on memory (a replica serves many more sandboxes than it needs at once).
KEPT = 20_000


@dataclass
class _Expected:
    """A write of this process's whose row is to be kept (`SandboxRows.expect`)."""

    pid: int  # the backend that writes it: its notification carries this pid
    since: int  # `_changes` when expected: a forget-all after it means notifications lost
    heard: bool = False  # its own notification came
    row: object = None  # the row written, kept until its own notification is heard
    wrote_at: float = 0.0  # when the write returned (monotonic); 0: not yet


class SandboxRows:
    """The rows this replica read, while `live` (see the module's docstring): a sandbox's by
    its id, others by the name their trigger notifies (`key:<digest>`, `team:<name>`)."""

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        read: Callable[[str], SandboxRecord | None],
    ) -> None:
        self._connect = connect
        self._read = read
        self._lock = threading.Lock()
        self._rows: dict[str, object] = {}
        self._changes = 0
        self._changed_at: dict[str, int] = {}
        # Rows read before this count are never stored (all were forgotten then).
        self._forgot_all_at = 0
        # This process's writes whose rows are kept (`expect`), by name.
        self._expected: dict[str, _Expected] = {}
        # When the last probe heard back was sent (monotonic); 0: not listening.
        self._heard_at = 0.0
        self._token = f"~{secrets.token_hex(8)}:"
        self._probes: dict[str, float] = {}  # payload -> when sent, of probes in flight
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.hits = 0  # reads answered from memory (tests, benches)

    @property
    def live(self) -> bool:
        """Whether every change committed up to LAG_LIMIT ago has been heard."""
        heard = self._heard_at
        return heard > 0 and time.monotonic() - heard < LAG_LIMIT

    def heard_up_to(self, at: float) -> bool:
        """Whether every change committed before `at` (time.monotonic()) has been heard."""
        return self._heard_at > at

    def start(self) -> None:
        self._thread = threading.Thread(target=self._listen, name="hutch-rows", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- reads -------------------------------------------------------------------------------

    def cached(self, sandbox_id: str) -> tuple[bool, SandboxRecord | None]:
        """(True, row or None if there is none) when memory knows it and is current, else
        (False, None): read it (`read`)."""
        known, row = self.cached_as(sandbox_id)
        return known, cast("SandboxRecord | None", row)

    def cached_as(self, name: str) -> tuple[bool, object]:
        """`cached` of any row by the name its notification carries."""
        if not self.live:
            return False, None
        with self._lock:
            if name in self._rows:
                self.hits += 1
                return True, self._rows[name]
        return False, None

    def read(self, sandbox_id: str) -> SandboxRecord | None:
        """The row, from memory or the database (then kept, if nothing changed meanwhile)."""
        return self.read_as(sandbox_id, lambda: self._read(sandbox_id))

    def read_as(self, name: str, load: Callable[[], T], *, keep_none: bool = True) -> T:
        """`read` of any row by the name its notification carries, `load()` reading it.
        `keep_none`: False for rows named by what a client sends (a key's digest), so that
        unknown names never fill memory and push out what it holds."""
        known, row = self.cached_as(name)
        if known:
            return cast("T", row)
        with self._lock:
            changes = self._changes
        loaded = load()
        # NB: live again checked after the read: a channel that went silent during it may
        # have missed the change that made this row stale.
        if self.live and (keep_none or loaded is not None):
            with self._lock:
                if self._forgot_all_at <= changes and self._changed_at.get(name, 0) <= changes:
                    if len(self._rows) >= KEPT:
                        self._rows.clear()
                    self._rows[name] = loaded
        return loaded

    def forget(self, sandbox_id: str) -> bool:
        """Forget the row; whether memory held it (and was in use: a request may have been
        answered from it)."""
        with self._lock:
            held = sandbox_id in self._rows
        self.changed(sandbox_id)
        return held and self.live

    def changed(self, sandbox_id: str | None = None) -> None:
        """Forget `sandbox_id`'s row (every row: None): it changed, or may have. A write of
        this process's other than the expected one: its row is not kept either."""
        with self._lock:
            if sandbox_id is None:
                self._expected.clear()
            else:
                self._expected.pop(sandbox_id, None)
            self._forget_locked(sandbox_id)

    def _forget_locked(self, sandbox_id: str | None) -> None:
        self._changes += 1
        if sandbox_id is None or len(self._changed_at) >= KEPT:
            self._rows.clear()
            self._changed_at.clear()
            self._forgot_all_at = self._changes
        else:
            self._rows.pop(sandbox_id, None)
            self._changed_at[sandbox_id] = self._changes

    # -- this process's own writes, kept ---------------------------------------------------------

    def expect(self, sandbox_id: str, pid: int) -> None:
        """The backend `pid` is about to write the row, and `wrote` will follow with what it
        wrote: keep that, not forget it when its own notification comes. NB: only for a
        write that changes the row (else no notification comes: see `_heard`'s probe)."""
        with self._lock:
            if len(self._expected) >= KEPT:
                self._expected.clear()
            self._expected[sandbox_id] = _Expected(pid, self._changes)

    def wrote(self, sandbox_id: str, row: SandboxRecord | None) -> None:
        """The expected write returned (committed): `row` as written, None if it wrote none
        (or failed). The row is forgotten at once, as for every own write (`changed`), and the
        one written kept while every change of it is heard."""
        with self._lock:
            expected = self._expected.get(sandbox_id)
            self._forget_locked(sandbox_id)
            if expected is None:
                return  # another write of this process's came between: nothing is kept
            if row is None or not self.live or self._forgot_all_at > expected.since:
                del self._expected[sandbox_id]
                return
            self._rows[sandbox_id] = row
            if expected.heard:
                del self._expected[sandbox_id]
            else:
                expected.row, expected.wrote_at = row, time.monotonic()

    # -- the listening thread ------------------------------------------------------------------

    def _listen(self) -> None:
        while not self._stopping.is_set():
            try:
                self._serve_one_connection()
            except (psycopg.Error, OSError) as exc:
                if not self._stopping.is_set():
                    log.warning("sandbox change notifications lost (%s); reading rows", exc)
            finally:
                self._silence()
            self._stopping.wait(RECONNECT_AFTER)

    def _serve_one_connection(self) -> None:
        with self._connect() as conn:
            listening_since = time.monotonic()
            conn.execute(f"LISTEN {CHANNEL}")
            # What was kept may have changed while nobody listened.
            self.changed(None)
            self._heard_at = listening_since
            self._probes.clear()
            log.info("listening for sandbox changes: rows are read once per change")
            sent = 0
            while not self._stopping.is_set():
                sent += 1
                probe = f"{self._token}{sent}"
                self._probes[probe] = time.monotonic()
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, probe))
                for note in conn.notifies(timeout=PROBE_EVERY):
                    self._heard(note.payload, note.pid)
                    if self._stopping.is_set():
                        break

    def _heard(self, payload: str, pid: int = 0) -> None:
        if not payload.startswith("~"):
            with self._lock:
                expected = self._expected.get(payload)
                if expected is None:
                    self._forget_locked(payload)
                elif expected.pid == pid and not expected.heard:
                    if expected.row is None:
                        expected.heard = True  # before `wrote`: it keeps the row then
                        self._forget_locked(payload)
                    else:
                        del self._expected[payload]  # its own: what `wrote` kept stays
                elif expected.heard:
                    # A change committed after the expected write: nothing is kept.
                    del self._expected[payload]
                    self._forget_locked(payload)
                else:
                    # NB: before the expected write's own: an earlier commit's, which the
                    # row written has (a row read meanwhile may not: forgotten).
                    self._forget_locked(payload)
                    if expected.row is not None:
                        self._rows[payload] = expected.row
            return
        sent_at = self._probes.pop(payload, None)
        if sent_at is not None:
            # NB: the send time, not now: all that committed before it has been heard.
            self._heard_at = max(self._heard_at, sent_at)
            # Probes lost with a connection stay behind: drop any older than this one.
            for old in [p for p, at in self._probes.items() if at < sent_at]:
                del self._probes[old]
            with self._lock:
                # A write that returned before this probe was sent and whose notification
                # has not come sent none (it changed nothing): a later one is not its own.
                for name in [n for n, e in self._expected.items() if 0 < e.wrote_at < sent_at]:
                    del self._expected[name]

    def _silence(self) -> None:
        self._heard_at = 0.0
        self.changed(None)
