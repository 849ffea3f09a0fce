"""Snapshot spares (runtime/container/_snapshots.py): a create from a snapshot takes over a
copy made ahead instead of committing a btrfs snapshot of its own, and a fork's snapshot is
only that copy. What a user would notice if it went wrong: a copy that is not the snapshot
(or shares writes with it), a disk without its quota, leftovers that fill the pool.

The first tests use a real btrfs pool and no sandbox; the last one a real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import operator
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hutch import APIError, Sandbox
from hutch.runtime.container._cgroups import home_cgroup_parent, sandbox_cgroups
from hutch.runtime.container._errors import StorageError
from hutch.runtime.container._mounts import umount
from hutch.runtime.container._snapshots import DiskSnapshots
from hutch.runtime.container._storage import StoragePool
from tests._server import ServerProcess

pytestmark = pytest.mark.sandbox

MB = 1 << 20


@pytest.fixture()
def pool() -> Iterator[StoragePool]:
    home = Path(tempfile.mkdtemp(prefix="hutch-spares-", dir="/var/tmp"))
    storage = StoragePool(home, 1)
    asyncio.run(storage.ensure())
    try:
        yield storage
    finally:
        umount(storage.root)
        shutil.rmtree(home, ignore_errors=True)


def _disk(pool: StoragePool, name: str, text: str) -> Path:
    """A sandbox disk as the runtime makes one: upper/work/etc dirs, a file in upper."""
    path = pool.create(name, 64 * MB)
    for sub in ("upper", "work", "etc"):
        (path / sub).mkdir()
    (path / "upper" / "state").write_text(text)
    return path


def _spares(snaps: DiskSnapshots) -> list[str]:
    return sorted(p.name for p in snaps.spares.iterdir()) if snaps.spares.is_dir() else []


def test_a_create_takes_the_spare_and_gets_the_snapshot_with_its_own_quota(
    pool: StoragePool,
) -> None:
    snaps = DiskSnapshots(pool)
    source = _disk(pool, "src", "v1")
    snaps.take("src", "snap-a", spare=True)
    assert _spares(snaps) == ["snap-a"]
    (source / "upper" / "state").write_text("v2")  # after the snapshot: not in any copy

    copy = snaps.new_disk(snaps.path("snap-a"), "copy1", 8 * MB)
    assert _spares(snaps) == []  # taken over, not copied
    assert pool.exists("copy1")
    assert (copy / "upper" / "state").read_text() == "v1"
    (copy / "upper" / "state").write_text("mine")
    assert (snaps.path("snap-a") / "upper" / "state").read_text() == "v1"
    # The disk that was a spare has the limit asked for, like any other.
    with pytest.raises(OSError) as err:
        with open(copy / "upper" / "big", "wb") as f:
            for _ in range(16):
                f.write(os.urandom(MB))
                f.flush()
                os.fsync(f.fileno())
    assert err.value.errno == errno.EDQUOT

    snaps.refill("snap-a")  # what a create from it starts in a thread
    assert _spares(snaps) == ["snap-a"]
    again = snaps.new_disk(snaps.path("snap-a"), "copy2", 8 * MB)
    assert (again / "upper" / "state").read_text() == "v1"  # the snapshot, not copy1
    # No spare: the create copies the snapshot itself.
    third = snaps.new_disk(snaps.path("snap-a"), "copy3", 8 * MB)
    assert (third / "upper" / "state").read_text() == "v1"


def test_a_fork_keeps_no_snapshot_only_the_copies_its_creates_take(pool: StoragePool) -> None:
    snaps = DiskSnapshots(pool)
    source = _disk(pool, "src", "v1")
    snaps.fork("src", ["fork-a", "fork-b", "fork-c"])
    (source / "upper" / "state").write_text("v2")
    assert snaps.ids() == []  # nothing a backup or a move could send, nothing to delete
    assert all(snaps.available(i) for i in ("fork-a", "fork-b", "fork-c"))
    disks = [snaps.new_disk(snaps.path(f"fork-{i}"), f"child-{i}", 8 * MB) for i in "abc"]
    # Each child has its own copy of the disk as it was, whatever the others write.
    for n, disk in enumerate(disks):
        assert (disk / "upper" / "state").read_text() == "v1"
        (disk / "upper" / "state").write_text(f"child {n}")
    assert [(d / "upper" / "state").read_text() for d in disks] == ["child 0", "child 1", "child 2"]
    assert (source / "upper" / "state").read_text() == "v2"
    assert _spares(snaps) == [] and not snaps.available("fork-a")
    snaps.refill("fork-a")  # no snapshot to refill from
    assert _spares(snaps) == []
    assert snaps.delete("fork-a") is False  # its create has it; nothing else is left


def test_fork_copies_are_made_behind_their_creates_which_wait_only_for_the_disk(
    pool: StoragePool,
) -> None:
    async def fork() -> None:
        snaps = DiskSnapshots(pool)
        source = _disk(pool, "src", "v1")
        snaps.fork_later("src", ["fork-l", "fork-m"])
        assert snaps.available("fork-l") and snaps.committing(snaps.path("fork-l"))
        with pytest.raises(StorageError, match="exists"):  # checked before it starts
            snaps.fork_later("src", ["fork-n", "fork-l"])
        with pytest.raises(StorageError, match="no disk"):
            snaps.fork_later("gone", ["fork-o"])
        with pytest.raises(ValueError, match="distinct"):
            snaps.fork_later("src", ["fork-p", "fork-p"])
        assert not snaps.available("fork-n") and not snaps.available("fork-p")
        # The source writes while the copies are made: both children still get one moment.
        # Replaced whole (a copy taken mid-write could hold it truncated): v1 or v2, not "".
        (source / "upper" / "state.new").write_text("v2")
        (source / "upper" / "state.new").replace(source / "upper" / "state")
        children = []
        for copy_id in ("fork-l", "fork-m"):
            await snaps.settle(snaps.path(copy_id))
            assert not snaps.committing(snaps.path(copy_id))
            children.append(snaps.new_disk(snaps.path(copy_id), f"child-{copy_id}", 8 * MB))
        states = {(c / "upper" / "state").read_text() for c in children}
        assert len(states) == 1, states
        (children[0] / "upper" / "state").write_text("child")
        assert (children[1] / "upper" / "state").read_text() in ("v1", "v2")
        assert _spares(snaps) == [] and not snaps.available("fork-l")

        # A copy that fails (its name is taken by something that is no subvolume) fails
        # the create that waits for it; the other copy is made; nothing stays committing.
        (snaps.spares / "fork-x").write_text("in the way")
        snaps.fork_later("src", ["fork-x", "fork-y"])
        with pytest.raises(StorageError, match="cannot snapshot"):
            await snaps.settle(snaps.path("fork-x"))
        await snaps.settle(snaps.path("fork-y"))
        assert not snaps.committing(snaps.path("fork-x"))
        await snaps.settle(snaps.path("fork-x"))  # settled already: nothing to wait for
        assert snaps.delete("fork-y") is True
        assert _spares(snaps) == ["fork-x"]  # the file in the way, not a copy
        assert sorted(pool.names()) == ["child-fork-l", "child-fork-m", "src"]

        # The copies' dir cannot be made (a file in its place): a StorageError for the
        # creates, as for any other copy that fails (a NotADirectoryError was a 500).
        for name in _spares(snaps):
            (snaps.spares / name).unlink()
        snaps.spares.rmdir()
        snaps.spares.write_text("in the way")
        snaps.fork_later("src", ["fork-z"])
        with pytest.raises(StorageError, match="copies' dir"):
            await snaps.settle(snaps.path("fork-z"))
        assert not snaps.committing(snaps.path("fork-z"))

    asyncio.run(fork())


# Run in a process of its own: with the pool frozen, a btrfs snapshot (made in a thread, as
# a fork's copy is) waits inside its ioctl; the event loop must see it waiting there, i.e.
# run meanwhile, and then thaw the pool. A snapshot that held the GIL would stop the loop.
_LOOP_WHILE_A_SNAPSHOT_WAITS = """
import asyncio, fcntl, os, platform, sys
from pathlib import Path
from hutch.runtime.container._snapshots import snapshot_subvolume

FIFREEZE, FITHAW = 0xC0045877, 0xC0045878
IOCTL = {"x86_64": "16", "aarch64": "29"}[platform.machine()]

def a_thread_in_ioctl() -> bool:
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/syscall") as f:
            if f.read().split()[0] == IOCTL:
                return True
    return False

async def main() -> None:
    root = Path(sys.argv[1])
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.ioctl(fd, FIFREEZE, 0)
    try:
        copy = asyncio.ensure_future(
            asyncio.to_thread(snapshot_subvolume, root / "src", root, "copy", read_only=False)
        )
        while not a_thread_in_ioctl():
            await asyncio.sleep(0.001)
    finally:
        fcntl.ioctl(fd, FITHAW, 0)
    await copy
    print((root / "copy" / "upper" / "state").read_text())

asyncio.run(main())
"""


def test_a_snapshot_waiting_for_the_pool_does_not_stop_the_event_loop(pool: StoragePool) -> None:
    # What a user noticed: every fork or snapshot froze the whole server (every request,
    # the fork's own child create too) for as long as its btrfs commit took.
    _disk(pool, "src", "v1")
    proc = subprocess.Popen(
        [sys.executable, "-c", _LOOP_WHILE_A_SNAPSHOT_WAITS, str(pool.root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        # The loop never ran: thaw the pool from here, or the process cannot even be killed.
        fd = os.open(pool.root, os.O_RDONLY | os.O_DIRECTORY)
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, 0xC0045878, 0)  # FITHAW
        os.close(fd)
        proc.kill()
        proc.communicate()
        pytest.fail("the event loop stopped while a snapshot waited for the pool")
    assert proc.returncode == 0, err
    assert out == "v1\n"
    assert pool.exists("copy")


def test_a_fork_copy_sent_to_another_node_is_made_read_only_and_deleted_whole(
    pool: StoragePool,
) -> None:
    async def send() -> None:
        snaps = DiskSnapshots(pool)
        source = _disk(pool, "src", "v1")
        snaps.fork_later("src", ["fork-s", "fork-t"])
        # Replaced whole (a copy taken mid-write could hold it truncated): v1 or v2, not "".
        (source / "upper" / "state.new").write_text("v2")
        (source / "upper" / "state.new").replace(source / "upper" / "state")
        # Asked while it is still being made: waits for it, then a read-only snapshot of it
        # (what `btrfs send` needs) of the copy as it was made.
        path = await snaps.sendable("fork-s")
        assert path == snaps.spares / "fork-s.sent"
        with pytest.raises(OSError) as err:
            (path / "upper" / "state").write_text("changed")
        assert err.value.errno == errno.EROFS
        assert (path / "upper" / "state").read_text() in ("v1", "v2")
        assert await snaps.sendable("fork-s") == path  # again (a retry): the same one
        assert snaps.ids() == []  # no snapshot a backup or a restore could use
        with pytest.raises(StorageError, match="no snapshot"):
            await snaps.sendable("fork-none")
        # The fork's cleanup removes the copy and what was made to send it.
        assert snaps.delete("fork-s") is True
        assert not snaps.available("fork-s")
        assert _spares(snaps) == ["fork-t"]
        # One a crash left (its fork never cleaned up) goes at the next start.
        await snaps.sendable("fork-t")
        assert sorted(snaps.sweep_spares()) == ["fork-t", "fork-t.sent"]
        assert _spares(snaps) == []

    asyncio.run(send())


def test_delete_and_the_sweep_leave_no_spare_behind(pool: StoragePool) -> None:
    snaps = DiskSnapshots(pool)
    _disk(pool, "src", "v1")
    snaps.take("src", "snap-d", spare=True)
    assert snaps.delete("snap-d") is True
    assert _spares(snaps) == [] and snaps.ids() == []
    snaps.refill("snap-d")  # a refill that comes after the delete makes nothing
    assert _spares(snaps) == []

    # After a crash: a fork's spare whose create never ran, and a refill cut short.
    snaps.take("src", "snap-k", spare=True)
    snaps.fork("src", ["snap-orphan"])
    os.rename(snaps.spares / "snap-k", snaps.spares / "snap-k.1234abcd")
    assert sorted(snaps.sweep_spares()) == ["snap-k.1234abcd", "snap-orphan"]
    assert _spares(snaps) == [] and snaps.ids() == ["snap-k"]
    assert pool.names() == ["src"]


def test_fork_and_creates_from_a_snapshot_through_the_server(
    server: ServerProcess, busybox_image: str
) -> None:
    opts = {"base_url": server.url, "api_key": server.api_key}
    spares = server.home / "storage" / ".spares"
    sb = Sandbox.create(image=busybox_image, **opts)
    made = [sb]
    try:
        sb.exec("echo v1 > /state")
        snap = sb.snapshot()
        sb.exec("echo v2 > /state")
        # Two creates in a row: the first takes the spare, the second may find none yet.
        for _ in range(2):
            copy = Sandbox.create(snapshot=snap.id, **opts)
            made.append(copy)
            assert copy.exec("cat /state").stdout == "v1\n"
            copy.exec("echo mine > /state")
        # Remade once the creates have their containers: the next create finds one.
        assert _settle(spares, until=lambda names: names == [snap.id]), "no spare remade"
        assert (spares / snap.id / "upper" / "state").read_text() == "v1\n"
        [child] = sb.fork(1)
        made.append(child)
        assert child.exec("cat /state").stdout == "v2\n"
        child.exec("echo child > /state")
        assert sb.exec("cat /state").stdout == "v2\n"
        # A fork writes no snapshot row of its own.
        assert [s.id for s in Sandbox.list_snapshots(**opts)] == [snap.id]
        Sandbox.delete_snapshot(snap.id, **opts)
        # The fork's copy became its disk; the snapshot's spare went with it.
        assert _settle(spares), f"spares left: {sorted(p.name for p in spares.iterdir())}"
    finally:
        for s in made:
            s.destroy()


def test_a_fork_racing_the_destroy_of_its_source_leaves_nothing_behind(
    server: ServerProcess, busybox_image: str
) -> None:
    """The fork's commit no longer holds its source's lock: a destroy may come while it runs.
    Either the fork fails with an API error or its child has the source's disk; no spare,
    subvolume or sandbox is left over either way."""
    opts = {"base_url": server.url, "api_key": server.api_key}
    storage = server.home / "storage"
    for _ in range(3):
        sb = Sandbox.create(image=busybox_image, **opts)
        sb.exec("echo v1 > /state")
        with ThreadPoolExecutor(1) as pool:
            forking = pool.submit(sb.fork, 1)
            sb.destroy()
            try:
                [child] = forking.result()
            except APIError as e:
                assert e.status < 500 or e.code == "sandbox_start_failed", e
            else:
                assert child.exec("cat /state").stdout == "v1\n"
                child.destroy()
        left = {s.id for s in Sandbox.list(**opts)}
        assert _settle(storage / ".spares"), "a fork's spare was left"
        assert {p.name for p in storage.iterdir() if not p.name.startswith(".")} == left


def test_a_fork_whose_copy_fails_leaves_nothing_behind(
    server: ServerProcess, busybox_image: str
) -> None:
    """A copy that fails (here: the spares dir made immutable) fails the fork with an API
    error; no subvolume, bundle dir or cgroup of the child is left, and the source runs on
    and forks."""
    opts = {"base_url": server.url, "api_key": server.api_key}
    storage, spares = server.home / "storage", server.home / "storage" / ".spares"

    def left() -> dict[str, set[str]]:
        cgroup_parents = sandbox_cgroups(home_cgroup_parent(server.home))
        assert cgroup_parents
        return {
            "subvolumes": {p.name for p in storage.iterdir() if not p.name.startswith(".")},
            "bundles": {p.name for p in (server.home / "sandboxes").iterdir()},
            "cgroups": {p.name for d in cgroup_parents for p in d.iterdir() if p.is_dir()},
        }

    sb = Sandbox.create(image=busybox_image, **opts)
    try:
        sb.exec("echo v1 > /state")
        before = left()
        spares.mkdir(mode=0o700, exist_ok=True)
        subprocess.run(["chattr", "+i", str(spares)], check=True)
        try:
            with pytest.raises(APIError) as err:
                sb.fork(1)
        finally:
            subprocess.run(["chattr", "-i", str(spares)], check=True)
        assert err.value.code == "sandbox_start_failed", err.value
        assert left() == before
        assert list(spares.iterdir()) == []
        assert {s.id for s in Sandbox.list(**opts)} >= {sb.id}
        [child] = sb.fork(1)
        assert child.exec("cat /state").stdout == "v1\n"
        child.destroy()
    finally:
        sb.destroy()


def test_fork_of_several_leaves_nothing_and_past_a_quota_makes_nothing(
    server: ServerProcess, busybox_image: str
) -> None:
    """fork(3): each child has the source's disk as it was and its own processes, not the
    source's; no snapshot (row or subvolume) and no copy is left. A fork past the team's
    quota of running sandboxes fails whole: no child, subvolume or copy is left either."""
    opts = {"base_url": server.url, "api_key": server.api_key}
    storage = server.home / "storage"

    def subvolumes() -> set[str]:
        return {p.name for p in storage.iterdir() if not p.name.startswith(".")}

    def held() -> set[str]:
        return {str(p) for d in (".spares", ".snapshots") for p in (storage / d).glob("*")}

    # The server is shared: what other tests keep (a backup's base snapshot) is not a leftover.
    before = held()

    def leftovers() -> list[str]:
        return sorted(held() - before)

    sb = Sandbox.create(image=busybox_image, **opts)
    made = [sb]
    try:
        sb.exec("echo v1 > /state")
        sb.start_process("sleep 1001")
        assert "sleep 1001" in sb.exec("ps").stdout
        children = sb.fork(3)
        made += children
        assert len({c.id for c in children} | {sb.id}) == 4
        for child in children:
            assert child.exec("cat /state").stdout == "v1\n"
            assert "sleep 1001" not in child.exec("ps").stdout
            assert child.list_processes() == []
            child.exec(f"echo {child.id} > /state")
        assert [c.exec("cat /state").stdout for c in children] == [f"{c.id}\n" for c in children]
        assert sb.exec("cat /state").stdout == "v1\n"
        assert Sandbox.list_snapshots(**opts) == []
        assert leftovers() == []
        assert subvolumes() == {s.id for s in made}
        for child in children:
            child.destroy()
        made = [sb]

        with server.client() as admin:
            team = admin.post("/v1/teams", json={"name": "t-forks", "quota": {"max_running": 3}})
            assert team.status_code == 201, team.text
            key = admin.post("/v1/keys", json={"name": "forks", "team": "t-forks"}).json()["key"]
        member = {"base_url": server.url, "api_key": key}
        mine = Sandbox.create(image=busybox_image, **member)
        made.append(mine)
        mine.exec("echo mine > /state")
        with pytest.raises(APIError) as refused:
            mine.fork(3)  # 1 + 3 > 3
        assert refused.value.status == 429 and refused.value.code == "quota_exceeded"
        assert [s.id for s in Sandbox.list(**member)] == [mine.id]
        assert _settle(storage / ".spares"), f"copies left: {leftovers()}"
        assert leftovers() == [] and subvolumes() == {sb.id, mine.id}
        [child] = mine.fork(1)  # within the quota: it works
        made.append(child)
        assert child.exec("cat /state").stdout == "mine\n"
    finally:
        for s in made:
            s.destroy()


def _settle(spares: Path, until: Callable[[list[str]], bool] = operator.not_) -> bool:
    """Whether the spares dir comes to hold what `until` wants (by default: nothing), as
    refills running in threads finish."""
    for _ in range(100):
        if until(sorted(p.name for p in spares.iterdir())):
            return True
        time.sleep(0.05)
    return False


def test_a_node_start_removes_only_moves_snapshots_older_than_any_move(pool: StoragePool) -> None:
    from hutch.server._node_daemon import stale_move_snapshots
    from hutch.server.services._moves import MOVE_SNAPSHOT_LEFT_AFTER

    snaps = DiskSnapshots(pool)
    _disk(pool, "src", "v1")
    before = time.time()
    for snapshot_id in ("mv-left", "snap-user", "fork-copy"):
        snaps.take("src", snapshot_id)
    # When it was taken, not when its disk was made (a snapshot copies its disk's inode times).
    assert before - 1 <= snaps.made_at("mv-left") <= time.time() + 1
    # A move may still pull it or make its container from it: kept.
    assert stale_move_snapshots(snaps, time.time()) == []
    # Older than any move runs: its move is over (its replica died, or this node was away
    # when the move deleted it). Only a move's: a user's snapshot and a fork's copy stay.
    later = snaps.made_at("mv-left") + MOVE_SNAPSHOT_LEFT_AFTER + 1
    assert stale_move_snapshots(snaps, later) == ["mv-left"]
    with pytest.raises(StorageError):
        snaps.made_at("mv-none")
