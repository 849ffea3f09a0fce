"""Store calls off the event loop.

Every store method is synchronous (one short transaction). On PostgreSQL each is one or more
round trips to the database, and made on the event loop it holds every other request for
that long (a commit with fsync: milliseconds); `PostgresStore.offload` is a thread pool (half
its connection pool), and `off_loop` runs a call there. psycopg's pool hands each
thread its own connection, so a call's transaction is its own, as it was on the loop.

SQLite's one connection is shared by the loop and one store thread under a lock (a call
never interleaves with another's transaction). Its writes with an admission (a team's rows
read) and its lists take milliseconds and go there; a read of one row takes microseconds,
less than the thread hop, so `point_read` makes it in place (bench/bench_store.py prints
both).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import ParamSpec, Protocol, TypeVar

log = logging.getLogger("hutch.server.store")

P = ParamSpec("P")
T = TypeVar("T")


class Offloaded(Protocol):
    """A store that says where its calls should run (None: in place, on the loop), and
    whether a call is a round trip to another process (`remote`)."""

    @property
    def offload(self) -> Executor | None: ...

    @property
    def remote(self) -> bool: ...


async def off_loop(store: Offloaded, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` (a call of `store`'s, or a service function that makes them)
    on `store`'s executor, with the caller's context variables (the request's caller)."""
    executor = store.offload
    if executor is None:
        return fn(*args, **kwargs)
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(executor, call)


async def point_read(store: Offloaded, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """A read of one row by its key (every request makes a few): off the loop only on a
    remote store; SQLite answers it in microseconds, less than the thread hop."""
    if not store.remote:
        return fn(*args, **kwargs)
    return await off_loop(store, fn, *args, **kwargs)


def in_background(store: Offloaded, what: str, fn: Callable[..., object], *args: object) -> None:
    """Start ``fn(*args)`` and do not wait for it: advisory writes (a sandbox's last use)
    that no request should wait on. A failure is logged, never raised."""

    def run() -> None:
        try:
            fn(*args)
        except Exception as exc:
            log.warning("could not %s: %s", what, exc)

    executor = store.offload
    if executor is None:
        run()
    else:
        executor.submit(run)
