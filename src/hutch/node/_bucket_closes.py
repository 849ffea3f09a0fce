"""Tell a sandbox's agent whether a writable bucket is mounted in it.

rclone uploads a bucket's file after the host's last close of it. Under gVisor the sentry
queues the gofer's closes and sends them in batches, so a file the sandbox closed stayed open
on the host until about a hundred more files had been closed in the sandbox. While a writable
bucket is mounted the agent sends that queue itself, after each process exit and op and every
`FLUSH_EVERY` seconds (agent/_close_flush.py). A runc sandbox's agent answers that it does
nothing: there the host kernel closes the file with the sandbox's close.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

from hutch.node._agent_client import AgentConnection, AgentError
from hutch.runtime import BucketMount

log = logging.getLogger("hutch.node.buckets")

# A file closed by a process that is still running (a server, a code interpreter's kernel)
# reaches the bucket this long after its close at most; process exits and ops flush at once.
# A flush costs ~0.2 ms of CPU under gVisor's ptrace platform (4 a second: <0.1% of a core).
FLUSH_EVERY = 0.25
AGENT_TIMEOUT = 5.0
# How long an unmount waits for the agent's flushes before it goes on: a flush takes under a
# millisecond unless rclone is stuck, and then the unmount stops it anyway.
FLUSH_NOW_TIMEOUT = 2.0
_FLUSH_POLL = 0.02


async def tell_agent(socket: Path, mounts: Sequence[BucketMount]) -> None:
    """Start or stop the agent's flushing for `mounts` (the sandbox's mounts now).

    A failure is logged, not raised: the mount itself is done, and its files still reach the
    bucket, only later (at the next batch of closes, or at unmount).
    """
    every = _flush_every(mounts)
    try:
        conn = await AgentConnection.connect(socket, timeout=AGENT_TIMEOUT)
        async with conn:
            await asyncio.wait_for(conn.call("flush_closes", every=every), AGENT_TIMEOUT)
    except (AgentError, OSError, TimeoutError) as exc:
        log.warning("could not tell the agent at %s about its bucket mounts: %s", socket, exc)


async def flush_now(socket: Path, mounts: Sequence[BucketMount]) -> None:
    """Have the agent send the closes the sentry has queued, and wait for it (at most
    `FLUSH_NOW_TIMEOUT`): an unmount goes on only once the host has seen every file the
    sandbox closed, or rclone's uploads it then waits for miss the last ones (a CI run's gVisor
    pass lost a 48 MiB file closed just before its unmount).

    Each call of the op pokes the agent's flushing thread. A flush counted two after the
    first answer started after that poke (the one counted next may have been under way
    before it), so it sent everything closed before this call. Under runc the agent answers
    that it does not flush: nothing to wait for. Failures are logged, not raised: the
    unmount goes on, as it would have without the flush.
    """
    every = _flush_every(mounts)
    if not every:
        return  # no writable bucket: nothing of the sandbox's goes up
    try:
        conn = await AgentConnection.connect(socket, timeout=AGENT_TIMEOUT)
        async with conn:
            async with asyncio.timeout(FLUSH_NOW_TIMEOUT):
                first = await conn.call("flush_closes", every=every)
                if not first["flushing"]:
                    return
                target = first["flushes"] + 2
                while (await conn.call("flush_closes", every=every))["flushes"] < target:  # noqa: ASYNC110 - the count is the agent's: poll it
                    await asyncio.sleep(_FLUSH_POLL)
    except (AgentError, OSError, TimeoutError) as exc:
        log.warning("could not flush the closes of the agent at %s: %s", socket, exc)


def _flush_every(mounts: Sequence[BucketMount]) -> float:
    """The agent's flushing period for `mounts`: 0 (none) without a writable bucket."""
    return FLUSH_EVERY if any(not m.read_only for m in mounts) else 0.0
