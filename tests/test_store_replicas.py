"""What several API replicas sharing one database need from the store, with real concurrency:
store instances in threads and replica processes on one SQLite file or PostgreSQL database.

- status changes race safely (conditional updates: one of many concurrent steps wins);
- warm-pool claims never hand out one sandbox twice (FOR UPDATE SKIP LOCKED);
- one reconciler at a time (an advisory lock), taken over when its holder dies.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from hutch.server.services._reconciler import RECONCILER_LOCK, Reconciler
from hutch.server.store._records import PoolEntryRecord, SandboxRecord, Store
from tests.support.postgres import PostgresServer
from tests.support.stores import OpenStore, record


def test_racing_status_changes_have_one_winner(open_store: OpenStore) -> None:
    # One store instance per thread, as one per replica process (a SQLite store, like the
    # server, is used from one thread).
    replicas = [open_store() for _ in range(16)]
    replicas[0].insert_sandbox(record("sb-race"))
    barrier = threading.Barrier(16)

    def pause(i: int) -> bool:
        barrier.wait()
        return replicas[i].transition("sb-race", ("running",), "paused", f"by {i}", None)

    with ThreadPoolExecutor(16) as pool:
        won = [i for i, ok in enumerate(pool.map(pause, range(16))) if ok]
    assert len(won) == 1
    got = replicas[1].get_sandbox("sb-race")
    assert got is not None and (got.status, got.status_reason) == ("paused", f"by {won[0]}")
    # A step from a state that is no longer true does nothing; one on a gone sandbox neither.
    assert not replicas[0].transition("sb-race", ("running",), "stopped", None, None)
    assert not replicas[0].transition("sb-nope", ("running",), "stopped", None, None)
    assert replicas[0].transition("sb-race", ("paused", "stopped"), "running", None, 3.0)


def test_concurrent_pool_claims_never_hand_out_one_sandbox_twice(open_store: OpenStore) -> None:
    claimers = 12
    replicas = [open_store() for _ in range(claimers)]
    entries = 60
    for i in range(entries):
        replicas[i % 2].add_pool_entry(
            PoolEntryRecord(f"pool-{i:03}", "node-a", "img-1", f"2026-01-01T00:00:{i:02}")
        )
    # Another image's and another node's sandboxes are never handed out for this one.
    replicas[0].add_pool_entry(PoolEntryRecord("pool-other", "node-a", "img-2", "t"))
    replicas[0].add_pool_entry(PoolEntryRecord("pool-far", "node-b", "img-1", "t"))
    barrier = threading.Barrier(claimers)

    def claim_until_empty(i: int) -> list[str]:
        barrier.wait()
        got = []
        n = 0
        while (rid := replicas[i].claim_pool_entry("node-a", "img-1", f"sb-{i}-{n}")) is not None:
            got.append(rid)
            n += 1
        return got

    with ThreadPoolExecutor(claimers) as pool:
        results = list(pool.map(claim_until_empty, range(claimers)))
    handed_out = [rid for got in results for rid in got]
    assert Counter(handed_out).most_common(1)[0][1] == 1, "a sandbox was handed out twice"
    assert sorted(handed_out) == [f"pool-{i:03}" for i in range(entries)]
    # Every claim is recorded with its one claimer, and the others stay ready.
    claimed = {e.runtime_id: e.claimed_by for e in replicas[1].list_pool_entries("node-a")}
    assert all(claimed[rid] is not None for rid in handed_out)
    assert claimed["pool-other"] is None
    assert replicas[1].claim_pool_entry("node-b", "img-1", "sb-x") == "pool-far"
    replicas[0].delete_pool_entry("pool-other")
    assert "pool-other" not in {e.runtime_id for e in replicas[0].list_pool_entries("node-a")}


def test_the_newest_ready_pool_sandbox_is_claimed_first(open_store: OpenStore) -> None:
    store = open_store()
    for i, created in enumerate(
        ("2026-01-01T00:00:01", "2026-01-01T00:00:03", "2026-01-01T00:00:02")
    ):
        store.add_pool_entry(PoolEntryRecord(f"pool-{i}", "n", "img", created))
    assert [store.claim_pool_entry("n", "img", f"sb-{i}") for i in range(4)] == [
        "pool-1",
        "pool-2",
        "pool-0",
        None,
    ]


def test_one_replica_holds_the_reconciler_lock(open_store: OpenStore) -> None:
    a, b = open_store(), open_store()
    assert a.hold_lock(RECONCILER_LOCK)
    assert a.hold_lock(RECONCILER_LOCK)  # held, not taken twice
    if open_store.kind == "sqlite":
        assert b.hold_lock(RECONCILER_LOCK)  # one host, one server: always its own
        return
    assert not b.hold_lock(RECONCILER_LOCK)
    assert b.hold_lock("another lock")  # locks by name
    a.release_lock(RECONCILER_LOCK)
    assert b.hold_lock(RECONCILER_LOCK)
    assert not a.hold_lock(RECONCILER_LOCK)
    b.close()  # closing a store lets go of its locks
    assert a.hold_lock(RECONCILER_LOCK)


_REPLICA = """
import sys, time
from hutch.server.store._open import open_store
from pathlib import Path
store = open_store(Path("/nonexistent"), sys.argv[1])
print("up", flush=True)
while True:
    if store.hold_lock("hutch:reconciler"):
        print("leader", flush=True)
    time.sleep(0.2)
"""


def _replica(url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _REPLICA, url], stdout=subprocess.PIPE, text=True
    )


def _next_line(proc: subprocess.Popen[str], timeout: float) -> str | None:
    """The replica's next line, or None if it printed none within `timeout` seconds."""
    assert proc.stdout is not None
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    return box[0].strip() if box else None


def test_the_reconciler_lock_fails_over_when_its_replica_is_killed(postgres_url: str) -> None:
    first = _replica(postgres_url)
    second = None
    try:
        assert _next_line(first, 30) == "up"
        assert _next_line(first, 10) == "leader"
        second = _replica(postgres_url)
        assert _next_line(second, 30) == "up"
        assert _next_line(second, 1.5) is None, "two replicas lead at once"
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed = time.monotonic()
        # PostgreSQL ends the dead replica's session and its lock with it; the other replica
        # takes over at its next try.
        assert _next_line(second, 5) == "leader", "no replica took over within 5 s"
        print(f"failover after {time.monotonic() - killed:.2f} s")
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc is not None and proc.stdout is not None:
                proc.stdout.close()


class _RecordingLifecycle:
    """An in-process stand-in for Lifecycle: records which sandboxes a pass acted on."""

    def __init__(self) -> None:
        self.expired: list[str] = []
        self.kept_awake = 0

    async def expire(self, record: SandboxRecord) -> None:
        self.expired.append(record.id)

    def keep_streams_awake(self) -> None:
        self.kept_awake += 1

    async def sleep_if_idle(self, record: SandboxRecord, now: float) -> bool:
        return False


def test_only_the_lock_holder_reconciles(postgres_url: str) -> None:
    stores: list[Store] = [OpenStore("postgres", url=postgres_url)() for _ in range(2)]
    stores[0].insert_sandbox(record("sb-old", expires_at=time.time() - 10))
    lifecycles = [_RecordingLifecycle(), _RecordingLifecycle()]
    passes: list[Any] = [Reconciler(lc, st) for lc, st in zip(lifecycles, stores, strict=True)]  # type: ignore[arg-type]
    try:
        asyncio.run(passes[0].tick())
        asyncio.run(passes[1].tick())
        assert lifecycles[0].expired == ["sb-old"] and lifecycles[1].expired == []
        asyncio.run(passes[0].stop())  # a clean shutdown hands the lock on
        asyncio.run(passes[1].tick())
        assert lifecycles[1].expired == ["sb-old"]
    finally:
        for st in stores:
            st.close()


class _AskedHost:
    """A SandboxHost as the death watch uses it: records which sandboxes it was asked about."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.was_asked = asyncio.Event()

    async def dead(self, sandbox_ids: Any) -> dict[str, str]:
        self.asked += list(sandbox_ids)
        self.was_asked.set()
        return {}

    async def oom_kills(self, sandbox_ids: Any) -> list[Any]:
        return []

    def close_watch(self) -> None:
        pass


def test_only_one_replica_watches_for_deaths_and_another_takes_over(postgres_url: str) -> None:
    """Each replica watching read every row and asked every node twice a second, and an OOM
    kill (reported once by its node) went to whichever asked first."""
    from hutch.server.services._deaths import DeathWatch

    stores: list[Store] = [OpenStore("postgres", url=postgres_url)() for _ in range(2)]
    stores[0].insert_sandbox(record("sb-watched"))
    hosts = [_AskedHost(), _AskedHost()]

    async def run() -> None:
        watches = [DeathWatch(None, st, h) for st, h in zip(stores, hosts, strict=True)]  # type: ignore[arg-type]
        for w in watches:
            w.start()
        try:
            await asyncio.wait(
                [asyncio.ensure_future(h.was_asked.wait()) for h in hosts],
                return_when=asyncio.FIRST_COMPLETED,
            )
            await asyncio.sleep(1.5)  # three rounds of both watches
            watching = 0 if hosts[0].asked else 1
            assert hosts[1 - watching].asked == []
            assert set(hosts[watching].asked) == {"sb-watched"}
            await watches[watching].stop()  # a clean shutdown hands the lock on
            await hosts[1 - watching].was_asked.wait()
        finally:
            for w in watches:
                await w.stop()

    try:
        asyncio.run(asyncio.wait_for(run(), 30))
    finally:
        for st in stores:
            st.close()


def test_on_sqlite_the_server_always_reconciles(tmp_path: Path) -> None:
    store = OpenStore("sqlite", path=tmp_path / "s.db")()
    store.insert_sandbox(record("sb-old", expires_at=time.time() - 10))
    lifecycle = _RecordingLifecycle()
    asyncio.run(Reconciler(lifecycle, store).tick())  # type: ignore[arg-type]
    assert lifecycle.expired == ["sb-old"]
    store.close()


def test_the_reconcilers_read_of_every_sandbox_leaves_the_event_loop_free(
    tmp_path: Path,
) -> None:
    """A database that takes its time with every row (many sandboxes, a far PostgreSQL) must
    not stop the requests the same process serves meanwhile."""
    store = OpenStore("sqlite", path=tmp_path / "s.db")()
    store.insert_sandbox(record("sb-old", expires_at=time.time() - 10))
    slow_read = store.list_sandboxes

    def list_slowly() -> list[SandboxRecord]:
        time.sleep(0.5)
        return slow_read()

    store.list_sandboxes = list_slowly  # type: ignore[method-assign]
    lifecycle = _RecordingLifecycle()

    async def run() -> int:
        ticks = 0

        async def other_requests() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        other = asyncio.create_task(other_requests())
        await Reconciler(lifecycle, store).tick()  # type: ignore[arg-type]
        other.cancel()
        return ticks

    try:
        ticks = asyncio.run(run())
    finally:
        store.close()
    assert lifecycle.expired == ["sb-old"]
    # Half a second of reading: ~50 turns of the loop if it was free, 0 or 1 if not.
    assert ticks >= 10


def test_use_through_one_replica_keeps_a_sandbox_awake_for_the_other(
    open_store: OpenStore,
) -> None:
    from hutch.server.services._activity import Activity

    a, b = open_store(), open_store()
    a.insert_sandbox(record("sb-used"))
    leader, other = Activity(a), Activity(b)
    later = time.monotonic() + 600  # ten minutes on, as the leader's clock sees it
    stored = a.get_sandbox("sb-used")
    assert stored is not None
    leader.idle_for(stored, time.monotonic())  # first seen now
    assert leader.idle_for(stored, later) > 590
    other.touch("sb-used")  # a request through the other replica
    # Written off the request's path (the store's thread): it lands a moment later.
    deadline = time.monotonic() + 10
    fresh = a.get_sandbox("sb-used")
    while fresh is not None and fresh.active_at is None and time.monotonic() < deadline:
        time.sleep(0.01)
        fresh = a.get_sandbox("sb-used")
    assert fresh is not None and fresh.active_at is not None
    assert leader.idle_for(fresh, later) < 5
    # An older time from a slower replica never moves it back.
    b.set_active_at("sb-used", fresh.active_at - 100)
    again = a.get_sandbox("sb-used")
    assert again is not None and again.active_at == fresh.active_at


def test_a_stream_open_through_a_replica_that_does_not_reconcile_keeps_its_sandbox_awake(
    postgres_url: str,
) -> None:
    """A long command streamed through replica B while replica A holds the reconciler's lock:
    A decides who sleeps and knows only its own streams. B's passes (which reconcile
    nothing) mark the sandbox in use, so A never finds it idle while the stream runs."""
    from types import SimpleNamespace

    from hutch.server.services._activity import Activity
    from hutch.server.services._lifecycle import Lifecycle

    a, b = (OpenStore("postgres", url=postgres_url)() for _ in range(2))
    a.insert_sandbox(record("sb-streaming"))
    a.insert_sandbox(record("sb-quiet"))
    leader = Activity(a)

    class _Replica(_RecordingLifecycle):
        """B: real `Lifecycle.keep_streams_awake` over its own Activity and open streams."""

        def __init__(self) -> None:
            super().__init__()
            self.activity = Activity(b)
            self._manager = SimpleNamespace(streaming_sandboxes=lambda: ["sb-streaming"])

        def keep_streams_awake(self) -> None:
            Lifecycle.keep_streams_awake(self)  # type: ignore[arg-type]

    passes = [Reconciler(_RecordingLifecycle(), a), Reconciler(_Replica(), b)]  # type: ignore[arg-type]
    try:
        asyncio.run(passes[0].tick())  # A takes the lock
        later = time.monotonic() + 600  # ten minutes on, as A's clock sees it
        for sid in ("sb-streaming", "sb-quiet"):
            stored = a.get_sandbox(sid)
            assert stored is not None
            leader.idle_for(stored, time.monotonic())  # first seen now
        asyncio.run(passes[1].tick())  # B does not reconcile, but marks its stream's sandbox
        deadline = time.monotonic() + 10
        fresh = a.get_sandbox("sb-streaming")
        while fresh is not None and fresh.active_at is None and time.monotonic() < deadline:
            time.sleep(0.01)
            fresh = a.get_sandbox("sb-streaming")
        assert fresh is not None and leader.idle_for(fresh, later) < 5
        quiet = a.get_sandbox("sb-quiet")
        assert quiet is not None and leader.idle_for(quiet, later) > 590
    finally:
        for p in passes:
            asyncio.run(p.stop())
        a.close()
        b.close()


def test_a_stuck_database_fails_a_call_instead_of_hanging_the_server(postgres_url: str) -> None:
    import psycopg

    from hutch.server.store._postgres import PostgresStore

    store = PostgresStore(postgres_url, statement_timeout_ms=300)
    try:
        store.insert_sandbox(record("sb-stuck"))
        # Another session holds the row (a long transaction elsewhere, a stuck replica).
        with psycopg.connect(postgres_url) as other:
            other.execute("SELECT * FROM sandboxes WHERE id = 'sb-stuck' FOR UPDATE")
            started = time.monotonic()
            with pytest.raises(psycopg.errors.QueryCanceled):
                store.set_sandbox_status("sb-stuck", "paused")
            print(f"gave up after {time.monotonic() - started:.2f} s")
        # Reads never wait for row locks, and the store works on once the other lets go.
        store.set_sandbox_status("sb-stuck", "paused")
        got = store.get_sandbox("sb-stuck")
        assert got is not None and got.status == "paused"
    finally:
        store.close()


def test_the_store_reconnects_after_a_database_restart(postgres_server: PostgresServer) -> None:
    url = postgres_server.new_database()
    store = OpenStore("postgres", url=url)()
    try:
        store.insert_sandbox(record("sb-before"))
        postgres_server.restart()
        # The pooled connections died with the server: the first call retries on a new one.
        assert store.get_sandbox("sb-before") is not None
        assert store.insert_sandbox(record("sb-after"))
    finally:
        store.close()


def test_a_sqlite_stores_sandbox_from_memory_follows_every_write_to_the_file(
    tmp_path: Path,
) -> None:
    """`current_sandbox` answers from memory on SQLite while nothing was written: a write by
    another store on the file (another replica process), by a plain connection, by itself,
    or a delete, is seen by the very next read."""
    from hutch.server.store._sqlite import SqliteStore

    path = tmp_path / "hutch.db"
    mine, other = SqliteStore(path), SqliteStore(path)
    plain = sqlite3.connect(path, isolation_level=None)
    try:
        mine.insert_sandbox(record("sb-kept"))
        assert mine.current_sandbox("sb-kept").status == "running"  # type: ignore[union-attr]
        other.set_sandbox_status("sb-kept", "paused")
        assert mine.current_sandbox("sb-kept").status == "paused"  # type: ignore[union-attr]
        mine.set_sandbox_status("sb-kept", "stopped")
        assert mine.current_sandbox("sb-kept").status == "stopped"  # type: ignore[union-attr]
        plain.execute("UPDATE sandboxes SET status = 'error' WHERE id = 'sb-kept'")
        assert mine.current_sandbox("sb-kept").status == "error"  # type: ignore[union-attr]
        # A transaction of its own that rolls back leaves the row as it was.
        with pytest.raises(RuntimeError), mine._tx() as db:
            db.execute("UPDATE sandboxes SET status = 'running' WHERE id = 'sb-kept'")
            raise RuntimeError("rolled back")
        assert mine.current_sandbox("sb-kept").status == "error"  # type: ignore[union-attr]
        assert mine.current_sandbox("sb-missing") is None
        other.insert_sandbox(record("sb-missing"))
        assert mine.current_sandbox("sb-missing") is not None  # a miss is not kept
        other.delete_sandbox("sb-kept")
        assert mine.current_sandbox("sb-kept") is None
    finally:
        plain.close()
        mine.close()
        other.close()
