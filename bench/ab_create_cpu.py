"""CPU per cold create + first exec of two Hutch builds, turns alternated in one run.

    .venv/bin/python bench/ab_create_cpu.py --other /work/main/.venv/bin/python [--turns 6 --n 10]

On a shared 2-core host the wall time of a create swings with the load from run to run; the
CPU it costs much less, and a create is CPU-bound (docs/performance.md, create16): CPU taken
off any process beside the critical path is wall time on a quiet host. Both servers run at
once; each turn makes `--n` sandboxes on one of them (A B B A ...), each followed by one
`exec("true")`, and reads:

    server          the server's own CPU (/proc/PID/stat utime + stime)
    runc + tools    its reaped children's (cutime + cstime): `runc run`, `ip`, `unshare`...
    sandbox         the sandbox cgroup's `cpuacct.usage` before the destroy: runc init once
                    it joined, the agent's start, `true`

Prints each part's mean per create per build, with each turn's mean (the spread), and the
load average. /proc's times are in clock ticks (10 ms): the means over many creates carry it.
Needs root (a server) and cgroup v1's cpuacct hierarchy.
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ab_create import start_build
from hutch import Sandbox
from tests._server import ServerProcess
from tests.conftest import _cleanup_home

PARTS = ("server", "runc + tools", "sandbox")
_TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> tuple[float, float]:
    """(own, reaped children's) CPU of `pid` in ms."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    own = int(fields[11]) + int(fields[12])  # utime, stime
    children = int(fields[13]) + int(fields[14])  # cutime, cstime
    return own * _TICK_MS, children * _TICK_MS


def _sandbox_cpu(sandbox_id: str) -> float:
    paths = glob.glob(f"/sys/fs/cgroup/cpuacct/hutch/*/{sandbox_id}/cpuacct.usage")
    if not paths:
        raise SystemExit(f"no cpuacct cgroup for {sandbox_id} (cgroup v1 cpuacct needed)")
    with open(paths[0]) as f:
        return int(f.read()) / 1e6


def _turn(server: ServerProcess, n: int) -> dict[str, list[float]]:
    assert server.proc is not None
    pid = server.proc.pid
    parts: dict[str, list[float]] = {part: [] for part in PARTS}
    for _ in range(n):
        own0, children0 = _proc_cpu(pid)
        sb = Sandbox.create(image="default", base_url=server.url, api_key=server.api_key)
        sb.exec("true")
        own1, children1 = _proc_cpu(pid)
        parts["sandbox"].append(_sandbox_cpu(sb.id))
        parts["server"].append(own1 - own0)
        parts["runc + tools"].append(children1 - children0)
        sb.destroy()
    return parts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--other", type=Path, required=True, help="the other build's python")
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--n", type=int, default=10)
    args = parser.parse_args()
    sides = {"this": Path(sys.executable), "other": args.other}
    servers: dict[str, ServerProcess] = {}
    turns: dict[str, list[dict[str, list[float]]]] = {name: [] for name in sides}
    loads = [os.getloadavg()]
    try:
        for name, python in sides.items():
            servers[name] = start_build(python, "hutch-ab-cpu-")
        for server in servers.values():  # the page cache, each agent bundle
            _turn(server, 2)
        order = list(sides)
        for i in range(args.turns):
            for name in order if i % 2 == 0 else order[::-1]:
                turns[name].append(_turn(servers[name], args.n))
            loads.append(os.getloadavg())
    finally:
        for server in servers.values():
            server.stop()
            _cleanup_home(server)
    for name, python in sides.items():
        print(f"{name:5} ({python}): CPU per create + first exec, mean ms")
        total = 0.0
        for part in PARTS:
            every = [v for turn in turns[name] for v in turn[part]]
            per_turn = " ".join(f"{statistics.fmean(turn[part]):.1f}" for turn in turns[name])
            total += statistics.fmean(every)
            print(f"    {part:13} {statistics.fmean(every):7.2f}   turns: {per_turn}")
        print(f"    {'total':13} {total:7.2f}   (n={sum(len(t['server']) for t in turns[name])})")
    print(
        "load average (1, 5, 15 min) per turn pair: "
        + "; ".join(f"{a:.2f} {b:.2f} {c:.2f}" for a, b, c in loads)
    )


if __name__ == "__main__":
    main()
