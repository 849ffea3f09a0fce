"""The cold-start gate: at most `slots` starts at once, in arrival order; a create that
waited past the deadline gets 503 create_busy with Retry-After, having run nothing."""

from __future__ import annotations

import asyncio

import pytest

from hutch.server._errors import CreateBusy
from hutch.server.services._cold_starts import ColdStartGate, slots_for_this_host


async def test_never_more_than_the_slots_and_in_arrival_order() -> None:
    gate = ColdStartGate(2, wait=10)
    running = 0
    most = 0
    order: list[int] = []

    async def start(i: int) -> None:
        nonlocal running, most
        async with gate.slot():
            order.append(i)
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.01)
            running -= 1

    # Tasks begin in the order they are made: each waits its turn in the order it came.
    await asyncio.gather(*(asyncio.create_task(start(i)) for i in range(10)))
    assert most == 2 and order == list(range(10))
    assert gate.running == 0 and gate.waiting == 0


async def test_a_create_that_waits_too_long_is_told_when_to_retry_and_runs_nothing() -> None:
    gate = ColdStartGate(1, wait=0.1)
    ran = False
    async with gate.slot():
        with pytest.raises(CreateBusy) as caught:
            async with gate.slot():
                ran = True
    assert not ran
    assert caught.value.status == 503 and caught.value.code == "create_busy"
    assert int(caught.value.headers["Retry-After"]) >= 1
    assert "retry" in str(caught.value)
    async with gate.slot():  # the slot came back
        assert gate.running == 1


def test_sized_from_the_cpus_never_below_two() -> None:
    assert slots_for_this_host() >= 2


async def test_a_create_waiting_when_the_server_shuts_down_is_told_to_retry_at_once() -> None:
    gate = ColdStartGate(1, wait=30)
    async with gate.slot():
        waiting = asyncio.create_task(gate.slot().__aenter__())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        gate.closing.set()  # the drain: it must not wait out its 30 s and be cut off
        with pytest.raises(CreateBusy, match="shutting down"):
            await asyncio.wait_for(waiting, 5)
    with pytest.raises(CreateBusy):  # and none is queued any more
        async with gate.slot():
            pass
    assert gate.waiting == 0 and gate.running == 0
