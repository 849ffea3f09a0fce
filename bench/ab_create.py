"""Cold create -> first exec of two Hutch builds, interleaved in one run, next to raw runc.

    .venv/bin/python bench/ab_create.py --other /work/main/.venv/bin/python [--rounds 6 --n 5]

As bench/ab_exec.py: both servers run at once (this checkout's and the one whose interpreter
`--other` names) and take turns (A B B A A B ...), so that the load of any minute falls on
both. Each turn makes `--n` cold sandboxes of the default image, one at a time, each timed
from `Sandbox.create` to the result of its first `exec("true")`, then destroyed; each round
also times `--n` raw `runc run /bin/true` (bench_sandbox's baseline). Prints p50/p95 of
each side, its ratio to the baseline's p50, and the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tests._server as test_server
from bench import bench_sandbox
from bench._stats import percentile
from hutch.runtime import ImageStore
from tests._server import SHARED_IMAGES, ServerProcess
from tests.conftest import _cleanup_home


def start_build(python: Path, prefix: str = "hutch-ab-create-") -> ServerProcess:
    """A server of the build whose interpreter is `python`, in a new home under /var/tmp."""
    test_server.HUTCH_BIN = python.with_name("hutch")  # read by ServerProcess.start
    server = ServerProcess(Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp")))
    server.start(timeout=180)
    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--other", type=Path, required=True, help="the other build's python")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--n", type=int, default=5)
    args = parser.parse_args()
    here = Path(sys.executable)
    sides = {"this": here, "other": args.other}
    servers: dict[str, ServerProcess] = {}
    try:
        for name, python in sides.items():
            servers[name] = start_build(python)
        opts = {n: {"base_url": s.url, "api_key": s.api_key} for n, s in servers.items()}
        rootfs = ImageStore(SHARED_IMAGES).get("default").rootfs
        for name in sides:  # the page cache, each agent bundle
            bench_sandbox.create_to_first_exec(opts[name], 2, "default")
        firsts: dict[str, list[float]] = {name: [] for name in sides}
        runc: list[float] = []
        loads = [os.getloadavg()]
        order = list(sides)
        for i in range(args.rounds):
            runc += bench_sandbox.raw_runc_true(rootfs, args.n)
            for name in order if i % 2 == 0 else order[::-1]:
                firsts[name] += bench_sandbox.create_to_first_exec(opts[name], args.n, "default")[0]
            loads.append(os.getloadavg())
    finally:
        for server in servers.values():
            server.stop()
            _cleanup_home(server)
    base = percentile(runc, 50) * 1e3
    print(f"baseline raw runc run /bin/true: p50 {base:.2f} ms (n={len(runc)})")
    for name, python in sides.items():
        ms = [s * 1e3 for s in firsts[name]]
        p50, p95 = percentile(ms, 50), percentile(ms, 95)
        print(
            f"{name:5} ({python}): create -> first exec p50 {p50:.2f} p95 {p95:.2f} ms "
            f"(n={len(ms)}), {p50 / base:.2f}x the baseline"
        )
    print(
        "load average (1, 5, 15 min) per round: "
        + "; ".join(f"{a:.2f} {b:.2f} {c:.2f}" for a, b, c in loads)
    )


if __name__ == "__main__":
    main()
