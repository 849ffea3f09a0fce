"""fork(n) next to n cold creates made at once, in the same run (interleaved, so load changes
hit both), through a real server and the SDK:

    sudo .venv/bin/python bench/bench_fork.py [--rounds 5] [--counts 1,5,10] [--image default]

For each n: the wall time until all n sandboxes have answered a first exec, per sandbox
(wall / n), for n cold creates at once (threads, one create each: the baseline) and for one
`fork(n)` of a sandbox with a 1 MiB file on its disk. A host starts only a few sandboxes at
once (services/_cold_starts.py), so both queue the same way. The load average is printed
before and after. `--stages` also prints each fork's own steps (the server's `forked
sandbox` debug line) and the steps of its children's creates next to the cold ones', with
each kind's `before runc` (the server's and runtime's steps before runc starts, summed per
sandbox: where a fork's child waits for its copy's commit).

`--other /work/main/.venv/bin/python` also starts the server of that interpreter's build (its
own home) and runs every round on both servers, in turns (A B, then B A, ...), so the load of
any minute falls on both builds; each build's figures and ratio are printed. The client (the
SDK) is this checkout's for both.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tests._server as bench_server
from bench._stats import percentile, report
from hutch import Sandbox
from tests._server import ServerProcess


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def cold_creates(pool: ThreadPoolExecutor, n: int, opts: dict[str, Any]) -> list[Sandbox]:
    def one(_: int) -> Sandbox:
        sb = Sandbox.create(**opts)
        sb.exec("true")
        return sb

    return list(pool.map(one, range(n)))


def fork_children(pool: ThreadPoolExecutor, base: Sandbox, n: int) -> list[Sandbox]:
    children = base.fork(n)
    list(pool.map(lambda sb: sb.exec("true"), children))
    return children


def fork_stages(log: Path) -> dict[str, list[float]]:
    """The fork's own steps, from the server's debug lines `forked sandbox … : step=…ms`."""
    rows: dict[str, list[float]] = {}
    for line in log.read_text(errors="replace").splitlines():
        found = re.search(r"forked sandbox \S+ \((\d+)\): (.*)$", line)
        if found:
            for name, ms in re.findall(r"(\w+)=([\d.]+)ms", found.group(2)):
                rows.setdefault(f"fork({found.group(1)}): {name}", []).append(float(ms) / 1e3)
    return rows


# The steps after runc starts (the container, the agent, the network), which the rest wait on.
AFTER_RUNC = {"runc", "network_attach", "network", "host_create", "connect", "ping_network"}
AFTER_RUNC |= {"running", "egress", "entrypoint"}


def create_stages(log: Path, kinds: dict[str, str]) -> dict[str, list[float]]:
    """Each kind's create steps (server and runtime), as bench_lifecycle reads them, and
    `before runc`: per sandbox, the sum of the server's and the runtime's steps before runc
    starts (where a fork's child waits for its copy's commit; a fork's own lock and disks
    steps come before it)."""
    rows: dict[str, list[float]] = {}
    before: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        found = re.search(r"(created|started) sandbox (\S+): (.*)$", line)
        if not found or found.group(2) not in kinds:
            continue
        who = "server" if found.group(1) == "created" else "runtime"
        for name, ms in re.findall(r"(\w+)=([\d.]+)ms", found.group(3)):
            rows.setdefault(f"{kinds[found.group(2)]}: {who} {name}", []).append(float(ms) / 1e3)
            if name not in AFTER_RUNC:
                before[found.group(2)] = before.get(found.group(2), 0.0) + float(ms) / 1e3
    for sandbox_id, seconds in before.items():
        rows.setdefault(f"{kinds[sandbox_id]}: before runc", []).append(seconds)
    return rows


@dataclass
class Side:
    """One build's server and what was measured on it."""

    name: str
    server: ServerProcess
    counts: list[int]
    # Per n: seconds per sandbox (wall / n) of each try.
    cold: dict[int, list[float]] = field(default_factory=dict)
    fork: dict[int, list[float]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    base: Sandbox | None = None

    def opts(self, image: str) -> dict[str, Any]:
        return {
            "base_url": self.server.url,
            "api_key": self.server.api_key,
            "image": image,
            "timeout": 0,
        }

    def one_round(self, pool: ThreadPoolExecutor, image: str) -> None:
        if self.base is None:
            self.base = Sandbox.create(**self.opts(image))
            self.base.exec("mkdir -p /data && head -c 1048576 /dev/urandom > /data/blob")
        for n in self.counts:
            started = time.perf_counter()
            made = cold_creates(pool, n, self.opts(image))
            self.cold.setdefault(n, []).append((time.perf_counter() - started) / n)
            self.kinds.update((sb.id, f"cold (n={n})") for sb in made)
            list(pool.map(lambda sb: sb.destroy(), made))
            started = time.perf_counter()
            made = fork_children(pool, self.base, n)
            self.fork.setdefault(n, []).append((time.perf_counter() - started) / n)
            self.kinds.update((sb.id, f"fork({n}) child") for sb in made)
            list(pool.map(lambda sb: sb.destroy(), made))

    def print_figures(self, stages: bool) -> None:
        for n in self.counts:
            print(report(f"{self.name}: {n} cold creates at once, each", self.cold[n]))
            print(report(f"{self.name}: fork({n}), each child", self.fork[n]))
            ratio = percentile(self.fork[n], 50) / percentile(self.cold[n], 50)
            print(f"{self.name}: fork({n}) / {n} cold creates, p50 per sandbox: {ratio:.3f}")
        if stages:
            log = self.server.log_path
            found = {**fork_stages(log), **create_stages(log, self.kinds)}
            for name in sorted(found):
                print(report(f"  {self.name}: {name}", found[name]))


def start_side(name: str, python: Path, counts: list[int]) -> Side:
    bench_server.HUTCH_BIN = python.with_name("hutch")  # read by ServerProcess.start
    home = Path(tempfile.mkdtemp(prefix=f"hutch-bench-fork-{name}-", dir="/var/tmp"))
    side = Side(name, ServerProcess(home), counts)
    side.server.start(timeout=300)
    return side


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--counts", default="1,5,10")
    parser.add_argument("--image", default="default")
    parser.add_argument("--stages", action="store_true", help="print the steps too")
    parser.add_argument("--other", type=Path, help="another build's python, measured in turns")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    if args.stages:
        os.environ["HUTCH_LOG_LEVEL"] = "debug"
    pool = ThreadPoolExecutor(max(counts))
    builds = [("this", Path(sys.executable))]
    if args.other is not None:
        builds.append(("other", args.other))
    sides: list[Side] = []
    print(f"load average before: {loadavg()}")
    try:
        for name, python in builds:
            sides.append(start_side(name, python, counts))
        for turn in range(args.rounds):
            # A B, B A, ...: neither build always goes first after the other's destroys.
            for side in sides if turn % 2 == 0 else sides[::-1]:
                side.one_round(pool, args.image)
        for side in sides:
            if side.base is not None:
                side.base.destroy()
    finally:
        for side in sides:
            side.server.stop()
        print(f"load average after:  {loadavg()}")
        print(f"image={args.image} rounds={args.rounds} (per sandbox: wall time / n; interleaved)")
        for side in sides:
            if side.cold:
                side.print_figures(args.stages)
        from tests.conftest import _cleanup_home

        for side in sides:
            _cleanup_home(side.server)
        pool.shutdown()


if __name__ == "__main__":
    main()
