"""A replica answers a sandbox's row from memory only while it hears every change of it
(store/_row_watch.py): two store instances on one real PostgreSQL database, as two replicas."""

from __future__ import annotations

import time

import psycopg
import pytest

from hutch.server._errors import SandboxNotFound, Unauthorized
from hutch.server.services._caller import Caller
from hutch.server.services._keys import KeyChecker, create_key
from hutch.server.services._teams import Teams
from hutch.server.store._postgres import ROWS_APPLICATION
from hutch.server.store._row_watch import SandboxRows
from hutch.server.store._teams import Quota
from tests._server import wait_for
from tests.support.stores import OpenStore, record


def _watching(postgres_url: str) -> tuple[OpenStore, object, object]:
    opener = OpenStore("postgres", url=postgres_url)
    a, b = opener(), opener()
    b.watch_sandboxes()
    wait_for(lambda: b.rows_live, timeout=10)
    return opener, a, b


def _cut_the_channel(postgres_url: str, store: object) -> None:
    """End the listening session (a database restart, a network cut, an operator) and wait
    until `store` knows its memory is not kept current any more."""
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND datname = current_database()",
            (ROWS_APPLICATION,),
        )
    wait_for(lambda: not store.rows_live, timeout=10)  # type: ignore[attr-defined]


def _remembered(store: object, sandbox_id: str) -> None:
    """Read until memory holds the row, once the notifications of what was written before are
    heard (the insert's own one, heard after the read, would make it forget the row)."""
    now = time.monotonic()
    wait_for(lambda: store.changes_heard_up_to(now), timeout=10)  # type: ignore[attr-defined]
    wait_for(
        lambda: (
            store.current_sandbox(sandbox_id) is not None  # type: ignore[attr-defined]
            and store.cached_sandbox(sandbox_id)[0]  # type: ignore[attr-defined]
        ),
        timeout=10,
    )


def _in_memory(store: object, sandbox_id: str) -> None:
    """Memory holds the row (no read here: one forgotten never comes back by waiting). NB:
    waited for, as memory is not used for the moments the listener lags behind (a loaded
    machine: its probe not back within LAG_LIMIT)."""
    wait_for(lambda: store.cached_sandbox(sandbox_id)[0], timeout=10)  # type: ignore[attr-defined]


def test_a_change_through_one_replica_reaches_the_others_memory(postgres_url: str) -> None:
    opener, a, b = _watching(postgres_url)
    try:
        a.insert_sandbox(record("sb-w1"))
        _remembered(b, "sb-w1")  # from memory now: no round trip for the next request on it
        # Its last use alone changes nothing a request reads: memory keeps it.
        a.set_active_at("sb-w1", 123.0)
        a.insert_sandbox(record("sb-w0"))  # another's notification comes after that one
        _remembered(b, "sb-w0")
        _in_memory(b, "sb-w1")
        # Paused through the other replica: memory forgets the row, the next read has it.
        assert a.transition("sb-w1", ("running",), "paused", "idle", None)
        wait_for(lambda: b.current_sandbox("sb-w1").status == "paused", timeout=10)  # type: ignore[attr-defined]
        # Destroyed there: gone here too (memory may know it is gone).
        a.delete_sandbox("sb-w1")
        wait_for(lambda: b.current_sandbox("sb-w1") is None, timeout=10)  # type: ignore[attr-defined]
        # Behind every replica's back (an operator's psql): the trigger tells them too.
        a.insert_sandbox(record("sb-w2"))
        assert b.current_sandbox("sb-w2").status == "running"  # type: ignore[attr-defined]
        opener.rows("UPDATE sandboxes SET status = 'stopped' WHERE id = 'sb-w2'")
        wait_for(lambda: b.current_sandbox("sb-w2").status == "stopped", timeout=10)  # type: ignore[attr-defined]
    finally:
        opener.close_all()


def test_a_replicas_own_write_is_read_back_at_once(postgres_url: str) -> None:
    opener, _, b = _watching(postgres_url)
    try:
        b.insert_sandbox(record("sb-w3"))  # type: ignore[attr-defined]
        assert b.current_sandbox("sb-w3").status == "running"  # type: ignore[attr-defined]
        assert b.transition("sb-w3", ("running",), "stopped", None, None)  # type: ignore[attr-defined]
        # No wait for its own notification: the write itself made memory forget the row.
        assert b.current_sandbox("sb-w3").status == "stopped"  # type: ignore[attr-defined]
    finally:
        opener.close_all()


def test_a_replicas_own_status_change_is_kept_and_anothers_next_write_is_seen(
    postgres_url: str,
) -> None:
    """A create's `running` (a transition through this replica) is answered from memory for
    the first exec, also once its own notification came; another replica's write after it
    is seen on the next read."""
    opener, a, b = _watching(postgres_url)
    try:
        creating = record("sb-w9")
        creating.status = "creating"
        b.insert_sandbox(creating)  # type: ignore[attr-defined]
        # NB: as in a create, the insert's notification comes before the transition: one
        # heard after it, from the same session, would look like the transition's own.
        now = time.monotonic()
        wait_for(lambda: b.changes_heard_up_to(now), timeout=10)  # type: ignore[attr-defined]
        assert b.transition("sb-w9", ("creating",), "running", None, None)  # type: ignore[attr-defined]
        now = time.monotonic()
        wait_for(lambda: b.changes_heard_up_to(now), timeout=10)  # type: ignore[attr-defined]
        known, row = b.cached_sandbox("sb-w9")  # type: ignore[attr-defined]
        assert known and row is not None and row.status == "running"
        # Paused through the other replica: the next read here has it.
        assert a.transition("sb-w9", ("running",), "paused", "idle", None)
        wait_for(lambda: b.current_sandbox("sb-w9").status == "paused", timeout=10)  # type: ignore[attr-defined]
        # A transition that finds another status writes nothing and keeps nothing.
        assert not b.transition("sb-w9", ("creating",), "running", None, None)  # type: ignore[attr-defined]
        assert b.current_sandbox("sb-w9").status == "paused"  # type: ignore[attr-defined]
    finally:
        opener.close_all()


def _rows_listening() -> SandboxRows:
    """Memory as a listening thread leaves it with every probe back (no thread: the test
    hands it the notifications, in the order PostgreSQL would deliver them)."""
    rows = SandboxRows(lambda: None, lambda _: None)  # type: ignore[arg-type,return-value]
    rows._heard_at = time.monotonic() + 60
    return rows


def test_an_own_write_is_kept_past_an_earlier_commits_notification_only() -> None:
    written = record("sb-w10")
    # Another replica's earlier commit heard after the write returned: the row written has it.
    rows = _rows_listening()
    rows.expect("sb-w10", pid=7)
    rows.wrote("sb-w10", written)
    rows._heard("sb-w10", pid=8)
    rows._heard("sb-w10", pid=7)  # its own
    assert rows.cached("sb-w10") == (True, written)
    rows._heard("sb-w10", pid=8)  # a later commit's: forgotten
    assert rows.cached("sb-w10") == (False, None)
    # Its own notification, then a later commit's, both before the write returned: not kept.
    rows = _rows_listening()
    rows.expect("sb-w10", pid=7)
    rows._heard("sb-w10", pid=7)
    rows._heard("sb-w10", pid=8)
    rows.wrote("sb-w10", written)
    assert rows.cached("sb-w10") == (False, None)
    # Another write of this replica's to the row meanwhile: not kept either.
    rows = _rows_listening()
    rows.expect("sb-w10", pid=7)
    rows.changed("sb-w10")
    rows.wrote("sb-w10", written)
    assert rows.cached("sb-w10") == (False, None)


def test_with_the_channel_down_every_read_goes_to_the_database(postgres_url: str) -> None:
    opener, a, b = _watching(postgres_url)
    try:
        a.insert_sandbox(record("sb-w4"))
        _remembered(b, "sb-w4")
        # The listening session dies (a database restart, a network cut, an operator).
        _cut_the_channel(postgres_url, b)
        # Memory is not used: a change nobody heard is read from the database.
        assert not b.cached_sandbox("sb-w4")[0]  # type: ignore[attr-defined]
        opener.rows("ALTER TABLE sandboxes DISABLE TRIGGER sandboxes_changed")
        opener.rows("UPDATE sandboxes SET status = 'paused' WHERE id = 'sb-w4'")
        assert b.current_sandbox("sb-w4").status == "paused"  # type: ignore[attr-defined]
        opener.rows("ALTER TABLE sandboxes ENABLE TRIGGER sandboxes_changed")
        # It listens again on a new session, with nothing remembered from before.
        wait_for(lambda: b.rows_live, timeout=10)  # type: ignore[attr-defined]
        assert b.current_sandbox("sb-w4").status == "paused"  # type: ignore[attr-defined]
        a.transition("sb-w4", ("paused",), "running", None, None)
        wait_for(lambda: b.current_sandbox("sb-w4").status == "running", timeout=10)  # type: ignore[attr-defined]
    finally:
        opener.close_all()


def test_another_teams_sandbox_is_not_found_from_memory_either(postgres_url: str) -> None:
    opener, a, b = _watching(postgres_url)
    try:
        a.insert_sandbox(record("sb-w5", team="red"))
        _remembered(b, "sb-w5")
        teams = Teams(b)  # type: ignore[arg-type]
        path = {"sandbox_id": "sb-w5"}
        # The request's team check is answered from memory, and still refuses another team.
        assert teams.checked_from_memory(Caller("k1", "red", "member"), path)
        with pytest.raises(SandboxNotFound):
            teams.checked_from_memory(Caller("k2", "blue", "member"), path)
        # Gone and taken again by the other team through the other replica: heard here.
        a.delete_sandbox("sb-w5")
        a.insert_sandbox(record("sb-w5", team="blue"))
        _remembered(b, "sb-w5")
        with pytest.raises(SandboxNotFound):
            teams.checked_from_memory(Caller("k1", "red", "member"), path)
        assert teams.checked_from_memory(Caller("k2", "blue", "member"), path)
    finally:
        opener.close_all()


def test_a_key_deleted_or_a_quota_changed_through_one_replica_reaches_the_others_memory(
    postgres_url: str,
) -> None:
    opener, a, b = _watching(postgres_url)
    try:
        teams_a, teams_b = Teams(a), Teams(b)  # type: ignore[arg-type]
        teams_a.create("squad", Quota(rate_per_second=50.0))
        made = create_key(a, "ci", team="squad", role="member")  # type: ignore[arg-type]
        keys_b = KeyChecker(b, None)  # type: ignore[arg-type]
        now = time.monotonic()
        wait_for(lambda: b.changes_heard_up_to(now), timeout=10)  # type: ignore[attr-defined]
        # Read once, then answered from memory: the next requests make no round trip.
        assert keys_b.caller(made.key) == Caller(made.record.id, "squad", "member")
        assert teams_b.quota("squad").rate_per_second == 50.0
        wait_for(lambda: keys_b.cached_caller(made.key) is not None, timeout=10)
        wait_for(lambda: teams_b.cached_quota("squad") is not None, timeout=10)
        # The quota changed through the other replica: this one's next read has it.
        teams_a.set_quota("squad", {"rate_per_second": 2.0})
        wait_for(lambda: teams_b.quota("squad").rate_per_second == 2.0, timeout=10)
        # The key deleted there: refused here (memory forgot it, and keeps no miss).
        assert a.delete_key(made.record.id)  # type: ignore[attr-defined]
        wait_for(lambda: keys_b.identify(made.key) is None, timeout=10)
        assert keys_b.cached_caller(made.key) is None
        with pytest.raises(Unauthorized):
            keys_b.caller(made.key)
        # An unknown key is not kept: memory never answers for it.
        assert keys_b.cached_caller("hk_" + "x" * 43) is None
        assert keys_b.identify("hk_" + "x" * 43) is None
        assert keys_b.cached_caller("hk_" + "x" * 43) is None
    finally:
        opener.close_all()


def test_with_the_channel_down_a_deleted_key_is_refused_at_once(postgres_url: str) -> None:
    opener, a, b = _watching(postgres_url)
    try:
        made = create_key(a, "ci", team="default", role="member")  # type: ignore[arg-type]
        Teams(a).create("quiet")  # type: ignore[arg-type]
        keys_b, teams_b = KeyChecker(b, None), Teams(b)  # type: ignore[arg-type]
        now = time.monotonic()
        wait_for(lambda: b.changes_heard_up_to(now), timeout=10)  # type: ignore[attr-defined]
        assert keys_b.caller(made.key).key_id == made.record.id
        assert teams_b.quota("quiet").rate_per_second is None
        wait_for(lambda: keys_b.cached_caller(made.key) is not None, timeout=10)
        _cut_the_channel(postgres_url, b)
        # Changes nobody hears (no trigger): each request reads them, none waits for a cache.
        opener.rows("ALTER TABLE api_keys DISABLE TRIGGER api_keys_changed")
        opener.rows("ALTER TABLE teams DISABLE TRIGGER teams_changed")
        opener.rows("UPDATE teams SET rate_per_second = 3 WHERE name = 'quiet'")
        assert teams_b.cached_quota("quiet") is None
        assert teams_b.quota("quiet").rate_per_second == 3.0
        opener.rows(f"DELETE FROM api_keys WHERE id = '{made.record.id}'")
        assert keys_b.cached_caller(made.key) is None
        with pytest.raises(Unauthorized):
            keys_b.caller(made.key)
        opener.rows("ALTER TABLE api_keys ENABLE TRIGGER api_keys_changed")
        opener.rows("ALTER TABLE teams ENABLE TRIGGER teams_changed")
    finally:
        opener.close_all()
