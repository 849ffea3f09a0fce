"""Create -> first exec through two API replicas of one running local cluster, alternated
A-B-B-A, with the replicas' own debug steps of those creates: two versions of `hutch api`
on the same nodes, database and minutes (a whole `bench_cluster.py` run each measures
different minutes of a shared machine, whose drift buries a few milliseconds).

    sudo HUTCH_LOG_LEVEL=debug scripts/cluster up        # replica 0: this checkout
    sudo kill <replica 1's pid>; sudo /work/main/scripts/cluster start-api 1   # the other
    sudo .venv/bin/python bench/ab_replicas.py --n 150 [--dir /var/lib/hutch-cluster]

Replica 1 (port + 1) is B, or any other server (`--b-url`, `--b-key`, `--b-log`: a
single-host `hutch serve` with HUTCH_LOG_LEVEL=debug, to see which steps the cluster adds).
Prints each side's p50/p95, B's - A's p50 with its 95% bootstrap interval, the load average
before and after, and (with HUTCH_LOG_LEVEL=debug) the p50 of each step of `created sandbox
...` in each side's log over the measured creates.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stats import loadavg, median_difference_interval, percentile, report
from hutch.sdk import Client, Sandbox

SMALL = {"cpu": 0.5, "memory_mb": 256, "disk_mb": 256}
STEP = re.compile(r"(\w+)=([0-9.]+)ms")


def one(client: Client) -> tuple[float, str]:
    started = time.perf_counter()
    sb = Sandbox.create(client=client, **SMALL)  # type: ignore[arg-type]
    sb.exec("true")
    took = time.perf_counter() - started
    sb.kill()
    return took, sb.id


def steps(log: Path, ids: set[str]) -> dict[str, list[float]]:
    """Each step's milliseconds of the `created sandbox <id>: ...` lines of `ids`."""
    out: dict[str, list[float]] = {}
    for line in log.read_text(errors="replace").splitlines():
        m = re.search(r"created sandbox (\S+): (.*)", line)
        if m is None or m.group(1) not in ids:
            continue
        for name, ms in STEP.findall(m.group(2)):
            out.setdefault(name, []).append(float(ms))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100, help="creates through each replica")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--dir", type=Path, default=Path("/var/lib/hutch-cluster"))
    parser.add_argument("--port", type=int, default=7080, help="replica 0's port")
    parser.add_argument("--b-url", help="B's URL (default: replica 1's)")
    parser.add_argument("--b-key", help="B's API key (default: the cluster's)")
    parser.add_argument("--b-log", type=Path, help="B's log (default: replica 1's)")
    args = parser.parse_args()
    key = (args.dir / "api_key").read_text().strip()
    b_url = args.b_url or f"http://127.0.0.1:{args.port + 1}"
    clients = [
        Client(base_url=f"http://127.0.0.1:{args.port}", api_key=key),
        Client(base_url=b_url, api_key=args.b_key or key),
    ]
    logs = [args.dir / "api0.log", args.b_log or args.dir / "api1.log"]
    times: list[list[float]] = [[], []]
    ids: list[set[str]] = [set(), set()]
    try:
        for i in range(args.warmup):
            one(clients[i % 2])
        before = loadavg()
        for i in range(args.n):
            for r in (0, 1) if i % 2 == 0 else (1, 0):
                took, sid = one(clients[r])
                times[r].append(took)
                ids[r].add(sid)
        after = loadavg()
    finally:
        for c in clients:
            c.close()
    print(report("A (replica 0) create -> first exec", times[0]))
    print(report(f"B ({b_url}) create -> first exec", times[1]))
    low, high = median_difference_interval(times[1], times[0])
    diff = percentile(times[1], 50) - percentile(times[0], 50)
    print(
        f"B - A p50: {diff * 1e3:+.2f} ms (95% bootstrap interval {low * 1e3:+.2f} .. "
        f"{high * 1e3:+.2f}); load average {before} -> {after}"
    )
    for r, side in ((0, "A"), (1, "B")):
        found = steps(logs[r], ids[r])
        if found:
            print(
                f"{side} steps p50 (n={len(next(iter(found.values())))}): "
                + " ".join(f"{k}={percentile(v, 50):.2f}" for k, v in found.items())
            )


if __name__ == "__main__":
    main()
