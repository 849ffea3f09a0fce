"""The agent's close flushing (agent/_close_flush.py), run on the host: under gVisor it sends
the sentry's queued gofer closes by creating, unlinking and closing one file; here the same
agent code runs against a plain directory, which shows when and how it does that."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch.agent._close_flush import MIN_GAP
from hutch.agent._host import HostAgent
from hutch.node._agent_client import AgentConnection, AgentError


@pytest.fixture(scope="module")
def flush_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="hutch-close-flush-"))


@pytest.fixture(scope="module")
def agent(flush_dir: Path) -> Iterator[HostAgent]:
    env = {**os.environ, "HUTCH_AGENT_CLOSE_FLUSH": str(flush_dir / ".close-flush")}
    with HostAgent(env=env) as host:
        yield host


async def _flushes(conn: AgentConnection, every: float) -> int:
    return (await conn.call("flush_closes", every=every))["flushes"]


def _mtime(path: Path) -> int:
    return os.stat(path).st_mtime_ns


async def _changed(path: Path, since: int, within: float = 5.0) -> bool:
    """Whether `path`'s mtime moves past `since` (a flush creates and unlinks in it)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if _mtime(path) != since:
            return True
        await asyncio.sleep(0.01)
    return False


def _present(path: Path) -> bool:
    return path.exists()


async def _gone(path: Path, within: float = 5.0) -> bool:
    """Whether `path` is absent, or goes within `within` seconds."""
    deadline = time.monotonic() + within
    while _present(path):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def _quiet_mtime(path: Path) -> int:
    """The directory's mtime once no flush has touched it for a while."""
    while True:
        before = _mtime(path)
        await asyncio.sleep(0.3)
        if _mtime(path) == before:
            return before


async def test_flushes_after_a_process_exits_and_on_its_period(
    conn: AgentConnection, flush_dir: Path
) -> None:
    r = await conn.call("flush_closes", every=60)
    assert r["flushing"] is True
    quiet = await _quiet_mtime(flush_dir)
    # An exec's process exits (its files are closed by then): a flush follows at once,
    # not after the 60 s period; the file is gone again.
    assert (await conn.call_untyped("process_start", command="true"))["process"]
    assert await _changed(flush_dir, quiet), "no flush after a process ended"
    # NB: the mtime moves at the flush's create, so its unlink may not have come yet.
    assert await _gone(flush_dir / ".close-flush"), "the flush left its file behind"
    # Nothing happening: the period alone flushes.
    before = await _flushes(conn, 0.05)
    await asyncio.sleep(1.0)
    assert await _flushes(conn, 0.05) >= before + 5
    # Stopped: a process exit no longer flushes.
    assert (await conn.call("flush_closes", every=0))["flushing"] is False
    quiet = await _quiet_mtime(flush_dir)
    await conn.call_untyped("process_start", command="true")
    assert not await _changed(flush_dir, quiet, within=1.0)


async def test_bad_periods_are_refused(conn: AgentConnection) -> None:
    for every in (-1, "1", True, None, 61, float("nan")):
        with pytest.raises(AgentError) as info:
            await conn.call_untyped("flush_closes", every=every)
        assert info.value.code == "invalid_request", every
        assert "every" in str(info.value)


async def test_a_planted_path_is_neither_followed_nor_fatal(
    conn: AgentConnection, flush_dir: Path
) -> None:
    """Sandbox root can put anything at the flush file's path: a symlink is replaced, not
    followed (its target is untouched); a FIFO is not opened (no hang); a directory stops the
    flushing (the sandbox's own bucket uploads come later) but not the agent."""
    path = flush_dir / ".close-flush"
    target = flush_dir / "target"
    target.write_text("keep")
    await conn.call("flush_closes", every=60)
    for plant in (lambda: path.symlink_to(target), lambda: os.mkfifo(path)):
        quiet = await _quiet_mtime(flush_dir)
        plant()
        quiet = _mtime(flush_dir)
        await conn.call_untyped("process_start", command="true")
        assert await _changed(flush_dir, quiet)
        await _quiet_mtime(flush_dir)
        assert not path.exists() and not path.is_symlink()
        assert target.read_text() == "keep"
    path.mkdir()
    before = await _flushes(conn, 60)
    await conn.call_untyped("process_start", command="true")
    await asyncio.sleep(0.5)
    assert await _flushes(conn, 60) == before  # failed, and the agent still answers
    path.rmdir()
    await conn.call_untyped("process_start", command="true")
    await asyncio.sleep(0.5)
    assert await _flushes(conn, 60) > before
    await conn.call("flush_closes", every=0)


async def test_an_agent_without_the_setting_does_nothing() -> None:
    """runc: the host kernel closes with the sandbox's close; the op is a no-op there."""
    env = {k: v for k, v in os.environ.items() if k != "HUTCH_AGENT_CLOSE_FLUSH"}
    with HostAgent(env=env) as host:
        c = await AgentConnection.connect(host.socket_path, timeout=5)
        try:
            r = await c.call("flush_closes", every=0.25)
            assert (r["flushing"], r["flushes"]) == (False, 0)
        finally:
            await c.close()


async def test_a_storm_of_ops_does_not_flush_back_to_back(conn: AgentConnection) -> None:
    """Every op pokes the flusher: 300 pings in a burst cost a bounded number of flushes."""
    before = await _flushes(conn, 60)
    started = time.monotonic()
    await asyncio.gather(*(conn.call("ping") for _ in range(300)))
    await asyncio.sleep(0.2)
    elapsed = time.monotonic() - started
    done = await _flushes(conn, 60) - before
    assert 1 <= done <= elapsed / MIN_GAP + 2, (done, elapsed)
    await conn.call("flush_closes", every=0)
