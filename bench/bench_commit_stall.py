"""Exec round trips of one sandbox while another is snapshotted (or forked) again and again,
next to the same sandbox's execs with nothing else going on:

    .venv/bin/python bench/bench_commit_stall.py [--other /work/main/.venv/bin/python]
        [--op snapshot|fork] [--rounds 4] [--seconds 8] [--image default]

What a user of one sandbox notices of another user's snapshots or forks: each commits the
storage pool (a snapshot two: its own and its spare's). Each round, per build: `--seconds`
of `probe.exec("true")` in a loop alone, then as long again while the main thread snapshots
a second sandbox (1 MiB on its disk) and deletes the snapshot (`--op fork`: forks it and
destroys the child), in a loop. `--other` starts that interpreter's build's server
too and alternates the builds each round (A B, B A, ...); the client is this checkout's SDK.
The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tests._server as bench_server
from bench._stats import loadavg, report
from hutch import Sandbox
from tests._server import ServerProcess


@dataclass
class Side:
    name: str
    server: ServerProcess
    probe: Sandbox
    source: Sandbox
    alone: list[float] = field(default_factory=list)
    forking: list[float] = field(default_factory=list)
    ops: int = 0


def execs_for(probe: Sandbox, seconds: float, into: list[float]) -> None:
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        started = time.perf_counter()
        probe.exec("true")
        into.append(time.perf_counter() - started)


def one_round(side: Side, seconds: float, op: str) -> None:
    execs_for(side.probe, seconds, side.alone)
    done = threading.Event()
    probing = threading.Thread(
        target=lambda: (execs_for(side.probe, seconds, side.forking), done.set())
    )
    probing.start()
    opts = {"base_url": side.server.url, "api_key": side.server.api_key}
    while not done.is_set():
        if op == "fork":
            [child] = side.source.fork(1)
            child.destroy()
        else:
            Sandbox.delete_snapshot(side.source.snapshot().id, **opts)
        side.ops += 1
    probing.join()


def start_side(name: str, python: Path, image: str) -> Side:
    bench_server.HUTCH_BIN = python.with_name("hutch")  # read by ServerProcess.start
    home = Path(tempfile.mkdtemp(prefix=f"hutch-bench-stall-{name}-", dir="/var/tmp"))
    server = ServerProcess(home)
    server.start(timeout=300)
    opts = {"base_url": server.url, "api_key": server.api_key, "image": image, "timeout": 0}
    probe = Sandbox.create(**opts)
    source = Sandbox.create(**opts)
    source.exec("mkdir -p /data && head -c 1048576 /dev/urandom > /data/blob")
    for _ in range(20):
        probe.exec("true")  # connections made, first-call costs paid
    return Side(name, server, probe, source)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--image", default="default")
    parser.add_argument("--op", choices=("snapshot", "fork"), default="snapshot")
    parser.add_argument("--other", type=Path, help="another build's python, measured in turns")
    args = parser.parse_args()
    builds = [("this", Path(sys.executable))]
    if args.other is not None:
        builds.append(("other", args.other))
    sides: list[Side] = []
    print(f"load average before: {loadavg()}")
    try:
        for name, python in builds:
            sides.append(start_side(name, python, args.image))
        for turn in range(args.rounds):
            for side in sides if turn % 2 == 0 else sides[::-1]:
                one_round(side, args.seconds, args.op)
    finally:
        for side in sides:
            side.server.stop()
        print(f"load average after:  {loadavg()}")
        print(f"image={args.image} op={args.op} rounds={args.rounds} seconds={args.seconds}")
        for side in sides:
            print(
                report(f"{side.name}: exec alone", side.alone),
                f"max={max(side.alone) * 1e3:.1f} ms",
            )
            print(
                report(f"{side.name}: exec meanwhile ({args.op})", side.forking),
                f"max={max(side.forking) * 1e3:.1f} ms {args.op}s={side.ops}",
            )
        from tests.conftest import _cleanup_home

        for side in sides:
            _cleanup_home(side.server)


if __name__ == "__main__":
    main()
