"""What `df /` showing the disk limit costs: statfs answered by the seccomp listener
(_statfs_daemon), statfs it lets through, file ops and exec, next to a baseline server in the
same run whose sandboxes have no listener (HUTCH_DISK_STATFS=0).

    .venv/bin/python bench/bench_statfs.py [--n 2000] [--rounds 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stats import percentile
from bench.bench_sandbox import exec_round_trips
from hutch import Sandbox
from tests._server import ServerProcess
from tests.conftest import _cleanup_home

# Inside the sandbox: each call timed alone, in microseconds.
TIMER = r"""
import os, sys, time
what, n = sys.argv[1], int(sys.argv[2])
def statfs_root(i): os.statvfs("/")
def statfs_shm(i): os.statvfs("/dev/shm")
def fstatfs_root(i, fd=os.open("/", os.O_RDONLY)): os.fstatvfs(fd)
def file_ops(i):
    p = f"/tmp/f{i % 50}"
    with open(p, "wb") as f:
        f.write(b"x" * 512)
    os.stat(p)
    os.unlink(p)
op = globals()[what]
for i in range(50):
    op(i)
out = []
for i in range(n):
    t = time.perf_counter_ns()
    op(i)
    out.append(time.perf_counter_ns() - t)
print(" ".join(str(x) for x in out))
"""


def micro(sb: Sandbox, what: str, n: int) -> list[float]:
    r = sb.run("python3", ["-c", TIMER, what, str(n)], timeout=300)
    assert r.exit_code == 0, r.stderr
    return [int(x) / 1000 for x in r.stdout.split()]


def line(name: str, us: list[float], base: list[float] | None = None) -> str:
    ratio = f"  p50 vs baseline {percentile(us, 50) / percentile(base, 50):5.2f}x" if base else ""
    return (
        f"{name:<46} n={len(us):<5} p50={percentile(us, 50):9.1f} us  "
        f"p95={percentile(us, 95):9.1f} us  p99={percentile(us, 99):9.1f} us{ratio}"
    )


def creates(opts: dict[str, str], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        with Sandbox.create(image="default", **opts) as sb:
            sb.exec("true")
            samples.append((time.perf_counter() - t0) * 1e6)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    print(f"load before: {Path('/proc/loadavg').read_text().strip()}")
    servers = {}
    try:
        for name, env in (("baseline", {"HUTCH_DISK_STATFS": "0"}), ("listener", {})):
            home = Path(tempfile.mkdtemp(prefix="hutch-bench-statfs-", dir="/var/tmp"))
            servers[name] = ServerProcess(home, extra_env=env)
            servers[name].start(timeout=240)
        # NB: both servers' sandboxes measured in alternation, round by round: on a shared,
        # loaded machine two runs one after the other differ more than what is measured.
        boxes = {
            name: Sandbox.create(image="default", disk_mb=1024, base_url=s.url, api_key=s.api_key)
            for name, s in servers.items()
        }
        for name, sb in boxes.items():
            df = sb.exec("df -B1M / | tail -1").stdout.split()
            print(f"{name}: df -B1M / says total {df[1]} MB, used {df[2]} MB")
        results: dict[str, dict[str, list[float]]] = {name: {} for name in servers}
        per_round = max(1, args.n // args.rounds)
        for _ in range(args.rounds):
            for name, sb in boxes.items():
                got = results[name]
                for what in ("statfs_root", "fstatfs_root", "statfs_shm", "file_ops"):
                    got.setdefault(what, []).extend(micro(sb, what, per_round))
                got.setdefault("exec", []).extend(
                    s * 1e6 for s in exec_round_trips(sb, max(10, per_round // 10))
                )
                opts = {"base_url": servers[name].url, "api_key": servers[name].api_key}
                got.setdefault("create", []).extend(creates(opts, 2))
        for sb in boxes.values():
            sb.destroy()
    finally:
        for server in servers.values():
            server.stop()
            _cleanup_home(server)
    base, new = results["baseline"], results["listener"]
    labels = {
        "statfs_root": "statfs('/') (answered)",
        "fstatfs_root": "fstatfs(fd of '/') (answered)",
        "statfs_shm": "statfs('/dev/shm') (let through)",
        "file_ops": "open+write+close+stat+unlink in /tmp",
        "exec": "exec round trip of `true` (SDK)",
        "create": "create -> first exec -> destroy",
    }
    for key, label in labels.items():
        print(line(f"baseline: {label}", base[key]))
        print(line(f"listener: {label}", new[key], base[key]))
    print(f"load after: {Path('/proc/loadavg').read_text().strip()}")


if __name__ == "__main__":
    main()
