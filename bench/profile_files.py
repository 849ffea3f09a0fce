"""Where a big file transfer's time goes: each way repeated, with CPU per transfer.

    .venv/bin/python bench/profile_files.py [--size-mb 64] [--n 5] [--hold write-bytes --seconds 10]

Each round runs write_file(bytes), write_file(file object), read_file and read_file_stream of
one file, alternated (so a noisy moment hits every op alike). It prints MB/s p50 per op and
the CPU seconds per GB spent by the server, this client and the sandbox (its cgroup): on a
shared machine the CPU figures say more than the wall clock. ``--hold OP`` then repeats one op
for ``--seconds`` and prints the pids first, to profile them meanwhile, e.g.
``py-spy record -p PID -d 8 -r 200 -f raw -o server.txt --nonblocking``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stats import loadavg
from bench.bench_files import cpu_seconds, sandbox_cpu_seconds
from bench.profile_exec import agent_pid
from hutch import Sandbox
from tests._server import ServerProcess
from tests.conftest import _cleanup_home

MiB = 1024 * 1024


def minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=64)
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--hold", choices=["write-bytes", "write-file", "read", "read-stream"])
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    size = args.size_mb * MiB
    tmp = Path(tempfile.mkdtemp(prefix="hutch-bench-proffiles-", dir="/var/tmp"))
    tmp.chmod(0o755)
    srv = ServerProcess(tmp / "home")
    print(f"load {loadavg()}", flush=True)
    try:
        srv.start(timeout=180)
        assert srv.proc is not None
        pid = srv.proc.pid
        src = tmp / "big.bin"
        src.write_bytes(os.urandom(MiB) * args.size_mb)
        data = src.read_bytes()
        with Sandbox.create(
            base_url=srv.url, api_key=srv.api_key, disk_mb=args.size_mb * 3 + 1024
        ) as sb:

            def write_bytes() -> None:
                assert sb.write_file("a.bin", data) == size

            def write_file() -> None:
                with open(src, "rb") as f:
                    assert sb.write_file("b.bin", f) == size

            def read() -> None:
                assert len(sb.read_file("a.bin")) == size

            def read_stream() -> None:
                assert sum(len(c) for c in sb.read_file_stream("b.bin")) == size

            ops: dict[str, Callable[[], None]] = {
                "write-bytes": write_bytes,
                "write-file": write_file,
                "read": read,
                "read-stream": read_stream,
            }
            wall: dict[str, list[float]] = {k: [] for k in ops}
            cpu: dict[str, list[tuple[float, float, float]]] = {k: [] for k in ops}
            flt: dict[str, list[int]] = {k: [] for k in ops}
            for _ in range(args.n):
                for name, op in ops.items():
                    before = (cpu_seconds(pid), time.process_time(), sandbox_cpu_seconds(sb.id))
                    faults = minor_faults(pid)
                    t0 = time.perf_counter()
                    op()
                    wall[name].append(time.perf_counter() - t0)
                    after = (cpu_seconds(pid), time.process_time(), sandbox_cpu_seconds(sb.id))
                    s, c, a = (b - a for a, b in zip(before, after, strict=True))
                    cpu[name].append((s, c, a))
                    flt[name].append(minor_faults(pid) - faults)
            gb = size / 1e9
            print(f"{args.size_mb} MiB x {args.n}, load {loadavg()}")
            print(
                f"{'op':<12} {'MB/s p50':>9} {'best':>7}   "
                "CPU s per GB: server client sandbox   server page faults"
            )
            for name in ops:
                rates = [size / w / 1e6 for w in wall[name]]
                per = [sum(x[i] for x in cpu[name]) / len(cpu[name]) / gb for i in range(3)]
                print(
                    f"{name:<12} {statistics.median(rates):9.0f} {max(rates):7.0f}   "
                    f"{per[0]:.2f} {per[1]:.2f} {per[2]:.2f}   {statistics.median(flt[name])}"
                )
            if args.hold:
                print(f"server={pid} client={os.getpid()} agent={agent_pid(sb.id)}", flush=True)
                stop = time.monotonic() + args.seconds
                count = 0
                while time.monotonic() < stop:
                    ops[args.hold]()
                    count += 1
                print(f"{args.hold}: {count} in {args.seconds:.0f} s")
    finally:
        srv.stop()
        _cleanup_home(srv)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
