"""The TypeScript SDK (sdk-ts/, under Node) next to the Python SDK, same server, same sandbox,
same run: exec round trip and exec-stream throughput.

    .venv/bin/python bench/bench_ts.py [--n 300] [--rounds 3] [--bytes 1G]

(build the SDK first: `cd sdk-ts && npm ci && npm run build`)

- exec round trip: `run("true")` (argv, no shell) from each SDK, one call at a time on a warm
  connection; rounds alternate Python and Node so that both see the same load.
- stream: stdout of `head -c SIZE /dev/zero` through agent -> server -> HTTP -> SDK, counted by
  the SDK (Node: `execStream`, bytes not decoded; Python: `exec_stream`).
The load average is printed before and after: on a shared machine, compare ratios, not ms.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._stats import percentile, report  # noqa: E402
from bench.bench_stream import exec_stream, parse_size  # noqa: E402
from hutch import Sandbox  # noqa: E402
from tests._server import ServerProcess  # noqa: E402

NODE_SIDE = ROOT / "bench" / "bench_ts_node.mjs"


def node(server: ServerProcess, sandbox_id: str, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        ["node", str(NODE_SIDE), server.url, server.api_key, sandbox_id, *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def python_exec(sb: Sandbox, n: int) -> list[float]:
    for _ in range(20):
        sb.run("true")
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        result = sb.run("true")
        samples.append(time.perf_counter() - t0)
        assert result.exit_code == 0
    return samples


def exec_round_trips(server: ServerProcess, sb: Sandbox, n: int, rounds: int) -> None:
    py: list[float] = []
    ts: list[float] = []
    for _ in range(rounds):
        py += python_exec(sb, n)
        ts += [float(s) for s in node(server, sb.id, "exec", str(n))["samples"]]
    print(report("exec round trip, Python SDK (baseline)", py))
    print(report("exec round trip, TypeScript SDK (Node)", ts))
    print(f"TypeScript / Python p50: {percentile(ts, 50) / percentile(py, 50):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bytes", default="1G")
    parser.add_argument("--only", choices=("exec", "stream"), help="measure only this")
    args = parser.parse_args()
    size = parse_size(args.bytes)
    if not (ROOT / "sdk-ts" / "dist" / "index.js").exists():
        sys.exit("build the TypeScript SDK first: cd sdk-ts && npm ci && npm run build")

    server = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-bench-", dir="/var/tmp")))
    server.start()
    try:
        sb = Sandbox.create(base_url=server.url, api_key=server.api_key)
        try:
            print(f"load average before: {Path('/proc/loadavg').read_text().strip()}")
            if args.only != "stream":
                exec_round_trips(server, sb, args.n, args.rounds)
            if args.only == "exec":
                return
            exec_stream(sb, 64 << 20)  # warm up
            py_rate: list[float] = []
            ts_rate: list[float] = []
            for _ in range(args.rounds):  # alternated, so both see the same load
                py_rate.append(exec_stream(sb, size))
                ts_rate.append(float(node(server, sb.id, "stream", str(size))["bytesPerSecond"]))
            py_mid = sorted(py_rate)[len(py_rate) // 2]
            ts_mid = sorted(ts_rate)[len(ts_rate) // 2]
            label = f"exec stream of {size >> 20} MiB"
            print(f"{label}, Python SDK (baseline)  {py_mid / 1e6:8.1f} MB/s  (median)")
            print(
                f"{label}, TypeScript SDK (Node)  {ts_mid / 1e6:8.1f} MB/s ({ts_mid / py_mid:.2f}x)"
            )
            print(f"load average after:  {Path('/proc/loadavg').read_text().strip()}")
        finally:
            sb.destroy()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
