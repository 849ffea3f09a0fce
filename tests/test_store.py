"""The SQLite store: migrations, crash safety, keys."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from hutch.server.services._keys import KeyChecker, create_key, hash_key
from hutch.server.store._sqlite import MIGRATIONS, SandboxRecord, SqliteStore


def record(sandbox_id: str, **kw: object) -> SandboxRecord:
    return SandboxRecord(
        id=sandbox_id, status="running", image="default", image_id="abc", created_at="t", **kw
    )  # type: ignore[arg-type]


def test_migrations_run_once_and_are_versioned(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    assert store.schema_version == len(MIGRATIONS)
    store.close()
    again = SqliteStore(tmp_path / "s.db")  # a second open must not re-run anything
    assert again.schema_version == len(MIGRATIONS)
    rows = sqlite3.connect(tmp_path / "s.db").execute("SELECT COUNT(*) FROM schema_version")
    assert rows.fetchone()[0] == len(MIGRATIONS)


def test_sandbox_round_trip_and_duplicate_ids(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
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


def test_keys_are_stored_hashed_and_checked(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    new = create_key(store, "ci")
    raw = (tmp_path / "s.db").read_bytes() + (tmp_path / "s.db-wal").read_bytes()
    assert new.key.encode() not in raw
    assert store.find_key_by_hash(hash_key(new.key)) is not None
    checker = KeyChecker(store, static_key="hk_static")
    assert checker.is_valid(new.key) and checker.is_valid("hk_static")
    assert not checker.is_valid("hk_wrong") and not checker.is_valid(None)
    assert store.delete_key(new.record.id) and not checker.is_valid(new.key)


def test_runtime_id_and_secrets_commit_with_the_row(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    assert store.insert_sandbox(record("sb-3", runtime_id="pool-abc"), {"K": b"sealed"})
    # No close(): as after kill -9.
    reopened = SqliteStore(tmp_path / "s.db")
    got = reopened.get_sandbox("sb-3")
    assert got is not None and got.runtime_id == "pool-abc"
    assert reopened.get_secrets("sb-3") == {"K": b"sealed"}
    # A failed insert stores neither (the id is taken).
    assert not reopened.insert_sandbox(record("sb-3"), {"L": b"x"})
    assert reopened.get_secrets("sb-3") == {"K": b"sealed"}


def test_a_v3_database_gains_the_runtime_id_column(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "s.db")
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for version, sql in enumerate(MIGRATIONS[:3], start=1):
        db.executescript(sql)
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


def test_the_old_runtime_ids_file_moves_into_the_store(tmp_path: Path) -> None:
    from hutch.server.store._runtime_ids_file import import_runtime_ids_file

    store = SqliteStore(tmp_path / "s.db")
    store.insert_sandbox(record("sb-4"))
    path = tmp_path / "runtime-ids.json"
    path.write_text('{"sb-4": "pool-123", "sb-gone": "pool-456"}')
    import_runtime_ids_file(path, store)
    assert store.get_sandbox("sb-4").runtime_id == "pool-123"  # type: ignore[union-attr]
    assert not path.exists()
