"""Two Hutch servers with their own homes on one host (several `hutch node`s on one machine,
test servers side by side under pytest-xdist): nothing one does to its sandboxes (create,
destroy, pause, stop) touches the other's, even when both use the same sandbox id (a
user's chosen id, or a sandbox moved between nodes keeps its id)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch.sdk import Sandbox
from tests._server import ServerProcess
from tests.conftest import _cleanup_home

pytestmark = pytest.mark.sandbox


@pytest.fixture()
def two_servers(busybox_image: str) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    del busybox_image
    homes = [Path(tempfile.mkdtemp(prefix="hutch-side-", dir="/var/tmp")) for _ in range(2)]
    servers = [ServerProcess(home) for home in homes]
    try:
        for srv in servers:
            srv.start()
        yield servers[0], servers[1]
    finally:
        for srv in servers:
            srv.stop()
            _cleanup_home(srv)
        for home in homes:
            shutil.rmtree(home, ignore_errors=True)


def _alive(sb: Sandbox) -> None:
    """What a user notices: the sandbox still runs, and its processes answer."""
    assert sb.info().status == "running", sb.info().status_reason
    assert sb.exec("echo alive").stdout == "alive\n"


def test_a_server_never_touches_the_sandboxes_of_another_home(
    two_servers: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = two_servers
    mine = Sandbox.get_or_create("twin", "busybox", base_url=a.url, api_key=a.api_key)
    other = Sandbox.create(image="busybox", base_url=a.url, api_key=a.api_key)
    # A sleeping process, as user code would leave one: it must outlive all of B's doings.
    mine.exec("sleep 1000 >/dev/null 2>&1 &")
    theirs = Sandbox.get_or_create("twin", "busybox", base_url=b.url, api_key=b.api_key)
    assert theirs.exec("echo b").stdout == "b\n"
    _alive(mine)
    # B destroys its sandbox of the same id: A's is untouched.
    theirs.destroy()
    _alive(mine)
    assert "sleep 1000" in mine.exec("ps -o args").stdout
    # B makes it again and stops (its sandboxes stay; its connections close): A's is as it was.
    again = Sandbox.get_or_create("twin", "busybox", base_url=b.url, api_key=b.api_key)
    again.pause()
    b.stop()
    _alive(mine)
    _alive(other)
    assert "sleep 1000" in mine.exec("ps -o args").stdout


# The sweeps of a start (Runtime.sweep) and the legacy flat cgroups: tests/test_runtime.py.
