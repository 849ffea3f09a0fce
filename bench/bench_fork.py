"""fork(n) next to n cold creates made at once, in the same run (interleaved, so load changes
hit both), through a real server and the SDK:

    sudo .venv/bin/python bench/bench_fork.py [--rounds 5] [--counts 1,5,10] [--image default]

For each n: the wall time until all n sandboxes have answered a first exec, per sandbox
(wall / n), for n cold creates at once (threads, one create each: the baseline) and for one
`fork(n)` of a sandbox with a 1 MiB file on its disk. A host starts only a few sandboxes at
once (services/_cold_starts.py), so both queue the same way. The load average is printed
before and after. `--stages` also prints each fork's own steps (the server's `forked
sandbox` debug line) and the steps of its children's creates next to the cold ones'.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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


def create_stages(log: Path, kinds: dict[str, str]) -> dict[str, list[float]]:
    """Each kind's create steps (server and runtime), as bench_lifecycle reads them."""
    rows: dict[str, list[float]] = {}
    for line in log.read_text(errors="replace").splitlines():
        found = re.search(r"(created|started) sandbox (\S+): (.*)$", line)
        if not found or found.group(2) not in kinds:
            continue
        who = "server" if found.group(1) == "created" else "runtime"
        for name, ms in re.findall(r"(\w+)=([\d.]+)ms", found.group(3)):
            rows.setdefault(f"{kinds[found.group(2)]}: {who} {name}", []).append(float(ms) / 1e3)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--counts", default="1,5,10")
    parser.add_argument("--image", default="default")
    parser.add_argument("--stages", action="store_true", help="print the steps too")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    if args.stages:
        os.environ["HUTCH_LOG_LEVEL"] = "debug"
    srv = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-bench-fork-", dir="/var/tmp")))
    opts: dict[str, Any] = {
        "base_url": srv.url,
        "api_key": srv.api_key,
        "image": args.image,
        "timeout": 0,
    }
    # Per n: seconds per sandbox (wall / n) of each try.
    cold: dict[int, list[float]] = {n: [] for n in counts}
    fork: dict[int, list[float]] = {n: [] for n in counts}
    kinds: dict[str, str] = {}
    pool = ThreadPoolExecutor(max(counts))
    print(f"load average before: {loadavg()}")
    try:
        srv.start(timeout=300)
        base = Sandbox.create(**opts)
        base.exec("mkdir -p /data && head -c 1048576 /dev/urandom > /data/blob")
        for _ in range(args.rounds):
            for n in counts:
                started = time.perf_counter()
                made = cold_creates(pool, n, opts)
                cold[n].append((time.perf_counter() - started) / n)
                kinds.update((sb.id, f"cold (n={n})") for sb in made)
                list(pool.map(lambda sb: sb.destroy(), made))
                started = time.perf_counter()
                made = fork_children(pool, base, n)
                fork[n].append((time.perf_counter() - started) / n)
                kinds.update((sb.id, f"fork({n}) child") for sb in made)
                list(pool.map(lambda sb: sb.destroy(), made))
        base.destroy()
    finally:
        srv.stop()
        stages = {}
        if args.stages:
            stages = {**fork_stages(srv.log_path), **create_stages(srv.log_path, kinds)}
        from tests.conftest import _cleanup_home

        _cleanup_home(srv)
        pool.shutdown()
    print(f"load average after:  {loadavg()}")
    print(f"image={args.image} rounds={args.rounds} (per sandbox: wall time / n; interleaved)")
    for n in counts:
        print(report(f"baseline: {n} cold creates at once, each", cold[n]))
        print(report(f"fork({n}), each child", fork[n]))
        ratio = percentile(fork[n], 50) / percentile(cold[n], 50)
        print(f"fork({n}) / {n} cold creates, p50 per sandbox: {ratio:.3f}")
    for name in sorted(stages):
        print(report(f"  {name}", stages[name]))


if __name__ == "__main__":
    main()
