"""kill -9 the server: sandboxes and their processes keep running; a restart re-adopts them
and sweeps away what a crash left behind (how fast: bench/bench_recovery.py)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch import Sandbox, SandboxNotFound
from hutch.runtime import ImageStore, Limits, Runtime, RuntimeConfig, SandboxSpec
from hutch.runtime.container._cgroups import cgroup_name
from tests._server import SHARED_IMAGES, ServerProcess
from tests.conftest import _cleanup_home

pytestmark = pytest.mark.sandbox


@pytest.fixture()
def own_server(busybox_image: str) -> Iterator[ServerProcess]:
    srv = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-crash-", dir="/var/tmp")))
    srv.start()
    yield srv
    srv.stop()
    _cleanup_home(srv)


def host_leftovers(home: Path, sandbox_id: str) -> list[str]:
    """Everything on the host that still names this sandbox."""
    found = []
    mounts = Path("/proc/self/mountinfo").read_text()
    if sandbox_id in mounts:
        found.append("mount")
    for controller in Path("/sys/fs/cgroup").iterdir():
        if (controller / cgroup_name(home, sandbox_id)).exists():
            found.append(f"cgroup {controller.name}")
    for path in (home / "runc" / sandbox_id, home / "sandboxes" / sandbox_id):
        if path.exists():
            found.append(str(path))
    if (home / "storage" / sandbox_id).exists():
        found.append("subvolume")
    return found


def test_kill_9_and_restart_keeps_sandboxes_and_processes(own_server: ServerProcess) -> None:
    opts = {"base_url": own_server.url, "api_key": own_server.api_key}
    boxes = [Sandbox.create(**opts), Sandbox.create(image="busybox", **opts)]
    for box in boxes:
        box.exec(
            "setsid sh -c 'while true; do date +%s >> /tmp/ticks; sleep 0.2; done' "
            ">/dev/null 2>&1 < /dev/null &"
        )
    time.sleep(0.5)

    own_server.kill9()
    time.sleep(1.0)  # the loops keep ticking with no server at all
    own_server.start()

    # How fast they answer is a figure for bench/bench_recovery.py; here, that they do.
    for box in boxes:
        assert box.info().status == "running"
        assert box.exec("echo back", timeout=30).stdout == "back\n"
    listed = {s.id for s in Sandbox.list(**opts)}
    assert {b.id for b in boxes} <= listed
    for box in boxes:
        before = int(box.exec("wc -l < /tmp/ticks").stdout)
        time.sleep(0.6)
        assert int(box.exec("wc -l < /tmp/ticks").stdout) > before, "the process stopped"
    for box in boxes:
        box.destroy()
        assert host_leftovers(own_server.home, box.id) == []
        with pytest.raises(SandboxNotFound):
            box.info()


def test_restart_sweeps_what_a_crash_left_behind(own_server: ServerProcess) -> None:
    own_server.kill9()
    # A sandbox the server never recorded (as if it crashed mid-create): a container with
    # its mounts, cgroups and subvolume, unknown to the state database.
    orphan = "sb-orphan0001"

    async def make_orphan() -> None:
        runtime = Runtime(RuntimeConfig(home=own_server.home, storage_size_gb=32))
        await runtime.setup()
        image = ImageStore(SHARED_IMAGES).get("busybox")
        await runtime.create(SandboxSpec(id=orphan, image=image, env={}, limits=Limits()))

    asyncio.run(make_orphan())
    assert host_leftovers(own_server.home, orphan)
    own_server.start()
    assert host_leftovers(own_server.home, orphan) == []


def test_destroy_removes_everything(own_server: ServerProcess) -> None:
    box = Sandbox.create(base_url=own_server.url, api_key=own_server.api_key)
    box.exec("dd if=/dev/zero of=/workspace/f bs=1M count=5 2>/dev/null")
    assert host_leftovers(own_server.home, box.id)
    box.destroy()
    assert host_leftovers(own_server.home, box.id) == []
    assert shutil.disk_usage(own_server.home)  # the home itself is still there
