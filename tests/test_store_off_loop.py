"""Store calls off the event loop (server/store/_off_loop.py): the loop keeps serving while a
call waits on PostgreSQL, and transactions stay whole when the loop and the store's threads
use one store at once (SQLite's single connection included)."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from hutch.server.store._off_loop import off_loop, point_read
from hutch.server.store._records import QuotaRow, SandboxRecord
from tests.support.stores import OpenStore

QUOTA = 5


class QuotaFull(Exception):
    pass


def _admit(rows: list[QuotaRow]) -> None:
    # Inside the insert's transaction: give the other callers the GIL meanwhile, so that
    # calls that are not kept apart do overlap.
    time.sleep(0.005)
    if len(rows) >= QUOTA:
        raise QuotaFull


def _record(i: int) -> SandboxRecord:
    return SandboxRecord(f"sb-{i:02}", "creating", "default", "abc", "t")


def test_admissions_from_threads_and_the_loop_admit_exactly_the_quota(
    open_store: OpenStore,
) -> None:
    # 30 creates at once against a quota of 5: a third on the store's threads (off_loop), a
    # third on the loop itself, a third from threads of their own. Interleaved transactions on
    # one connection would fail ("within a transaction") or admit more than 5.
    store = open_store()
    outcomes: list[str] = []

    def insert(i: int) -> None:
        try:
            store.insert_sandbox(_record(i), None, _admit)
            outcomes.append("in")
        except QuotaFull:
            outcomes.append("refused")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(10) as own:
            own_threads = [loop.run_in_executor(own, insert, i) for i in range(20, 30)]
            offloaded = [off_loop(store, insert, i) for i in range(10)]

            async def on_loop(i: int) -> None:
                await asyncio.sleep(0)
                insert(i)

            await asyncio.gather(*own_threads, *offloaded, *(on_loop(i) for i in range(10, 20)))

    asyncio.run(main())
    assert sorted(outcomes) == ["in"] * QUOTA + ["refused"] * (30 - QUOTA)
    assert len(store.list_sandboxes()) == QUOTA


def test_the_loop_serves_while_a_postgres_call_waits(postgres_url: str) -> None:
    store = OpenStore("postgres", url=postgres_url)()
    ticks: list[float] = []

    def slow_call() -> object:
        # A statement the database takes its time over (a lock wait, a slow disk).
        return store._rows("SELECT pg_sleep(0.5)")  # type: ignore[attr-defined]

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async def main() -> tuple[float, float]:
        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        started = time.monotonic()
        await off_loop(store, slow_call)
        ended = time.monotonic()
        task.cancel()
        return started, ended

    try:
        started, ended = asyncio.run(main())
    finally:
        store.close()
    # On the loop, the call would have held it: no tick between its start and its end.
    assert any(started < t < ended for t in ticks)


def test_where_each_call_runs(open_store: OpenStore) -> None:
    store = open_store()
    store.insert_sandbox(_record(1))
    where = contextvars.ContextVar("where", default="unset")

    def thread_and_context() -> tuple[str, str]:
        return threading.current_thread().name, where.get()

    async def main() -> tuple[tuple[str, str], tuple[str, str]]:
        where.set("the request's")
        return (
            await off_loop(store, thread_and_context),
            await point_read(store, thread_and_context),
        )

    (offloaded, context), (read_thread, _) = asyncio.run(main())
    # The call sees the request's context variables (the caller, whose team filters reads).
    assert context == "the request's"
    assert offloaded.startswith("hutch-store")
    # A one-row read: in place on SQLite (microseconds), off the loop on PostgreSQL.
    on_loop = read_thread == threading.current_thread().name
    assert on_loop == (open_store.kind == "sqlite")
