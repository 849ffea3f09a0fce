"""Quotas and rate limits hold across API replicas on one database (issue 19): each replica
has its own store and its own memory, so only the database can count for them all. Two store
instances on one database stand for two replicas (SQLite and PostgreSQL in turn); the
two-process test with real sandboxes is in test_postgres_replicas.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest

from hutch.server._errors import QuotaExceeded, RateLimited
from hutch.server.services._caller import Caller
from hutch.server.services._quotas import Quotas
from hutch.server.services._ratelimit import RateLimits, Refill
from hutch.server.store._records import SandboxRecord, SnapshotRecord, Store
from hutch.server.store._teams import Quota
from tests.support.stores import OpenStore

T = TypeVar("T")


def _record(i: int, team: str = "web") -> SandboxRecord:
    rec = SandboxRecord(
        id=f"sb-{i:04d}", status="creating", image="d", image_id="i", created_at="t"
    )
    rec.team, rec.cpu = team, 0.5
    return rec


def test_twenty_inserts_over_two_replicas_against_five(open_store: OpenStore) -> None:
    replicas = [open_store(), open_store()]
    quotas = [Quotas(s, lambda team: Quota(max_running=5), host_cpus=None) for s in replicas]
    # NB: one call at a time per replica, as on a server's one event loop; the two replicas
    # run at once.
    loops = [threading.Lock(), threading.Lock()]
    start = threading.Barrier(20)

    def insert(i: int) -> str:
        rec = _record(i)
        check = quotas[i % 2].admit_rows(rec)

        def slow_check(rows: list[SandboxRecord]) -> None:
            check(rows)
            time.sleep(0.02)  # widen the gap from the check to the insert: it must not matter

        start.wait()
        try:
            with loops[i % 2]:
                assert replicas[i % 2].insert_sandbox(rec, None, slow_check)
        except QuotaExceeded as exc:
            return str(exc)
        return "made"

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(insert, range(20)))
    assert answers.count("made") == 5, answers
    refused = [a for a in answers if a != "made"]
    assert len(refused) == 15 and all("running sandboxes" in a for a in refused)
    # Every replica sees the same 5, and another team is not counted against this one.
    assert len([r for r in replicas[1].list_sandboxes() if r.team == "web"]) == 5
    other = _record(99, team="other")
    assert replicas[0].insert_sandbox(other, None, quotas[0].admit_rows(other))
    # A stopped sandbox holds no running slot: one more fits, on either replica.
    replicas[0].set_sandbox_status(replicas[0].list_sandboxes()[0].id, "stopped")
    again = _record(100)
    assert replicas[1].insert_sandbox(again, None, quotas[1].admit_rows(again))
    with pytest.raises(QuotaExceeded, match="5 in use"):
        late = _record(101)
        replicas[0].insert_sandbox(late, None, quotas[0].admit_rows(late))
    assert replicas[0].get_sandbox(late.id) is None  # refused: no row left behind


def _race(replicas: list[Store], attempt: Callable[[int], None], n: int) -> list[str]:
    """`attempt(i)` n times at once, split over the replicas (one call at a time per replica,
    as on a server's one event loop); what each got: "made" or the refusal's message."""
    loops = [threading.Lock() for _ in replicas]
    start = threading.Barrier(n)

    def run(i: int) -> str:
        start.wait()
        try:
            with loops[i % len(replicas)]:
                attempt(i)
        except QuotaExceeded as exc:
            return str(exc)
        return "made"

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def _slow(check: Callable[[T], None]) -> Callable[[T], None]:
    def slow_check(seen: T) -> None:
        check(seen)
        time.sleep(0.02)  # widen the gap from the check to the write: it must not matter

    return slow_check


def test_starts_over_two_replicas_hold_to_the_quota(open_store: OpenStore) -> None:
    """12 stopped sandboxes started at once over two replicas against max_running 5 and
    max_cpu 2.5 (0.5 each): exactly 5 are claimed; the rest are refused naming a limit."""
    replicas = [open_store(), open_store()]
    quota = Quota(max_running=5, max_cpu=2.5)
    quotas = [Quotas(s, lambda team: quota, host_cpus=None) for s in replicas]
    stopped = [_record(i) for i in range(12)]
    for rec in stopped:
        rec.status = "stopped"
        assert replicas[0].insert_sandbox(rec)
    now = time.time()

    def start(i: int) -> None:
        store, rec = replicas[i % 2], stopped[i]
        admit = _slow(quotas[i % 2].admit_start_rows(rec))
        # NB: the store-level half of Quotas.admit_start (which holds it while the start runs).
        assert store.claim_start(rec.id, ("stopped",), admit, now, now - 300)

    answers = _race(replicas, start, 12)
    assert answers.count("made") == 5, answers
    assert all("quota" in a for a in answers if a != "made"), answers
    claimed = [r for r in replicas[1].list_sandboxes() if r.start_claimed_at is not None]
    assert len(claimed) == 5
    # A claim counts against creates too, on any replica, until it ends.
    late = _record(50)
    with pytest.raises(QuotaExceeded, match="5 in use"):
        replicas[1].insert_sandbox(late, None, quotas[1].admit_rows(late))
    replicas[0].end_start_claim(claimed[0].id)
    assert replicas[1].insert_sandbox(late, None, quotas[1].admit_rows(late))


def test_a_start_claim_is_one_at_a_time_and_lapses(open_store: OpenStore) -> None:
    a, b = open_store(), open_store()
    rec = _record(1)
    rec.status = "stopped"
    assert a.insert_sandbox(rec)
    quotas = Quotas(a, lambda team: Quota(max_running=1), host_cpus=None)
    now = time.time()
    admit = quotas.admit_start_rows(rec)
    assert a.claim_start(rec.id, ("stopped",), admit, now, now - 300)
    # Another replica starting the same sandbox meanwhile is refused (not booted twice).
    assert not b.claim_start(rec.id, ("stopped",), admit, now, now - 300)
    # A replica that died mid-start: its claim no longer counts once it is stale.
    other = _record(2)
    with pytest.raises(QuotaExceeded):
        b.insert_sandbox(other, None, quotas.admit_rows(other))
    assert b.claim_start(rec.id, ("stopped",), admit, now + 400, now + 100)
    assert not a.claim_start(rec.id, ("running",), admit, now, 0)  # not stopped


def test_the_quotas_count_the_teams_settings_and_read_only_its_rows(
    open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The rows are read by a query of their own (the database takes cpu, memory and disk out
    # of the spec): what it reads must be what a whole record says.
    store = open_store()
    running, stopped, claimed = _record(1), _record(2), _record(3)
    running.status, running.cpu, running.memory_mb, running.disk_mb = "running", 1.5, 300, 700
    stopped.status, stopped.cpu, stopped.memory_mb, stopped.disk_mb = "stopped", 2, 900, 100
    claimed.status, claimed.cpu, claimed.memory_mb, claimed.disk_mb = "stopped", 0.25, 64, 10
    elsewhere = _record(4, team="other")
    elsewhere.status = "running"
    for rec in (running, stopped, claimed, elsewhere):
        assert store.insert_sandbox(rec)
    now = time.time()
    quotas = Quotas(store, lambda team: Quota(max_running=2), host_cpus=None)
    assert store.claim_start(claimed.id, ("stopped",), quotas.admit_start_rows(claimed), now, 0)
    rows = sorted(store.team_quota_rows("web"), key=lambda r: r.id)
    assert [(r.id, r.status, r.cpu, r.memory_mb, r.disk_mb) for r in rows] == [
        ("sb-0001", "running", 1.5, 300, 700),
        ("sb-0002", "stopped", 2.0, 900, 100),
        ("sb-0003", "stopped", 0.25, 64, 10),
    ]
    assert rows[2].start_claimed_at == pytest.approx(now) and rows[0].start_claimed_at is None
    # The check in the process reads the team's rows, never every sandbox of every team.
    monkeypatch.setattr(store, "list_sandboxes", lambda: pytest.fail("read every sandbox"))
    use = quotas.usage("web")
    # Running and claimed hold cpu and memory; every row holds its disk.
    assert (use.running, use.cpu, use.memory_mb, use.disk_mb) == (2, 1.75, 364, 810)
    with pytest.raises(QuotaExceeded, match="max_running 2"):
        store.insert_sandbox(_record(5), None, quotas.admit_rows(_record(5)))


def test_snapshots_over_two_replicas_hold_to_the_quota(open_store: OpenStore) -> None:
    replicas = [open_store(), open_store()]
    quotas = [Quotas(s, lambda team: Quota(max_snapshots=3), host_cpus=None) for s in replicas]

    def snapshot(i: int) -> None:
        snap = SnapshotRecord(
            id=f"snap-{i:03d}", name=None, sandbox_id="sb", image="d", image_id="i",
            created_at="t", spec="{}", team="web",
        )  # fmt: skip
        admit = _slow(quotas[i % 2].admit_snapshot("web"))
        assert replicas[i % 2].insert_snapshot(snap, admit)

    answers = _race(replicas, snapshot, 10)
    assert answers.count("made") == 3, answers
    assert all("max_snapshots 3" in a for a in answers if a != "made"), answers
    assert len(replicas[1].list_snapshots()) == 3


def test_a_keys_rate_is_shared_by_the_replicas(open_store: OpenStore) -> None:
    stores = [open_store(), open_store()]
    limits = [RateLimits(None, None, shared=s) for s in stores]
    loops = [threading.Lock(), threading.Lock()]
    member = Caller("key-1", "web", "member")
    quota = Quota(rate_per_second=0.01, rate_burst=6)  # ~no refill during the test

    def take(i: int) -> bool:
        try:
            with loops[i % 2]:
                limits[i % 2].take(member, quota)
        except RateLimited:
            return False
        return True

    with ThreadPoolExecutor(8) as pool:
        taken = list(pool.map(take, range(20)))
    # 6 in all, not 6 per replica; another key has its own bucket.
    assert taken.count(True) == 6, taken
    limits[1].take(Caller("key-2", "web", "member"), quota)
    with pytest.raises(RateLimited) as refused:
        limits[0].take(member, quota)
    assert int(refused.value.headers["Retry-After"]) >= 90


def test_the_token_arithmetic() -> None:
    refill = Refill(rate=2.0, burst=2)
    bucket, wait = refill.take(None, 100.0)
    assert bucket == (1.0, 100.0) and wait == 0.0
    bucket, wait = refill.take(bucket, 100.0)
    bucket, wait = refill.take(bucket, 100.0)
    assert wait == pytest.approx(0.5) and bucket == (0.0, 100.0)  # refused: nothing taken
    bucket, wait = refill.take(bucket, 100.5)
    assert wait == 0.0 and bucket == (0.0, 100.5)
    # Never more than the burst however long it sat; a clock behind the row's adds nothing.
    assert refill.take((0.0, 0.0), 1e6)[0] == (1.0, 1e6)
    assert refill.take((0.5, 200.0), 100.0)[1] == pytest.approx(0.25)


def test_unused_buckets_are_forgotten(open_store: OpenStore) -> None:
    store = open_store()
    limits = RateLimits(5, 5, shared=store)
    limits.take(Caller("key-old", "web", "member"), Quota())
    assert open_store.count("rate_buckets") == 1
    store.forget_rate_buckets(time.time() + 1)
    assert open_store.count("rate_buckets") == 0


async def test_a_create_of_a_team_without_limits_reads_no_rows_and_takes_no_lock(
    open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A quota that limits none of what the rows count (none, or a lifetime only) cannot
    # refuse: the create reads no team rows (a round trip each on PostgreSQL), early or in the
    # insert's transaction, which needs no team lock then.
    from hutch.server._models import SandboxCreate
    from hutch.server.services._caller import CURRENT_CALLER

    store = open_store()
    quotas_of = {"web": Quota(max_lifetime=600), "capped": Quota(max_running=1)}
    quotas = Quotas(store, lambda team: quotas_of.get(team, Quota()), host_cpus=None)
    read: list[str] = []
    rows = store.team_quota_rows
    monkeypatch.setattr(store, "team_quota_rows", lambda team: read.append(team) or rows(team))
    for i, team in enumerate(("web", "capped", "capped")):
        CURRENT_CALLER.set(Caller(f"key-{team}", team, "member"))
        rec = _record(i, team=team)
        try:
            async with quotas.admit(rec.id, SandboxCreate(cpu=0.5, timeout=60)):
                assert store.insert_sandbox(rec, None, quotas.admit_rows(rec))
        except QuotaExceeded as exc:
            assert team == "capped" and i == 2 and "max_running 1" in str(exc)
    assert read == ["capped", "capped"]  # the early checks of the team with a limit
    assert quotas.admit_rows(_record(5, team="web")) is None
    assert [r.id for r in store.list_sandboxes()] == ["sb-0000", "sb-0001"]
