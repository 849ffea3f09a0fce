"""Store latency: one call of the operations on every request's path, SQLite vs PostgreSQL.

    sudo .venv/bin/python bench/bench_store.py [calls]

The server calls its store synchronously on the event loop, so one call's latency is how long
it holds every other request. SQLite (the baseline, same run) is a WAL file in a temp dir;
PostgreSQL is a private server (initdb + pg_ctl, as the tests start it) on a unix socket, then
on TCP loopback, with fsync on, as a production database would run. Each store holds 200
sandboxes; the calls:
get_sandbox (every request that changes a sandbox), current_sandbox (an exec's read;
SQLite: from memory while the file is unchanged), list_sandboxes (each reconciler pass, list calls),
watched_sandboxes (the death watch, twice a second), sandbox_counts (each metrics scrape),
the event loop's longest wait while the reconciler's pass reads every row, a status
change (`transition`, every lifecycle step), find_key_by_hash (every authenticated request),
a start's quota admission (`claim_start` + `end_start_claim`, team of 200 rows), a create's
(`insert_sandbox` with its admission) and the early check in the process (`Quotas.usage`).
Prints p50/p95/p99 of each, and the load average before and after.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stats import loadavg, report
from hutch.server.services._quotas import Quotas
from hutch.server.store._off_loop import off_loop
from hutch.server.store._open import open_store
from hutch.server.store._records import ApiKeyRecord, SandboxRecord, Store
from hutch.server.store._teams import DEFAULT_TEAM, Quota
from tests.support.postgres import PostgresServer


def fill(store: Store, count: int) -> None:
    for i in range(count):
        store.insert_sandbox(
            SandboxRecord(
                id=f"sb-{i:04}",
                status="running",
                image="default",
                image_id="abc",
                created_at=f"2026-01-01T00:{i // 60:02}:{i % 60:02}.000000Z",
                labels={"team": "bench"},
                env={"A": "1"},
            ),
            {"K": b"sealed" * 8},
        )
    store.insert_key(ApiKeyRecord("key-1", "bench", "hk_x", "h" * 64, "t"))


def timed(calls: int, op: Callable[[int], object]) -> list[float]:
    for i in range(min(calls, 50)):  # warm-up: prepared statements, page cache
        op(i)
    samples = []
    for i in range(calls):
        started = time.perf_counter()
        op(i)
        samples.append(time.perf_counter() - started)
    return samples


def timed_off_loop(store: Store, calls: int) -> list[float]:
    async def go() -> list[float]:
        async def op(i: int) -> object:
            return await off_loop(store, store.get_sandbox, f"sb-{i % 200:04}")

        for i in range(min(calls, 50)):
            await op(i)
        samples = []
        for i in range(calls):
            started = time.perf_counter()
            await op(i)
            samples.append(time.perf_counter() - started)
        return samples

    return asyncio.run(go())


def loop_waits(store: Store, reads: int = 20) -> tuple[list[float], list[float]]:
    """The longest gap between turns of a 1 ms ticker on the event loop during each of
    `reads` reads of every sandbox: made on the loop, then with `off_loop`."""

    async def go() -> tuple[list[float], list[float]]:
        gaps: list[float] = []

        async def ticker() -> None:
            last = time.perf_counter()
            while True:
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        async def longest(read: Callable[[], object]) -> float:
            await asyncio.sleep(0.005)
            gaps.clear()
            await read()  # type: ignore[misc]
            await asyncio.sleep(0.002)
            return max(gaps, default=0.0)

        async def on_loop() -> object:
            return store.list_sandboxes()

        async def offloaded() -> object:
            return await off_loop(store, store.list_sandboxes)

        tick = asyncio.create_task(ticker())
        on = [await longest(on_loop) for _ in range(reads)]
        off = [await longest(offloaded) for _ in range(reads)]
        tick.cancel()
        return on, off

    return asyncio.run(go())


def run(name: str, store: Store, calls: int) -> None:
    fill(store, 200)
    statuses = ("running", "paused")

    def flip(i: int) -> object:
        return store.transition(
            f"sb-{i % 200:04}",
            (statuses[(i // 200) % 2],),
            statuses[(i // 200 + 1) % 2],
            None,
            None,
        )

    print(
        report(
            f"{name}: get_sandbox", timed(calls, lambda i: store.get_sandbox(f"sb-{i % 200:04}"))
        )
    )
    # What an exec reads now: SQLite answers from memory while its file is unchanged
    # (PostgreSQL from its row watch, which this bench does not start: a read each time).
    print(
        report(
            f"{name}: current_sandbox",
            timed(calls, lambda i: store.current_sandbox(f"sb-{i % 200:04}")),
        )
    )
    print(
        report(
            f"{name}: find_key_by_hash", timed(calls, lambda i: store.find_key_by_hash("h" * 64))
        )
    )
    print(report(f"{name}: transition (status change)", timed(calls, flip)))
    # The same read as the hot paths make it now: through `off_loop`, awaited on an event
    # loop (PostgreSQL: on the store's threads, so the loop is free during the round trip;
    # SQLite: in place). The difference to get_sandbox above is the thread hop's cost.
    print(report(f"{name}: get_sandbox via off_loop", timed_off_loop(store, calls)))
    # A start's admission (services/_quotas.py): under the team's lock, its 200 rows read and
    # checked, the sandbox claimed; then the claim ended. Next to `transition` above, the
    # status change every start made before.
    quotas = Quotas(store, lambda team: Quota(max_running=1000), host_cpus=None)
    store.insert_sandbox(SandboxRecord("sb-stopped", "stopped", "default", "abc", "t"))
    stopped = store.get_sandbox("sb-stopped")
    assert stopped is not None
    admit = quotas.admit_start_rows(stopped)

    def claim(i: int) -> object:
        now = time.time()
        assert store.claim_start("sb-stopped", ("stopped",), admit, now, now - 300)
        store.end_start_claim("sb-stopped")
        return None

    print(report(f"{name}: claim_start + end_start_claim (team of 200)", timed(calls, claim)))

    # A create's admission: its row inserted in the transaction that checks the team's rows;
    # then deleted again, so the team stays at 200.
    def create(i: int) -> object:
        record = SandboxRecord(f"sb-new-{i}", "creating", "default", "abc", "t")
        assert store.insert_sandbox(record, None, quotas.admit_rows(record))
        store.delete_sandbox(record.id)
        return None

    print(report(f"{name}: insert_sandbox admitted + delete (team of 200)", timed(calls, create)))
    print(
        report(
            f"{name}: list_sandboxes (200 rows)",
            timed(max(calls // 10, 20), lambda i: store.list_sandboxes()),
        )
    )
    # The death watch's read, twice a second (services/_deaths.py): ids and states only,
    # next to list_sandboxes above, which it made before.
    print(
        report(
            f"{name}: watched_sandboxes (200 rows)",
            timed(max(calls // 10, 20), lambda i: store.watched_sandboxes()),
        )
    )
    # The metrics' sandboxes-by-state gauge (each scrape): counted by the database.
    print(
        report(
            f"{name}: sandbox_counts (200 rows)",
            timed(max(calls // 10, 20), lambda i: store.sandbox_counts()),
        )
    )
    # The reconciler's pass reads every row once a second: how long the event loop (every
    # other request) waits for one such read, made on the loop vs off it (the server's way).
    on, off = loop_waits(store)
    print(report(f"{name}: loop's longest wait, list_sandboxes on the loop", on))
    print(report(f"{name}: loop's longest wait, list_sandboxes off the loop", off))
    # The early check in this process (before any work): the team's use, with 200 sandboxes
    # of another team in the store that it need not read.
    for i in range(200):
        other = SandboxRecord(f"sb-other-{i:04}", "running", "default", "abc", "t", team="other")
        store.insert_sandbox(other)
    print(
        report(
            f"{name}: Quotas.usage (team of 200, store of 400)",
            timed(calls, lambda i: quotas.usage(DEFAULT_TEAM)),
        )
    )
    store.close()


def main(calls: int) -> None:
    if os.geteuid() != 0:
        raise SystemExit("run as root: the PostgreSQL server runs as the postgres user")
    print(f"load average before: {loadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        run("sqlite (baseline)", open_store(Path(tmp) / "hutch.db", None), calls)
    for transport in ("unix socket", "tcp 127.0.0.1"):
        pg = PostgresServer(fsync=True, tcp=transport.startswith("tcp"))
        try:
            pg.start()
            store = open_store(Path("/nonexistent"), pg.new_database())
            run(f"postgresql ({transport})", store, calls)
        finally:
            pg.stop()
    print(f"load average after: {loadavg()}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
