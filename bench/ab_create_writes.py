"""The database work of a create through a replica, as main made it and as this branch does,
alternated in one process on one PostgreSQL database (a running local cluster's, or any):

- before the node's call: old = the insert, then placement's two reads and its write, one
  after the other; new = the insert beside placement's reads in one pipeline, then the write;
- after it: old = the `running` update, then the `created`/`started` events on the event
  loop, then the first exec's read of the row (the update made memory forget it); new = the
  update beside the events, two calls off the loop at once (tried, not kept), and the first
  exec's row from memory; seq = new with the update and then the events in one call off the
  loop (`SandboxEvents.emit_many_after`: what the branch does).

    sudo .venv/bin/python bench/ab_create_writes.py --n 300 \
        --url 'postgresql:///hutch?host=/var/lib/hutch-cluster/pg&user=postgres'

Prints p50/p95 of each, new − old p50 with its 95% bootstrap interval and the load average.
The rows it makes are deleted as it goes (ids `ab-…`; no node has them; made now, so that
a cluster's reconciler does not take them for abandoned creates).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stats import loadavg, median_difference_interval, percentile, report
from hutch.server.services._events import SandboxEvents
from hutch.server.services._keys import now_iso
from hutch.server.services._placement import Need
from hutch.server.services._pool_claims import placed_on
from hutch.server.store._off_loop import off_loop
from hutch.server.store._postgres import PostgresStore
from hutch.server.store._postgres_events import PostgresEventLog
from hutch.server.store._records import SandboxRecord

NEED = Need(0.5, 256, 256)
CREATED = (("created", {"image": "default"}), ("started", {}))


def _record(sid: str) -> SandboxRecord:
    return SandboxRecord(
        id=sid, status="creating", image="default", image_id="x", created_at=now_iso(), cpu=0.5,
        memory_mb=256, disk_mb=256,
    )  # fmt: skip


async def old(store: PostgresStore, events: SandboxEvents, sid: str) -> tuple[float, float]:
    t0 = time.perf_counter()
    await off_loop(store, store.insert_sandbox, _record(sid), None, None)
    nodes = await off_loop(store, store.list_nodes)
    await off_loop(store, lambda: placed_on(store, nodes, but=sid))
    await off_loop(store, store.set_sandbox_node, sid, "ab-node", sid)
    t1 = time.perf_counter()
    await off_loop(store, store.transition, sid, ("creating",), "running", None, None)
    store.forget_sandbox(sid)  # as main's update did: the row is read again
    events.emit_many(sid, *CREATED)  # type: ignore[arg-type]
    await off_loop(store, store.get_sandbox, sid)
    return t1 - t0, time.perf_counter() - t1


async def _events_off_loop(store: PostgresStore, events: SandboxEvents, sid: str) -> None:
    if await off_loop(store, events._append, sid, CREATED):  # type: ignore[arg-type]
        events._appended(sid)


async def _insert_and_place(store: PostgresStore, sid: str) -> None:
    """What main does before the node's call: the insert beside placement's read, then the
    placement's record."""
    await asyncio.gather(
        off_loop(store, store.insert_sandbox, _record(sid), None, None),
        off_loop(store, store.placement_rows, sid),
    )
    await off_loop(store, store.set_sandbox_node, sid, "ab-node", sid)


async def new(store: PostgresStore, events: SandboxEvents, sid: str) -> tuple[float, float]:
    t0 = time.perf_counter()
    await _insert_and_place(store, sid)
    t1 = time.perf_counter()
    await asyncio.gather(
        off_loop(store, store.transition, sid, ("creating",), "running", None, None),
        _events_off_loop(store, events, sid),
    )
    row = store.current_sandbox(sid)  # memory, once live (else a read, as old)
    assert row is not None and row.status == "running"
    return t1 - t0, time.perf_counter() - t1


async def seq(store: PostgresStore, events: SandboxEvents, sid: str) -> tuple[float, float]:
    """`new` with the update and the events one after the other in one call off the loop."""
    t0 = time.perf_counter()
    await _insert_and_place(store, sid)
    t1 = time.perf_counter()

    def running() -> bool:
        return store.transition(sid, ("creating",), "running", None, None)

    await events.emit_many_after(store, sid, running, *CREATED)  # type: ignore[arg-type]
    row = store.current_sandbox(sid)
    assert row is not None and row.status == "running"
    return t1 - t0, time.perf_counter() - t1


KINDS = {"old": old, "new": new, "seq": seq}


async def run(store: PostgresStore, n: int) -> None:
    events = SandboxEvents(PostgresEventLog(store))
    samples: dict[str, list[float]] = {f"{k} {p}": [] for p in ("before", "after") for k in KINDS}
    made: list[str] = []
    try:
        before = loadavg()
        for i in range(n + 4):
            order = list(KINDS)
            for kind in order if i % 2 == 0 else order[::-1]:
                sid = f"ab-{secrets.token_hex(6)}"
                made.append(sid)
                b, a = await KINDS[kind](store, events, sid)
                # NB: gone at once: placement's read reads every placed row.
                store.forget_sandbox_node(sid)
                store.delete_sandbox(sid)
                if i >= 4:  # warm-up
                    samples[f"{kind} before"].append(b)
                    samples[f"{kind} after"].append(a)
        after = loadavg()
    finally:
        for sid in made:
            store.forget_sandbox_node(sid)
            store.delete_sandbox(sid)
        store.close()
    for name, seconds in samples.items():
        print(report(name, seconds))
    for kind in ("new", "seq"):
        for part in ("before", "after"):
            a, b = samples[f"{kind} {part}"], samples[f"old {part}"]
            low, high = median_difference_interval(a, b)
            print(
                f"{kind} - old p50, {part} the node's create: "
                f"{(percentile(a, 50) - percentile(b, 50)) * 1e3:+.2f} ms "
                f"(95% {low * 1e3:+.2f} .. {high * 1e3:+.2f})"
            )
    print(f"load average {before} -> {after}; hits from memory: {store._watch.hits}")  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="a PostgreSQL URL (a cluster's database)")
    parser.add_argument("--n", type=int, default=300, help="creates of each kind")
    args = parser.parse_args()
    store = PostgresStore(args.url)
    store.watch_sandboxes()  # as a replica: rows from memory once its listener hears
    deadline = time.monotonic() + 10
    while not store.rows_live and time.monotonic() < deadline:
        time.sleep(0.05)
    asyncio.run(run(store, args.n))


if __name__ == "__main__":
    main()
