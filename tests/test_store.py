"""The stores, SQLite and PostgreSQL, through the one `Store` contract: migrations, records,
crash safety, keys. What replicas sharing a database need is in test_store_replicas.py."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hutch.server.services._keys import KeyChecker, create_key, hash_key
from hutch.server.store import _events
from hutch.server.store._migrations import MIGRATIONS, migration_sql, statements
from hutch.server.store._nodes import NodeRecord
from hutch.server.store._open import open_event_log
from hutch.server.store._records import PoolEntryRecord
from hutch.server.store._sqlite import SqliteStore
from tests.support.stores import OpenStore, record


def test_migrations_run_once_and_are_versioned(open_store: OpenStore) -> None:
    store = open_store()
    assert store.schema_version == len(MIGRATIONS)  # type: ignore[attr-defined]
    store.close()
    again = open_store()  # a second open must not re-run anything
    assert again.schema_version == len(MIGRATIONS)  # type: ignore[attr-defined]
    assert open_store.count("schema_version") == len(MIGRATIONS)


def test_sandbox_round_trip_and_duplicate_ids(open_store: OpenStore) -> None:
    store = open_store()
    rec = record("sb-1", env={"A": "1"}, labels={"team": "x"}, memory_mb=256, timeout=5.0)
    assert store.insert_sandbox(rec)
    assert not store.insert_sandbox(record("sb-1"))
    got = store.get_sandbox("sb-1")
    assert got == rec
    store.set_sandbox_status("sb-1", "failed")
    assert store.get_sandbox("sb-1").status == "failed"  # type: ignore[union-attr]
    store.delete_sandbox("sb-1")
    assert store.get_sandbox("sb-1") is None and store.list_sandboxes() == []


def test_state_survives_a_kill_9_mid_write(tmp_path: Path) -> None:
    # A real writer process, killed with SIGKILL while it keeps inserting: nothing it reported
    # as stored may be lost, and the next opener finds a sound database.
    child = subprocess.Popen(
        [sys.executable, "-c", _INSERT_FOREVER, str(tmp_path / "s.db")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    stored = [child.stdout.readline().strip() for _ in range(50)]
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL

    reopened = SqliteStore(tmp_path / "s.db")
    ids = {r.id for r in reopened.list_sandboxes()}
    assert set(stored) <= ids, set(stored) - ids
    assert sqlite3.connect(tmp_path / "s.db").execute("PRAGMA integrity_check").fetchone() == (
        "ok",
    )
    assert reopened.insert_sandbox(record("sb-after"))  # and it takes writes again


_INSERT_FOREVER = """
import sys
from pathlib import Path

import pytest
from hutch.server.store._sqlite import SandboxRecord, SqliteStore
store = SqliteStore(Path(sys.argv[1]))
i = 0
while True:
    i += 1
    rec = SandboxRecord(id=f"sb-{i}", status="running", image="default", image_id="abc",
                        created_at="t")
    assert store.insert_sandbox(rec)
    print(rec.id, flush=True)  # only once it is committed
"""


def test_keys_are_stored_hashed_and_checked(open_store: OpenStore) -> None:
    store = open_store()
    new = create_key(store, "ci")
    assert new.key.encode() not in open_store.dump()
    assert store.find_key_by_hash(hash_key(new.key)) is not None
    checker = KeyChecker(store, static_key="hk_static")
    assert checker.is_valid(new.key) and checker.is_valid("hk_static")
    assert not checker.is_valid("hk_wrong") and not checker.is_valid(None)
    assert store.delete_key(new.record.id) and not checker.is_valid(new.key)


def test_runtime_id_and_secrets_commit_with_the_row(open_store: OpenStore) -> None:
    store = open_store()
    assert store.insert_sandbox(record("sb-3", runtime_id="pool-abc"), {"K": b"sealed"})
    # No close(): as after kill -9.
    reopened = open_store()
    got = reopened.get_sandbox("sb-3")
    assert got is not None and got.runtime_id == "pool-abc"
    assert reopened.get_secrets("sb-3") == {"K": b"sealed"}
    # A failed insert stores neither (the id is taken).
    assert not reopened.insert_sandbox(record("sb-3"), {"L": b"x"})
    assert reopened.get_secrets("sb-3") == {"K": b"sealed"}


def test_a_v3_database_gains_the_runtime_id_column(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "s.db")
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for version, migration in enumerate(MIGRATIONS[:3], start=1):
        db.executescript(migration_sql(migration, "sqlite"))
        db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
    db.execute(
        "INSERT INTO sandboxes VALUES ('sb-old', 'running', 'default', 'abc', 't', NULL, '{}')"
    )
    db.commit()
    db.close()
    store = SqliteStore(tmp_path / "s.db")
    assert store.schema_version == len(MIGRATIONS)
    old = store.get_sandbox("sb-old")
    assert old is not None and old.runtime_id is None


def test_the_old_runtime_ids_file_moves_into_the_store(
    open_store: OpenStore, tmp_path: Path
) -> None:
    from hutch.server.store._runtime_ids_file import import_runtime_ids_file

    store = open_store()
    store.insert_sandbox(record("sb-4"))
    path = tmp_path / "runtime-ids.json"
    path.write_text('{"sb-4": "pool-123", "sb-gone": "pool-456"}')
    import_runtime_ids_file(path, store)
    assert store.get_sandbox("sb-4").runtime_id == "pool-123"  # type: ignore[union-attr]
    assert not path.exists()


def _build_at_version(open_store: OpenStore, version: int) -> None:
    """A database as a Hutch of schema `version` left it, with a sandbox, a secret, a port."""
    dialect = "postgres" if open_store.kind == "postgres" else "sqlite"
    script = ["CREATE TABLE schema_version (version INTEGER NOT NULL)"]
    for number, migration in enumerate(MIGRATIONS[:version], start=1):
        script += statements(migration, dialect)
        script.append(f"INSERT INTO schema_version (version) VALUES ({number})")
    script += [
        "INSERT INTO sandboxes (id, status, image, image_id, created_at, expires_at, spec,"
        " runtime_id) VALUES ('sb-old', 'paused', 'default', 'abc', 't', 12.5,"
        ' \'{"labels": {"team": "x"}, "status_reason": "idle"}\', \'pool-1\')',
        "INSERT INTO sandbox_secrets VALUES ('sb-old', 'K', "
        + ("'\\x7365616c6564'" if dialect == "postgres" else "X'7365616c6564'")
        + ")",
        "INSERT INTO exposed_ports VALUES ('sb-old', 8080, NULL, 'tok', 't')",
        "INSERT INTO sandbox_nodes (sandbox_id, node) VALUES ('sb-old', 'node-a')",
        "INSERT INTO snapshot_nodes (snapshot_id, node) VALUES ('fork-old', 'node-a')",
        "INSERT INTO nodes (name, address, cpu, memory_mb, disk_mb, last_heartbeat)"
        " VALUES ('node-a', 'http://a:7171', 2, 2048, 4096, 1)",
    ]
    if open_store.url is not None:
        import psycopg

        with psycopg.connect(open_store.url) as conn, conn.transaction():
            for statement in script:
                conn.execute(statement)  # type: ignore[arg-type]
    else:
        assert open_store.path is not None
        db = sqlite3.connect(open_store.path)
        db.executescript(";\n".join(script) + ";")
        db.commit()
        db.close()


def test_the_previous_schema_migrates_with_its_data_kept(open_store: OpenStore) -> None:
    previous = len(MIGRATIONS) - 1
    _build_at_version(open_store, previous)
    store = open_store()
    assert store.schema_version == len(MIGRATIONS)  # type: ignore[attr-defined]
    old = store.get_sandbox("sb-old")
    assert old is not None
    assert (old.status, old.status_reason, old.expires_at) == ("paused", "idle", 12.5)
    assert old.labels == {"team": "x"} and old.runtime_id == "pool-1"
    assert store.get_secrets("sb-old") == {"K": b"sealed"}
    assert [p.token for p in store.list_ports("sb-old")] == ["tok"]
    assert old.team == "default"
    assert [t.name for t in store.list_teams()] == ["default"]
    assert store.list_pool_entries("node-a") == []
    # The newest migration (15): an old placement has no runtime id (its row has it).
    placed = store.sandbox_placement("sb-old")
    assert placed is not None and (placed.node, placed.runtime_id) == ("node-a", None)
    # Migration 16: a snapshot's row from before has no time; it counts from when first seen
    # (a replica of the older Hutch may be forking with it now).
    assert store.snapshot_nodes_before("fork-", before=1000.0, now=2000.0) == []
    assert store.snapshot_nodes_before("fork-", before=2001.0, now=3000.0) == ["fork-old"]
    # Migration 17: a node of an older Hutch reports no warm pools.
    assert store.get_node("node-a").pool_sizes == {}  # type: ignore[union-attr]
    # Migration 18: a node of an older Hutch runs runc only.
    assert store.get_node("node-a").runtimes == ("runc",)  # type: ignore[union-attr]


def test_a_nodes_heartbeat_carries_its_warm_pool_sizes(open_store: OpenStore) -> None:
    store = open_store()
    node = NodeRecord("a", "http://a:7171", 4, 4096, 8192, last_heartbeat=1.0)
    node.pool_sizes = {"default": 3, "python": 1}
    assert store.heartbeat_node(node).pool_sizes == {"default": 3, "python": 1}
    node.pool_sizes = {}  # restarted without HUTCH_WARM_POOLS
    store.heartbeat_node(node)
    assert [n.pool_sizes for n in store.list_nodes()] == [{}]


def test_a_nodes_heartbeat_carries_the_runtimes_it_can_run(open_store: OpenStore) -> None:
    store = open_store()
    node = NodeRecord("a", "http://a:7171", 4, 4096, 8192, last_heartbeat=1.0)
    assert store.heartbeat_node(node).runtimes == ("runc",)
    node.runtimes = ("runc", "gvisor")  # runsc installed since
    store.heartbeat_node(node)
    assert [n.runtimes for n in store.list_nodes()] == [("runc", "gvisor")]


def test_snapshot_rows_older_than_a_time_by_prefix(open_store: OpenStore) -> None:
    store = open_store()
    store.set_snapshot_node("fork-a", "a")
    store.set_snapshot_node("snap-b", "a")
    store.set_snapshot_node("forkless", "a")
    now = time.time()
    assert store.snapshot_nodes_before("fork-", before=now - 60, now=now) == []
    assert store.snapshot_nodes_before("fork-", before=now + 60, now=now) == ["fork-a"]
    with pytest.raises(ValueError):
        store.snapshot_nodes_before("fork_", before=now, now=now)  # a wildcard: not a prefix


def test_a_placement_holds_its_runtime_id_and_a_move_keeps_it(open_store: OpenStore) -> None:
    store = open_store()
    store.heartbeat_node(NodeRecord("a", "http://a:7171", 4, 4096, 8192, last_heartbeat=1.0))
    store.set_sandbox_node("sb-1", "a", "pool-1")
    placed = store.sandbox_placement("sb-1")
    assert placed is not None and (placed.node, placed.runtime_id) == ("a", "pool-1")
    assert placed.record is not None and placed.record.address == "http://a:7171"
    store.set_sandbox_node("sb-1", "b")  # moved (b never beat: no row for it)
    placed = store.sandbox_placement("sb-1")
    assert placed is not None and (placed.node, placed.runtime_id, placed.record) == (
        "b",
        "pool-1",
        None,
    )
    store.set_sandbox_node("sb-1", "a", "sb-1")  # made again, cold: the new id
    assert store.sandbox_placement("sb-1").runtime_id == "sb-1"  # type: ignore[union-attr]
    store.set_sandbox_node("sb-2", "a")  # as a Hutch from before migration 15 records it
    assert store.placements_on("a") == {"sb-1": "sb-1", "sb-2": None}
    store.forget_sandbox_node("sb-1")
    assert store.sandbox_placement("sb-1") is None


def test_placement_reads_every_placed_sandboxs_limits_and_the_ready_pooled_ones(
    open_store: OpenStore,
) -> None:
    store = open_store()
    store.insert_sandbox(record("sb-1", cpu=1.5, memory_mb=512, disk_mb=2048))
    stopped = record("sb-2", cpu=0.5, memory_mb=256, disk_mb=1024)
    stopped.status = "stopped"
    store.insert_sandbox(stopped)
    store.insert_sandbox(record("sb-3"))  # in the store, on no node (single-host rows)
    store.set_sandbox_node("sb-1", "a", "sb-1")
    store.set_sandbox_node("sb-2", "b", "sb-2")
    store.set_sandbox_node("sb-gone", "a", "sb-gone")  # its sandbox row went: counts nothing
    store.add_pool_entry(PoolEntryRecord("pool-1", "a", "img", "t"))
    store.add_pool_entry(PoolEntryRecord("pool-2", "a", "img", "t"))
    assert store.claim_pool_entry("a", "img", "sb-x") is not None  # claimed: not ready
    got = sorted(store.placed_limits(), key=lambda p: (p.node, p.pooled))
    assert [(p.node, p.status, p.cpu, p.memory_mb, p.disk_mb, p.pooled) for p in got] == [
        ("a", "running", 1.5, 512, 2048, False),
        ("a", "running", 0, 0, 0, True),
        ("b", "stopped", 0.5, 256, 1024, False),
    ]
    # The one being placed again (a move) is left out.
    left = sorted((p.node, p.pooled) for p in store.placed_limits(but="sb-1"))
    assert left == [("a", True), ("b", False)]
    # The same with the nodes' rows, as placement reads them (one round trip).
    store.heartbeat_node(NodeRecord("a", "http://a:7171", 4, 4096, 8192, last_heartbeat=1.0))
    nodes, placed = store.placement_rows(but="sb-1")
    assert [n.name for n in nodes] == ["a"] and nodes == store.list_nodes()
    assert sorted((p.node, p.pooled) for p in placed) == left


def test_the_event_log_numbers_without_gaps_and_keeps_a_bounded_history(
    open_store: OpenStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store()
    log = open_event_log(store, open_store.path or tmp_path / "unused.db")
    monkeypatch.setattr(_events, "KEEP_PER_SANDBOX", 5)
    assert [log.append("sb-a", "paused", {"i": i}).seq for i in range(12)] == list(range(1, 13))
    kept = log.since("sb-a", 0)
    assert [e.seq for e in kept] == [8, 9, 10, 11, 12] and kept[-1].data == {"i": 11}
    # A new sandbox with that id starts its log again.
    assert log.append("sb-a", "created", {}, fresh=True).seq == 1
    assert [(e.seq, e.type) for e in log.since("sb-a", 0)] == [(1, "created")]
    assert log.since("sb-b", 0) == []
    # Events that happened together (a create's): numbered in order, in one write; a fresh
    # sandbox's start its log again.
    together = log.append_many("sb-a", [("created", {"image": "x"}), ("started", {})], fresh=True)
    assert [(e.seq, e.type) for e in together] == [(1, "created"), (2, "started")]
    assert [(e.seq, e.type, e.data) for e in log.since("sb-a", 0)] == [
        (1, "created", {"image": "x"}),
        (2, "started", {}),
    ]
    more = log.append_many("sb-a", [("paused", {}), ("resumed", {})])
    assert [e.seq for e in more] == [3, 4]
    log.close()


def test_a_database_newer_than_this_hutch_is_refused(open_store: OpenStore) -> None:
    open_store().close()
    open_store.rows(f"INSERT INTO schema_version (version) VALUES ({len(MIGRATIONS) + 1})")
    with pytest.raises(RuntimeError, match="newer than this Hutch"):
        open_store()


def test_a_migration_that_fails_leaves_the_version_where_it_was(
    open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hutch.server.store import _migrations

    broken = (*_migrations.MIGRATIONS, "CREATE TABLE extra (a TEXT); CREATE TABLE broken (")
    monkeypatch.setattr(_migrations, "MIGRATIONS", broken)
    with pytest.raises(Exception):  # noqa: B017 (each driver has its own syntax error)
        open_store()
    # Neither the version nor the migration's first statement was kept.
    assert open_store.rows("SELECT MAX(version) FROM schema_version") == [(len(MIGRATIONS),)]
    with pytest.raises(Exception):  # noqa: B017
        open_store.rows("SELECT * FROM extra")


def test_the_death_watch_reads_the_running_and_paused_sandboxes_only(
    open_store: OpenStore,
) -> None:
    store = open_store()
    states = ("running", "paused", "stopped", "error", "creating")
    for status in states:
        store.insert_sandbox(record(f"sb-{status}"))
        store.set_sandbox_status(f"sb-{status}", status)
    assert sorted(store.watched_sandboxes()) == [
        ("sb-paused", "paused"),
        ("sb-running", "running"),
    ]


def test_the_metrics_count_sandboxes_by_state_in_the_database(open_store: OpenStore) -> None:
    store = open_store()
    assert store.sandbox_counts() == {}
    for i, status in enumerate(("running", "running", "paused", "stopped", "error")):
        store.insert_sandbox(record(f"sb-{i}"))
        store.set_sandbox_status(f"sb-{i}", status)
    store.delete_sandbox("sb-4")
    assert store.sandbox_counts() == {"running": 2, "paused": 1, "stopped": 1}
