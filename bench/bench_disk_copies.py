"""The disk step of a create, each kind next to a new empty disk (a cold create's) in the same
run, on a btrfs pool of its own (no sandbox, no server):

    sudo .venv/bin/python bench/bench_disk_copies.py [--n 50]

- new empty disk                   a cold create's: subvolume + quota + overlay dirs (baseline)
- snapshot, and snapshot + spare   what `sb.snapshot()` costs (a btrfs commit each)
- copy of a snapshot               a create from a snapshot with no spare ready (a commit)
- take the spare                   a create from a snapshot with its spare (a rename)
- fork's copy                      what a fork(1) costs before its create (one commit)
- fork(10)'s copies, per copy      one commit of the disk, nine of that copy

A btrfs snapshot commits a transaction; a new subvolume or a rename does not. The load
average is printed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stats import loadavg, report
from hutch.runtime.container._mounts import umount
from hutch.runtime.container._snapshots import DiskSnapshots, disk_from
from hutch.runtime.container._storage import StoragePool

LIMIT = 1 << 30


def timed(samples: list[float], action: Callable[[], object]) -> None:
    started = time.perf_counter()
    action()
    samples.append(time.perf_counter() - started)


def empty_disk(pool: StoragePool, name: str) -> None:
    path = pool.create(name, LIMIT)
    for sub in ("upper", "work", "etc"):
        (path / sub).mkdir()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="hutch-bench-disks-", dir="/var/tmp"))
    pool = StoragePool(home, 4)
    asyncio.run(pool.ensure())
    snaps = DiskSnapshots(pool)
    rows: dict[str, list[float]] = {
        "baseline: new empty disk (cold create)": [],
        "snapshot (read-only)": [],
        "snapshot + spare (sb.snapshot())": [],
        "copy of a snapshot (no spare)": [],
        "take the spare (create from snapshot)": [],
        "fork's copy": [],
        "take the fork's copy (its create)": [],
        "fork(10)'s copies, per copy": [],
    }
    r = list(rows.values())
    print(f"load average before: {loadavg()}")
    try:
        empty_disk(pool, "src")
        source = pool.path("src") / "upper"
        (source / "blob").write_bytes(os.urandom(1 << 20))
        for i in range(args.n):
            # A sandbox writes between snapshots: each commit has something to flush.
            (source / "state").write_text(str(i))
            timed(r[0], partial(empty_disk, pool, f"cold{i}"))
            timed(r[1], partial(snaps.take, "src", f"ro{i}"))
            timed(r[2], partial(snaps.take, "src", f"sp{i}", spare=True))
            timed(r[3], partial(disk_from, snaps.path(f"ro{i}"), pool, f"copy{i}", LIMIT))
            timed(r[4], partial(snaps.new_disk, snaps.path(f"sp{i}"), f"claim{i}", LIMIT))
            (source / "state").write_text(f"{i}.")
            timed(r[5], partial(snaps.fork, "src", [f"fk{i}"]))
            timed(r[6], partial(snaps.new_disk, snaps.path(f"fk{i}"), f"fork{i}", LIMIT))
            ten = [f"fk{i}-{j}" for j in range(10)]
            timed(r[7], partial(snaps.fork, "src", ten))
            r[7][-1] /= len(ten)
            for name in (f"cold{i}", f"copy{i}", f"claim{i}", f"fork{i}"):
                pool.delete(name)
            for copy_id in ten:
                snaps.delete(copy_id)
            for snapshot_id in (f"ro{i}", f"sp{i}", f"fk{i}"):
                snaps.delete(snapshot_id)
    finally:
        for snapshot_id in snaps.ids():
            snaps.delete(snapshot_id)
        umount(pool.root)
        shutil.rmtree(home, ignore_errors=True)
    print(f"load average after:  {loadavg()}")
    print(f"n={args.n} (each row interleaved with the baseline)")
    for name, samples in rows.items():
        print(report(name, samples))


if __name__ == "__main__":
    main()
