"""Sandbox code racing the server's bucket unmount must not make it unmount a host mount.

The attack (issue 14): the bucket is at /m/data; sandbox code swaps /m with a symlink to a host
directory (`renameat2(RENAME_EXCHANGE)` in a tight loop) while the server unmounts the bucket.
A server that resolves the mount point by name, following links, unmounts `<host dir>/data`.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch import Sandbox
from hutch.runtime.container._agent_bundle import agent_args
from tests._server import ServerProcess
from tests.conftest import _cleanup_home
from tests.support.s3 import S3Server

pytestmark = pytest.mark.sandbox

ATTEMPTS = 8

# The agent's own Python (mounted into every sandbox) runs the swap loop, so the bare busybox
# image serves: ctypes, because no tool in it does RENAME_EXCHANGE.
SWAP_LOOP = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
a, b = sys.argv[1].encode(), sys.argv[2].encode()
SYS_renameat2, AT_FDCWD, RENAME_EXCHANGE = 316, -100, 2
while True:
    libc.syscall(SYS_renameat2, AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE)
"""


def python_in_sandbox(script: str, *args: str) -> str:
    argv = [*agent_args()[:-2], "-c", script, *args]
    return shlex.join(argv)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def host_mount() -> Iterator[Path]:
    """A host directory with a tmpfs at `data` holding a marker file: the attack's victim."""
    victim = Path(tempfile.mkdtemp(prefix="hutch-victim-", dir="/var/tmp"))
    (victim / "data").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "victim", victim / "data"], check=True)
    (victim / "data" / "marker").write_text("host data")
    yield victim
    subprocess.run(["umount", "-l", victim / "data"], check=False)
    (victim / "data").rmdir()
    victim.rmdir()


def is_mounted(path: Path) -> bool:
    return any(
        line.split()[4] == str(path)
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )


def test_swapping_a_parent_for_a_symlink_cannot_unmount_a_host_mount(
    sdk_env: ServerProcess, s3: S3Server, host_mount: Path
) -> None:
    bucket = f"race-{time.time_ns() % 10**9}"
    s3.make_bucket(bucket)
    with Sandbox.create(image="busybox") as sb:
        for i in range(ATTEMPTS):
            d, link = f"/m{i}", f"/m{i}X"
            assert sb.exec(f"mkdir {d} && ln -s {host_mount} {link}").exit_code == 0
            sb.mount_bucket(bucket, f"{d}/data", endpoint=s3.endpoint, credentials=s3.credentials)
            swapper = sb.start_process(python_in_sandbox(SWAP_LOOP, d, link))
            time.sleep(0.3)  # the loop is swapping
            sb.unmount_bucket(f"{d}/data")
            swapper.kill(signal="SIGKILL")
            assert is_mounted(host_mount / "data"), f"attempt {i}: the host's tmpfs was unmounted"
            assert (host_mount / "data" / "marker").read_text() == "host data"
            # The bucket really went, under whichever name its directory had by then.
            assert f"{d}/data" not in sb.exec("cat /proc/self/mountinfo").stdout
            assert f"{link}/data" not in sb.exec("cat /proc/self/mountinfo").stdout
            assert sb.info().mounts == []


def test_destroy_while_the_swap_loop_runs_leaves_host_mounts_alone(
    sdk_env: ServerProcess, s3: S3Server, host_mount: Path
) -> None:
    bucket = f"race-{time.time_ns() % 10**9}"
    s3.make_bucket(bucket)
    for _ in range(3):
        sb = Sandbox.create(image="busybox")
        assert sb.exec(f"mkdir /m && ln -s {host_mount} /mX").exit_code == 0
        sb.mount_bucket(bucket, "/m/data", endpoint=s3.endpoint, credentials=s3.credentials)
        sb.start_process(python_in_sandbox(SWAP_LOOP, "/m", "/mX"))
        time.sleep(0.3)
        sb.destroy()
        assert is_mounted(host_mount / "data"), "destroy unmounted the host's tmpfs"
        assert (host_mount / "data" / "marker").read_text() == "host data"
        assert not [
            ln for ln in Path("/proc/self/mountinfo").read_text().splitlines() if bucket in ln
        ]


@pytest.fixture()
def own_server(busybox_image: str) -> Iterator[ServerProcess]:
    srv = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-race-", dir="/var/tmp")))
    srv.start()
    yield srv
    srv.stop()
    _cleanup_home(srv)


def test_restore_after_a_crash_while_the_swap_loop_runs_leaves_host_mounts_alone(
    own_server: ServerProcess, s3: S3Server, host_mount: Path
) -> None:
    # A restarted server replaces the binds of an rclone that died: by id, through an fd.
    bucket = f"race-{time.time_ns() % 10**9}"
    s3.make_bucket(bucket)
    sb = Sandbox.create(image="busybox", base_url=own_server.url, api_key=own_server.api_key)
    try:
        assert sb.exec(f"mkdir /m && ln -s {host_mount} /mX").exit_code == 0
        sb.mount_bucket(bucket, "/m/data", endpoint=s3.endpoint, credentials=s3.credentials)
        sb.start_process(python_in_sandbox(SWAP_LOOP, "/m", "/mX"))
        own_server.kill9()
        (slot,) = (own_server.home / "buckets" / sb.id).iterdir()
        os.kill(json.loads((slot / "mount.json").read_text())["pid"], signal.SIGKILL)
        time.sleep(0.3)
        own_server.start()
        sb = Sandbox.connect(sb.id, base_url=own_server.url, api_key=own_server.api_key)
        assert [m.mount_path for m in sb.info().mounts] == ["/m/data"]
        assert is_mounted(host_mount / "data"), "restore unmounted the host's tmpfs"
        assert (host_mount / "data" / "marker").read_text() == "host data"
    finally:
        sb.destroy()
    assert is_mounted(host_mount / "data")
