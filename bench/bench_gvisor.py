"""runc next to gVisor in the same run: create -> first exec, exec round trip, and a
syscall-heavy job (importing pandas: thousands of stat/open/mmap calls, what `pip` does too).

Run as root after the default image is built (`hutch image build`):

    .venv/bin/python bench/bench_gvisor.py [--n 10] [--rounds 100]

runc is the baseline; each gVisor figure is followed by its ratio to runc's p50. The load
average is printed first and last: the machine is shared, read the figures with it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stats import loadavg, percentile, report
from hutch import Sandbox
from tests._server import ServerProcess
from tests.conftest import _cleanup_home

HEAVY = "python3 -c 'import json, email, http.client, asyncio, decimal, pandas'"


def create_to_first_exec(runtime: str) -> float:
    t0 = time.perf_counter()
    sb = Sandbox.create(runtime=runtime)
    assert sb.exec("true").exit_code == 0
    elapsed = time.perf_counter() - t0
    sb.destroy()
    return elapsed


def timed_exec(sb: Sandbox, command: str) -> float:
    t0 = time.perf_counter()
    r = sb.exec(command)
    elapsed = time.perf_counter() - t0
    assert r.exit_code == 0, r.stderr
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10, help="creates per runtime")
    parser.add_argument("--rounds", type=int, default=100, help="exec round trips")
    parser.add_argument("--heavy", type=int, default=10, help="syscall-heavy runs")
    args = parser.parse_args()
    print(f"load average at start: {loadavg()}  ({os.cpu_count()} cpus)")
    home = Path(tempfile.mkdtemp(prefix="hutch-bench-gvisor-", dir="/var/tmp"))
    srv = ServerProcess(home)
    srv.start(timeout=300)  # a shared, loaded machine can take minutes to start a server
    os.environ["HUTCH_URL"], os.environ["HUTCH_API_KEY"] = srv.url, srv.api_key
    try:
        # NB: the runtimes take turns sample by sample, so a change of the machine's load
        # (it is shared) hits both alike and the ratio stays meaningful.
        runtimes = ("runc", "gvisor")
        figures: dict[str, dict[str, list[float]]] = {r: {} for r in runtimes}
        for _ in range(args.n):
            for runtime in runtimes:
                sample = create_to_first_exec(runtime)
                figures[runtime].setdefault("create -> first exec", []).append(sample)
        boxes = {runtime: Sandbox.create(runtime=runtime) for runtime in runtimes}
        try:
            for name, command, n in (
                ("exec round trip (true)", "true", args.rounds),
                # The same through bash (`;` is shell syntax): what every command cost before
                # word lists were exec-ed directly.
                ("exec through bash (true;)", "true;", args.rounds),
                ("exec round trip (ls /)", "ls /", args.rounds),
                ("import json..pandas", HEAVY, args.heavy),
            ):
                for runtime in runtimes:
                    timed_exec(boxes[runtime], command)  # warm up
                for _ in range(n):
                    for runtime in runtimes:
                        sample = timed_exec(boxes[runtime], command)
                        figures[runtime].setdefault(name, []).append(sample)
        finally:
            for box in boxes.values():
                box.destroy()
        for name in figures["runc"]:
            base = percentile(figures["runc"][name], 50)
            print(report(f"runc:   {name}", figures["runc"][name]))
            ratio = percentile(figures["gvisor"][name], 50) / base
            print(report(f"gvisor: {name}", figures["gvisor"][name]) + f"  x{ratio:.1f} runc")
    finally:
        srv.stop()
        _cleanup_home(srv)  # its storage and lxcfs mounts, or they outlive the bench
        print(f"load average at end: {loadavg()}")


if __name__ == "__main__":
    main()
