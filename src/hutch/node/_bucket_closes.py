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


async def tell_agent(socket: Path, mounts: Sequence[BucketMount]) -> None:
    """Start or stop the agent's flushing for `mounts` (the sandbox's mounts now).

    A failure is logged, not raised: the mount itself is done, and its files still reach the
    bucket, only later (at the next batch of closes, or at unmount).
    """
    every = FLUSH_EVERY if any(not m.read_only for m in mounts) else 0.0
    try:
        conn = await AgentConnection.connect(socket, timeout=AGENT_TIMEOUT)
        async with conn:
            await asyncio.wait_for(conn.call("flush_closes", every=every), AGENT_TIMEOUT)
    except (AgentError, OSError, TimeoutError) as exc:
        log.warning("could not tell the agent at %s about its bucket mounts: %s", socket, exc)
