"""Starting a home's helper daemon (lxcfs, the statfs listener) so that it outlives the
server, as the sandboxes that use it do."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Sequence


async def start_detached(argv: Sequence[str], ready: Callable[[], bool], patience: float) -> bool:
    """Run `argv` with `setsid -f` (in a session of its own and nobody's child) and wait up to
    `patience` seconds for `ready()`; whether it became ready."""
    starter = await asyncio.create_subprocess_exec(
        "setsid",
        "-f",
        *argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    await starter.wait()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while not ready():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True
