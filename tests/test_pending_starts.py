"""services/_starts.py: the starts that settle after their create answered. Requests wait
for a start in flight; its failure reaches the requests that waited (not a lifecycle step,
which then finds the sandbox gone); a request that gives up does not cancel the start."""

from __future__ import annotations

import asyncio

import pytest

from hutch.server._errors import SandboxStartFailed
from hutch.server.services._starts import PendingStarts


async def test_requests_wait_for_a_start_in_flight_and_none_once_it_settled() -> None:
    starts = PendingStarts()
    go = asyncio.Event()
    done: list[str] = []

    async def settle() -> None:
        await go.wait()
        done.append("started")

    starts.begin("sb-1", settle())
    waiter = asyncio.ensure_future(starts.settled("sb-1"))
    await asyncio.sleep(0.01)
    assert not waiter.done() and starts.pending("sb-1")
    await starts.settled("sb-2")  # another sandbox: nothing to wait for
    go.set()
    await waiter
    assert done == ["started"] and not starts.pending("sb-1")
    await starts.settled("sb-1")  # settled: answered at once


async def test_a_failed_start_is_raised_to_requests_and_not_to_lifecycle_steps() -> None:
    starts = PendingStarts()

    async def settle() -> None:
        await asyncio.sleep(0.01)
        raise SandboxStartFailed("sandbox sb-1 failed to start: its agent did not answer")

    starts.begin("sb-1", settle())
    request = asyncio.ensure_future(starts.settled("sb-1"))
    step = asyncio.ensure_future(starts.settled("sb-1", quiet=True))
    with pytest.raises(SandboxStartFailed, match="did not answer"):
        await request
    await step  # the step goes on; the sandbox is gone by then
    assert not starts.pending("sb-1")


async def test_a_request_that_gives_up_does_not_cancel_the_start() -> None:
    starts = PendingStarts()
    finished = asyncio.Event()

    async def settle() -> None:
        await asyncio.sleep(0.05)
        finished.set()

    starts.begin("sb-1", settle())
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(starts.settled("sb-1"), 0.01)
    await asyncio.wait_for(finished.wait(), 5)


async def test_shutdown_lets_starts_settle_and_cuts_off_only_what_outlasts_it() -> None:
    starts = PendingStarts()
    settled: list[str] = []
    never = asyncio.Event()

    async def quick() -> None:
        await asyncio.sleep(0.02)
        settled.append("quick")

    starts.begin("sb-1", quick())
    starts.begin("sb-2", never.wait())  # type: ignore[arg-type]
    await starts.finish(within=0.5)
    assert settled == ["quick"]
    assert not starts.pending("sb-1") and not starts.pending("sb-2")
