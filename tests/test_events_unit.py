"""The event log's bounds and the kernel-log parsing behind `oom_killed` (no sandbox)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hutch.runtime.container import _oom_watch, _workcgroup
from hutch.runtime.container._oom_watch import OomWatch, parse_oom_line
from hutch.sdk._events import EventStreamDecoder
from hutch.server.store import _events
from hutch.server.store._events import SqliteEventLog
from hutch.server.store._sqlite import SandboxRecord, SqliteStore


def test_the_log_keeps_a_bounded_history_per_sandbox(tmp_path: Path, monkeypatch) -> None:
    store = SqliteStore(tmp_path / "hutch.db")
    log = SqliteEventLog(tmp_path / "hutch.db")
    monkeypatch.setattr(_events, "KEEP_PER_SANDBOX", 5)
    for i in range(12):
        log.append("sb-a", "paused", {"i": i})
    kept = log.since("sb-a", 0)
    assert [e.seq for e in kept] == [8, 9, 10, 11, 12] and kept[-1].data == {"i": 11}
    assert log.since("sb-b", 0) == []
    store.close()
    log.close()


def test_an_event_commits_without_an_fsync_as_the_store_does(tmp_path: Path) -> None:
    # Events are written on the server's event loop (a create writes two): with SQLite's
    # default (FULL) each commit fsynced the WAL. The store's own connection is NORMAL;
    # the setting is per connection.
    store = SqliteStore(tmp_path / "hutch.db")
    log = SqliteEventLog(tmp_path / "hutch.db")
    normal = 1
    assert log._db.execute("PRAGMA synchronous").fetchone()[0] == normal
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == normal
    store.close()
    log.close()


def test_a_destroyed_sandboxs_events_go_after_a_while_a_live_ones_stay(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "hutch.db")
    log = SqliteEventLog(tmp_path / "hutch.db")
    store.insert_sandbox(SandboxRecord("sb-live", "running", "default", "img", "now"))
    first = log.append("sb-live", "created", {})
    log.append("sb-gone", "destroyed", {})
    assert log.prune(now=first.at + 10) == 0  # gone only 10 s ago: a late reader may resume
    assert log.prune(now=first.at + _events.KEEP_GONE_FOR + 10) == 1
    assert log.since("sb-gone", 0) == [] and len(log.since("sb-live", 0)) == 1
    # A new sandbox under an old id starts a fresh history.
    log.append("sb-live", "stopped", {})
    assert [e.seq for e in log.since("sb-live", 0)] == [1, 2]
    assert [e.seq for e in [log.append("sb-live", "created", {}, fresh=True)]] == [1]
    assert [e.type for e in log.since("sb-live", 0)] == ["created"]
    store.close()
    log.close()


def test_oom_lines_of_the_kernel_log_name_the_sandbox_and_the_process() -> None:
    line = (
        "6,1234,9897616491,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),"
        "cpuset=sb-fd0fe79cab6f,mems_allowed=0,oom_memcg=/hutch/sb-fd0fe79cab6f/work,"
        "task_memcg=/hutch/sb-fd0fe79cab6f/work,task=python3,pid=12563,uid=1000000000"
    )
    assert parse_oom_line(line) == ("hutch/sb-fd0fe79cab6f/work", "python3", 12563)
    per_home = line.replace("/hutch/", "/hutch/0a1b2c3d/")
    assert parse_oom_line(per_home) == ("hutch/0a1b2c3d/sb-fd0fe79cab6f/work", "python3", 12563)
    assert parse_oom_line("Memory cgroup out of memory: Killed process 12563 (python3)") is None
    other = line.replace("/hutch/", "/system.slice/")
    assert parse_oom_line(other) is None  # not a sandbox's


def test_the_sdk_decodes_events_split_anywhere_and_skips_keepalives() -> None:
    body = (
        b"retry: 1000\n\n: keep-alive\n\n"
        b'id: 1\nevent: created\ndata: {"seq":1,"type":"created","at":"t","data":{}}\n\n'
        b'id: 2\r\nevent: paused\r\ndata: {"seq":2,"type":"paused","at":"t",'
        b'"data":{"reason":"idle"}}\r\n\r\n'
    )
    for cut in range(len(body)):
        decoder = EventStreamDecoder()
        events = decoder.feed(body[:cut]) + decoder.feed(body[cut:])
        assert [(e.seq, e.type, e.reason) for e in events] == [
            (1, "created", None),
            (2, "paused", "idle"),
        ]


def _oom_count(root: Path, cgroup: str, kills: int) -> None:
    work = root / "memory" / cgroup / "work"
    work.mkdir(parents=True, exist_ok=True)
    (work / "memory.oom_control").write_text(f"oom_kill_disable 0\nunder_oom 0\noom_kill {kills}\n")


def test_a_kill_before_the_first_question_is_news_for_a_sandbox_made_after_the_watch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A node is first asked about a new sandbox up to 2 s after its create: an exec that was
    # OOM-killed in between must still be an event; what an older sandbox had is not news.
    monkeypatch.setattr(_oom_watch, "CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(_workcgroup, "CGROUP_ROOT", tmp_path)
    _oom_count(tmp_path, "hutch/home1/sb-old", 2)
    _oom_count(tmp_path, "hutch/sb-legacy", 1)
    watch = OomWatch(lambda rid: "hutch/sb-legacy" if rid == "sb-legacy" else f"hutch/home1/{rid}")
    _oom_count(tmp_path, "hutch/home1/sb-new", 1)
    kills = watch.check(["sb-old", "sb-legacy", "sb-new"])
    assert [(k.runtime_id, k.count) for k in kills] == [("sb-new", 1)]
    _oom_count(tmp_path, "hutch/home1/sb-old", 3)
    _oom_count(tmp_path, "hutch/sb-legacy", 2)
    kills = watch.check(["sb-old", "sb-legacy", "sb-new"])
    assert sorted((k.runtime_id, k.count) for k in kills) == [("sb-legacy", 1), ("sb-old", 1)]
    assert watch.check(["sb-old", "sb-legacy", "sb-new"]) == []
    watch.close()
