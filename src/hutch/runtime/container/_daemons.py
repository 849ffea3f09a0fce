"""Starting a home's helper daemon (lxcfs, the statfs listener) so that it outlives the
server, as the sandboxes that use it do."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence

from hutch.runtime.container._spawn import exit_code, spawn


async def start_detached(argv: Sequence[str], ready: Callable[[], bool], patience: float) -> bool:
    """Run `argv` with `setsid -f` (in a session of its own and nobody's child) and wait up to
    `patience` seconds for `ready()`; whether it became ready."""
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        starter = spawn(["setsid", "-f", *argv], stdin=devnull, stdout=devnull, stderr=devnull)
    finally:
        os.close(devnull)
    await exit_code(starter)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while not ready():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True
