from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import pytest

from hutch.agent._host import HostAgent
from hutch.node._agent_client import AgentConnection
from tests._server import SHARED_IMAGES, ServerProcess
from tests.support.failure_notes import FAILURE_NOTES
from tests.support.postgres import PostgresServer
from tests.support.stores import OpenStore


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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for note in item.stash.get(FAILURE_NOTES, []):
            report.sections.append(note())
    return report


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


@pytest.fixture()
async def conn(agent: HostAgent) -> AsyncIterator[AgentConnection]:
    """A connection to the module's own `agent` fixture (the real agent run on the host)."""
    c = await AgentConnection.connect(agent.socket_path, timeout=5)
    yield c
    await c.close()


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
    _remove_home(srv.home)


def _remove_home(home: Path) -> None:
    """rmtree of a test server's home that never reaches through a mount: a sandbox's `lower`
    is the shared image's rootfs (an idmapped bind), and an rmtree across it emptied the
    `default` image of every later test once (a sandbox the sweep could not destroy). What
    the sweep left mounted is detached first; if anything stays mounted, the home stays."""
    from hutch.runtime.container._mounts import mounts_under, unmount_all_under

    with contextlib.suppress(OSError):  # what stays mounted is looked for next
        unmount_all_under(home)
    left = mounts_under(home)
    if left:
        warnings.warn(f"{home} kept: still mounted under it: {left}", stacklevel=2)
        return
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture()
def sdk_env(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> ServerProcess:
    monkeypatch.setenv("HUTCH_URL", server.url)
    monkeypatch.setenv("HUTCH_API_KEY", server.api_key)
    return server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL server (initdb + pg_ctl on a unix socket) for the whole run."""
    pg = PostgresServer()
    try:
        pg.start()
    except BaseException:
        pg.stop()
        raise
    yield pg
    pg.stop()


@pytest.fixture()
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the test PostgreSQL server."""
    return postgres_server.new_database()


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens store instances on one fresh database, SQLite or PostgreSQL (both, in turn)."""
    if request.param == "postgres":
        opener = OpenStore("postgres", url=request.getfixturevalue("postgres_url"))
    else:
        opener = OpenStore("sqlite", path=tmp_path / "s.db")
    yield opener
    opener.close_all()
