"""The death watch's pidfds on a host (node/_deaths.py `InitWatch`), shared by concurrent calls:
on a node every API replica asks at once, each with its own view of the running sandboxes.
What a user would notice if it went wrong: a node that leaks a file descriptor per call until
it can open no more (no sandbox starts), or a death that is never reported.

The inits are real processes and the pidfds real; the runtime is an in-process stand-in for
the few `Runtime` calls the watch makes, whose `init_pid` waits before it answers, as
`Runtime.init_pid` does when it has to ask `runc state` or `runsc state` (a gVisor
container, or one whose state.json cannot be read).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator
from types import SimpleNamespace
from typing import cast

import pytest

from hutch.node._deaths import AGENT_EXITED, FORGET_AFTER, InitWatch
from hutch.runtime import Runtime


class Inits:
    """The part of `Runtime` the watch uses, over real processes standing for the inits."""

    def __init__(self, procs: dict[str, subprocess.Popen[bytes]]) -> None:
        self.procs = procs
        self.cgroups = SimpleNamespace(of=lambda rid: f"hutch/test/{rid}")

    async def init_pid(self, rid: str) -> int | None:
        await asyncio.sleep(0.001)  # a `runc state` call
        proc = self.procs.get(rid)
        return None if proc is None or proc.poll() is not None else proc.pid

    async def state(self, rid: str) -> str:
        proc = self.procs.get(rid)
        if proc is None:
            return "missing"
        return "running" if proc.poll() is None else "stopped"

    def halted(self, rid: str) -> bool:
        return False

    def agent_oom_killed(self, rid: str) -> bool:
        return False


def _pidfds() -> int:
    """This process's open pidfds."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[pidfd]"
        except OSError:  # the listing's own fd, closed by now
            pass
    return count


@pytest.fixture()
def inits() -> Iterator[Inits]:
    procs = {rid: subprocess.Popen(["sleep", "60"]) for rid in ("sb-a", "sb-b")}
    try:
        yield Inits(procs)
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()


def test_concurrent_calls_share_one_pidfd_per_container_and_still_see_a_death(
    inits: Inits,
) -> None:
    async def run() -> None:
        watch = InitWatch(cast(Runtime, inits))
        before = _pidfds()
        try:
            views = [["sb-a"], ["sb-b"], ["sb-a", "sb-b"], ["sb-a", "sb-b"]]
            for _ in range(20):
                found = await asyncio.gather(*(watch.dead(ids) for ids in views))
                assert found == [{}] * len(views)
            # One per container, whoever opened it and whatever the other calls asked.
            assert _pidfds() - before == 2
            assert watch.watched() == 2

            inits.procs["sb-a"].send_signal(signal.SIGKILL)
            inits.procs["sb-a"].wait()
            # A call that did not ask about it does not get it; the next that does, does.
            assert await watch.dead(["sb-b"]) == {}
            assert await watch.dead(["sb-a", "sb-b"]) == {"sb-a": AGENT_EXITED}
            assert _pidfds() - before == 1
        finally:
            watch.close()
        assert _pidfds() == before

    asyncio.run(run())


def test_a_container_no_call_asks_about_is_forgotten_after_a_while(inits: Inits) -> None:
    now = [0.0]

    async def run() -> None:
        watch = InitWatch(cast(Runtime, inits), clock=lambda: now[0])
        before = _pidfds()
        try:
            await watch.dead(["sb-a", "sb-b"])
            now[0] += FORGET_AFTER / 2
            await watch.dead(["sb-b"])  # another replica's view: sb-a is still watched
            assert watch.watched() == 2
            now[0] += FORGET_AFTER / 2 + 1
            await watch.dead(["sb-b"])  # nobody asked about sb-a for long: closed
            assert watch.watched() == 1 and _pidfds() - before == 1
            now[0] += FORGET_AFTER + 1
            assert await watch.dead([]) == {}
            assert watch.watched() == 0 and _pidfds() == before
        finally:
            watch.close()

    asyncio.run(run())
