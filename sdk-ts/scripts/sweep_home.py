"""Remove what a test server left under its home (sandboxes, mounts, the storage pool), then
the home itself: the same sweep the Python tests run after their server (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path


async def sweep(home: Path) -> None:
    from hutch.runtime import Runtime, RuntimeConfig

    runtime = Runtime(RuntimeConfig(home=home, storage_size_gb=32))
    await runtime.setup()
    await runtime.sweep(keep=())
    await runtime.teardown()


if __name__ == "__main__":
    home = Path(sys.argv[1])
    asyncio.run(sweep(home))
    shutil.rmtree(home, ignore_errors=True)
