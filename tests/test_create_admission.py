"""Cold-start admission: many creates at once all succeed (the rest wait their turn)."""

from __future__ import annotations

import asyncio

import pytest

from hutch import AsyncClient, AsyncSandbox
from tests._server import ServerProcess

pytestmark = pytest.mark.sandbox


def test_fifty_concurrent_creates_all_succeed(server: ServerProcess) -> None:
    async def create_all(client: AsyncClient) -> list[AsyncSandbox | BaseException]:
        async def one() -> AsyncSandbox:
            sb = await AsyncSandbox.create(image="busybox", memory_mb=64, client=client)
            assert (await sb.exec("echo up")).stdout == "up\n"
            return sb

        return await asyncio.gather(*(one() for _ in range(50)), return_exceptions=True)

    async def main() -> list[AsyncSandbox | BaseException]:
        async with AsyncClient(server.url, server.api_key) as client:
            results = await create_all(client)
            made = [r for r in results if isinstance(r, AsyncSandbox)]
            await asyncio.gather(*(sb.destroy() for sb in made), return_exceptions=True)
            return results

    results = asyncio.run(main())
    failures = [repr(r) for r in results if not isinstance(r, AsyncSandbox)]
    assert failures == []
    assert len({r.id for r in results if isinstance(r, AsyncSandbox)}) == 50
