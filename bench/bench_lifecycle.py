"""Lifecycle figures through a real server and the SDK, each next to a cold create in the same
run (interleaved, so load changes hit both):

    sudo .venv/bin/python bench/bench_lifecycle.py [--n 20] [--image busybox]

- cold create -> first exec          (the baseline)
- pause -> resume -> first exec      (cgroup freezer)
- stop -> start -> first exec        (container again on the kept disk; agent boots)
- snapshot                           (btrfs snapshot of the disk + a row)
- create from a snapshot -> first exec, and fork(1) -> first exec

The load average is printed before and after: figures from a busy machine are not comparable
with figures from a quiet one. `--stages` also prints where each kind of create spends its
time (the server's and the runtime's steps, logged at HUTCH_LOG_LEVEL=debug).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stats import loadavg, percentile, report
from hutch import Sandbox
from tests._server import ServerProcess

T = TypeVar("T")


def timed(samples: list[float], action: Callable[[], T]) -> T:
    started = time.perf_counter()
    result = action()
    samples.append(time.perf_counter() - started)
    return result


def create_and_exec(made: list[Sandbox], opts: dict[str, Any]) -> Sandbox:
    sb = Sandbox.create(**opts)
    made.append(sb)
    sb.exec("true")
    return sb


def stop_start_exec(sb: Sandbox) -> None:
    sb.stop()
    sb.start()
    sb.exec("true")


def fork_and_exec(made: list[Sandbox], base: Sandbox) -> Sandbox:
    [child] = base.fork(1)
    made.append(child)
    child.exec("true")
    return child


def create_stages(log: Path, kinds: dict[str, str]) -> dict[str, dict[str, list[float]]]:
    """Per kind of create (cold, snapshot, fork): the server's steps (`created sandbox`) and
    the runtime's (`started sandbox`), as the debug log has them."""
    stages: dict[str, dict[str, list[float]]] = {}
    seen: set[tuple[str, str]] = set()
    for line in log.read_text(errors="replace").splitlines():
        found = re.search(r"(created|started) sandbox (\S+): (.*)$", line)
        if not found or found.group(2) not in kinds or found.group(1, 2) in seen:
            continue  # NB: a sandbox's later starts (stop -> start) are not its create
        seen.add(found.group(1, 2))
        who = "server" if found.group(1) == "created" else "runtime"
        rows = stages.setdefault(kinds[found.group(2)], {})
        for name, ms in re.findall(r"(\w+)=([\d.]+)ms", found.group(3)):
            rows.setdefault(f"{who} {name}", []).append(float(ms) / 1e3)
    return stages


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--image", default="busybox", help="busybox (added if missing) or default")
    parser.add_argument("--stages", action="store_true", help="print each create's steps too")
    args = parser.parse_args()
    if args.stages:
        os.environ["HUTCH_LOG_LEVEL"] = "debug"  # the server logs its steps at debug
    if args.image == "busybox":
        from hutch.runtime import ImageStore
        from tests._server import SHARED_IMAGES
        from tests.support.busybox import add_busybox_image

        add_busybox_image(ImageStore(SHARED_IMAGES), name="busybox")

    srv = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-bench-lc-", dir="/var/tmp")))
    opts: dict[str, Any] = {
        "base_url": srv.url,
        "api_key": srv.api_key,
        "image": args.image,
        "timeout": 0,
    }
    cold: list[float] = []
    pause_resume: list[float] = []
    pause_only: list[float] = []
    stop_start: list[float] = []
    snapshot: list[float] = []
    from_snapshot: list[float] = []
    fork: list[float] = []
    kinds: dict[str, str] = {}
    stages: dict[str, dict[str, list[float]]] = {}
    print(f"load average before: {loadavg()}")
    try:
        srv.start(timeout=300)  # NB: inside the try: a start that times out is cleaned up too
        base = Sandbox.create(**opts)
        base.exec("mkdir -p /data && head -c 1048576 /dev/urandom > /data/blob")
        for _ in range(args.n):
            made: list[Sandbox] = []
            # Cold create -> first exec: the baseline, measured in the same loop.
            sb = timed(cold, partial(create_and_exec, made, opts))
            kinds[sb.id] = "cold"
            timed(pause_only, sb.pause)
            t0 = time.perf_counter()
            sb.resume()
            sb.exec("true")
            pause_resume.append(pause_only[-1] + time.perf_counter() - t0)
            timed(stop_start, partial(stop_start_exec, sb))
            snap = timed(snapshot, base.snapshot)
            copy_opts = {"base_url": srv.url, "api_key": srv.api_key, "timeout": 0}
            copy = timed(
                from_snapshot, partial(create_and_exec, made, {**copy_opts, "snapshot": snap.id})
            )
            kinds[copy.id] = "snapshot"
            Sandbox.delete_snapshot(snap.id, base_url=srv.url, api_key=srv.api_key)
            kinds[timed(fork, partial(fork_and_exec, made, base)).id] = "fork"
            for s in made:
                s.destroy()
        base.destroy()
    finally:
        srv.stop()
        if args.stages:
            stages = create_stages(srv.log_path, kinds)
        from tests.conftest import _cleanup_home

        _cleanup_home(srv)
    print(f"load average after:  {loadavg()}")
    print(f"image={args.image} n={args.n} (each row interleaved with the cold-create baseline)")
    print(report("baseline: cold create -> first exec", cold))
    print(report("pause (alone)", pause_only))
    print(report("pause -> resume -> first exec", pause_resume))
    print(report("stop -> start -> first exec", stop_start))
    print(report("snapshot (1 MiB+ disk)", snapshot))
    print(report("create from snapshot -> first exec", from_snapshot))
    print(report("fork(1) -> first exec", fork))
    for name, samples in (("create from snapshot", from_snapshot), ("fork(1)", fork)):
        print(f"{name} / cold create, p50: {percentile(samples, 50) / percentile(cold, 50):.3f}")
    for kind, rows in stages.items():
        for name, samples in rows.items():
            print(report(f"  {kind} create: {name}", samples))


if __name__ == "__main__":
    main()
