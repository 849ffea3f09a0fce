"""Teams without sandboxes: the migration of a database from before teams, the key checker
with roles and expiry, the quota reservation under concurrency, the token bucket."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from hutch.server._errors import QuotaExceeded, RateLimited, Unauthorized
from hutch.server._models import SandboxCreate
from hutch.server.services._caller import CURRENT_CALLER, Caller
from hutch.server.services._keys import KeyChecker, create_key
from hutch.server.services._quotas import Quotas
from hutch.server.services._ratelimit import RateLimits
from hutch.server.store._migrations import statements
from hutch.server.store._sqlite import MIGRATIONS, SandboxRecord, SqliteStore
from hutch.server.store._teams import Quota


def test_a_database_from_before_teams_moves_to_the_default_team(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for version, migration in enumerate(MIGRATIONS[:8], start=1):
        for statement in statements(migration, "sqlite"):
            db.execute(statement)
        db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
    db.execute(
        "INSERT INTO sandboxes (id, status, image, image_id, created_at, spec)"
        " VALUES ('sb-old', 'running', 'default', 'abc', 't', '{}')"
    )
    db.execute(
        "INSERT INTO api_keys (id, name, prefix, key_hash, created_at)"
        " VALUES ('key-old', 'ci', 'hk_abc', 'digest', 't')"
    )
    db.close()
    store = SqliteStore(tmp_path / "s.db")
    assert store.schema_version == len(MIGRATIONS)
    old = store.get_sandbox("sb-old")
    assert old is not None and old.team == "default"
    [key] = store.list_keys()
    # Every key was an admin before teams: it stays one (an admin can make member keys).
    assert key.team == "default" and key.role == "admin" and key.expires_at is None
    assert [t.name for t in store.list_teams()] == ["default"]


def test_key_checker_roles_expiry_and_revocation(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    checker = KeyChecker(store, static_key="hk_static")
    assert checker.caller("hk_static") == Caller("static", "default", "admin")
    member = create_key(store, "m", team="web", role="member")
    assert checker.caller(member.key) == Caller(member.record.id, "web", "member")
    soon = create_key(store, "s", team="web", role="member", expires_at=time.time() + 0.2)
    assert checker.caller(soon.key).team == "web"
    time.sleep(0.3)
    with pytest.raises(Unauthorized, match="expired"):
        checker.caller(soon.key)
    store.delete_key(member.record.id)
    with pytest.raises(Unauthorized):
        checker.caller(member.key)
    for missing in (None, "", "hk_nope"):
        with pytest.raises(Unauthorized):
            checker.caller(missing)


async def test_twenty_concurrent_admissions_against_five(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    quotas = Quotas(store, lambda team: Quota(max_running=5, max_cpu=4), host_cpus=2)
    CURRENT_CALLER.set(Caller("key-1", "web", "member"))
    made: list[str] = []

    async def create(i: int) -> None:
        sandbox_id = f"sb-{i}"
        async with quotas.admit(sandbox_id, SandboxCreate(cpu=0.5)):
            # The row appears while the create runs, as SandboxManager's does.
            rec = SandboxRecord(
                id=sandbox_id, status="creating", image="d", image_id="i", created_at="t"
            )
            rec.team, rec.cpu = "web", 0.5
            store.insert_sandbox(rec)
            await asyncio.sleep(0.05)
            store.set_sandbox_status(sandbox_id, "running")
        made.append(sandbox_id)

    results = await asyncio.gather(*(create(i) for i in range(20)), return_exceptions=True)
    assert len(made) == 5
    assert all(isinstance(r, QuotaExceeded) for r in results if r is not None)
    assert quotas.usage("web").running == 5 and quotas.usage("other").running == 0
    with pytest.raises(QuotaExceeded, match="5 in use"):
        async with quotas.admit("sb-x", SandboxCreate(cpu=0.5)):
            pass


def test_token_bucket_refills_at_the_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    limits = RateLimits(per_second=2, burst=2)
    caller = Caller("key-1", "web", "member")
    limits.take(caller, Quota())
    limits.take(caller, Quota())
    with pytest.raises(RateLimited) as refused:
        limits.take(caller, Quota())
    assert refused.value.headers == {"Retry-After": "1"}
    now[0] += 0.5  # one token back at 2/s
    limits.take(caller, Quota())
    # The team's own rate wins over the server's default; no rate at all: no limit.
    unlimited = RateLimits(per_second=None, burst=None)
    for _ in range(1000):
        unlimited.take(caller, Quota())
    with pytest.raises(RateLimited):
        for _ in range(10):
            unlimited.take(caller, Quota(rate_per_second=1, rate_burst=5))


def test_a_rate_too_small_is_refused_and_admins_are_never_limited() -> None:
    """Regression (schemathesis): a team rate of 5e-324/s made every key of the team wait
    forever, Retry-After overflowed (500 on every request), and no admin could undo it."""
    from pydantic import ValidationError

    from hutch.server._team_models import QuotaUpdate

    with pytest.raises(ValidationError):
        QuotaUpdate(rate_per_second=5e-324)
    limits = RateLimits(per_second=None, burst=None)
    starved = Quota(rate_per_second=1e-9, rate_burst=1)
    admin = Caller("key-admin", "default", "admin")
    for _ in range(100):
        limits.take(admin, starved)
    member = Caller("key-m", "default", "member")
    limits.take(member, starved)
    with pytest.raises(RateLimited) as refused:
        limits.take(member, starved)
    assert refused.value.headers == {"Retry-After": "86400"}  # finite, never an overflow


def test_quota_numbers_that_no_column_holds_are_refused() -> None:
    """Regression (schemathesis): max_disk_mb 65740963965093093376 was a 500 from SQLite."""
    from pydantic import ValidationError

    from hutch.server._team_models import QuotaUpdate

    with pytest.raises(ValidationError):
        QuotaUpdate(max_disk_mb=65740963965093093376)
    assert QuotaUpdate(max_disk_mb=2**31 - 1).max_disk_mb == 2**31 - 1
