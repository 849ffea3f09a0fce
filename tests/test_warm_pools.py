"""Warm pools: create from a pooled image hands out a started sandbox, with the user's id,
env, labels and limits; the pool refills; the mapping survives a server crash."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch import Sandbox
from hutch.runtime.container._cgroups import cgroup_name
from tests._server import ServerProcess, runtime_ids, wait_for
from tests.conftest import _cleanup_home
from tests.test_recovery import host_leftovers

pytestmark = pytest.mark.sandbox


class PoolServer(ServerProcess):
    def env(self) -> dict[str, str]:
        return {**super().env(), "HUTCH_WARM_POOLS": "busybox=2"}


def pooled(home: Path) -> set[str]:
    d = home / "sandboxes"
    return {p.name for p in d.iterdir() if p.name.startswith("pool-")} if d.is_dir() else set()


def cgroup_value(home: Path, rid: str, controller: str, v2: str, v1: str) -> str:
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():
        return (root / cgroup_name(home, rid) / v2).read_text().strip()
    return (root / controller / cgroup_name(home, rid) / v1).read_text().strip()


@pytest.fixture()
def pool_server(busybox_image: str) -> Iterator[ServerProcess]:
    srv = PoolServer(Path(tempfile.mkdtemp(prefix="hutch-pool-", dir="/var/tmp")))
    srv.start()
    yield srv
    srv.stop()
    _cleanup_home(srv)


def test_create_from_a_warm_pool(pool_server: ServerProcess) -> None:
    home = pool_server.home
    opts = {"base_url": pool_server.url, "api_key": pool_server.api_key}
    wait_for(lambda: len(pooled(home) - set(runtime_ids(home).values())) == 2)
    ready = pooled(home)

    sb = Sandbox.create(
        image="busybox",
        env={"FOO": "from the user"},
        labels={"team": "a"},
        memory_mb=256,
        pids_limit=64,
        **opts,
    )
    rid = runtime_ids(home)[sb.id]
    assert rid in ready, "the sandbox came from the pool"
    assert not sb.id.startswith("pool-")
    assert sb.exec('printf %s "$FOO"').stdout == "from the user"
    info = sb.info()
    assert info.labels == {"team": "a"} and info.memory_mb == 256
    assert cgroup_value(home, rid, "memory", "memory.max", "memory.limit_in_bytes") == str(
        256 << 20
    )
    assert cgroup_value(home, rid, "pids", "pids.max", "pids.max") == "64"

    # Refilled in the background.
    wait_for(lambda: len(pooled(home) - set(runtime_ids(home).values())) == 2)

    # A disk quota other than the pool's cannot be changed on a running sandbox: cold start.
    cold = Sandbox.create(image="busybox", disk_mb=512, **opts)
    assert cold.id not in runtime_ids(home)
    assert cold.exec("echo cold").stdout == "cold\n"
    cold.destroy()

    # The id mapping survives a crash of the server.
    pool_server.kill9()
    pool_server.start()
    again = Sandbox.connect(sb.id, **opts)
    assert again.exec('printf %s "$FOO"').stdout == "from the user"
    sb.destroy()
    assert sb.id not in runtime_ids(home)
    assert host_leftovers(home, rid) == []


def test_a_claimed_pooled_sandbox_survives_a_server_kill_9(pool_server: ServerProcess) -> None:
    home = pool_server.home
    opts = {"base_url": pool_server.url, "api_key": pool_server.api_key}
    wait_for(lambda: len(pooled(home) - set(runtime_ids(home).values())) == 2)
    sb = Sandbox.create(image="busybox", env={"A": "1"}, **opts)
    rid = runtime_ids(home)[sb.id]
    assert rid.startswith("pool-")
    sb.write_file("/tmp/kept", b"before the crash")
    proc = sb.start_process("sleep 600", process_id="sleeper")
    unclaimed = pooled(home) - {rid}

    pool_server.kill9()
    pool_server.start()

    again = Sandbox.connect(sb.id, **opts)
    assert again.exec('printf %s "$A"').stdout == "1"
    assert again.read_file("/tmp/kept") == b"before the crash"
    assert again.get_process("sleeper").status == "running"
    assert runtime_ids(home)[sb.id] == rid
    assert proc.id == "sleeper"
    # What the pool had ready was not handed out: the restart swept it and refilled.
    wait_for(lambda: len(pooled(home) - {rid}) == 2 and not (unclaimed & pooled(home)))
    again.destroy()
    assert host_leftovers(home, rid) == []
