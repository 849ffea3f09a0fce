from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._server import SHARED_IMAGES, ServerProcess


@pytest.hookimpl(trylast=True)  # after `-m`/`-k` deselect what they leave out
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Sandboxes, chown and chroot need root: a run that selects sandbox tests without it fails
    # at once rather than skipping most of the suite and looking green. The unit tests
    # (`-m "not sandbox"`) run as any user.
    if os.geteuid() == 0:
        return
    needs_root = [item.nodeid for item in items if item.get_closest_marker("sandbox")]
    if needs_root:
        raise pytest.UsageError(
            f"{len(needs_root)} selected tests start real sandboxes and need root "
            f"(first: {needs_root[0]}): run them with `sudo ./scripts/test`, "
            'or only the unit tests with `pytest -m "not sandbox"`'
        )


@pytest.fixture(scope="session")
def busybox_image() -> str:
    """A bare busybox-static image (no libc, no Python) in the shared test image store."""
    from hutch.runtime import ImageStore
    from tests.support.busybox import add_busybox_image

    add_busybox_image(ImageStore(SHARED_IMAGES), name="busybox")
    return "busybox"


@pytest.fixture(scope="session")
def server(busybox_image: str) -> Iterator[ServerProcess]:
    home = Path(tempfile.mkdtemp(prefix="hutch-test-", dir="/var/tmp"))
    srv = ServerProcess(home)
    srv.start()
    yield srv
    srv.stop()
    _cleanup_home(srv)


def _cleanup_home(srv: ServerProcess) -> None:
    """Destroy what a test server left, through a fresh server's sweep, then drop its home."""
    import asyncio

    from hutch.runtime import Runtime, RuntimeConfig

    async def sweep() -> None:
        runtime = Runtime(RuntimeConfig(home=srv.home, storage_size_gb=32))
        await runtime.setup()
        await runtime.sweep(keep=())
        await runtime.teardown()

    asyncio.run(sweep())
    shutil.rmtree(srv.home, ignore_errors=True)


@pytest.fixture()
def sdk_env(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> ServerProcess:
    monkeypatch.setenv("HUTCH_URL", server.url)
    monkeypatch.setenv("HUTCH_API_KEY", server.api_key)
    return server
