"""Hold an exec loop on one sandbox long enough to profile it, and say what each exec costs.

    .venv/bin/python bench/profile_exec.py [--seconds 15] [--clients 1]

It prints the server's, this client's and the agent's pids as soon as the loop runs; profile
them meanwhile, e.g. `py-spy record -p PID -d 8 -r 200 -f raw -o server.txt --nonblocking`.
At the end: execs/s and CPU milliseconds per exec of the server, the client and the whole
sandbox (its cgroup), which is what a profile's percentages are percentages of.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_files import cpu_seconds, sandbox_cpu_seconds
from hutch import Sandbox
from tests._server import ServerProcess
from tests.conftest import _cleanup_home


def agent_pid(sandbox_id: str) -> int | None:
    for entry in Path("/proc").iterdir():
        try:
            if (entry / "comm").read_text().strip() == "hutch-agent" and sandbox_id in (
                entry / "cgroup"
            ).read_text():
                return int(entry.name)
        except (OSError, ValueError):
            continue
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--clients", type=int, default=1)
    args = parser.parse_args()
    srv = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-bench-prof-", dir="/var/tmp")))
    try:
        srv.start(timeout=180)
        assert srv.proc is not None
        opts = {"base_url": srv.url, "api_key": srv.api_key}
        with Sandbox.create(**opts) as sb:
            sb.exec("true")
            print(
                f"server={srv.proc.pid} client={os.getpid()} agent={agent_pid(sb.id)} "
                f"sandbox={sb.id}",
                flush=True,
            )
            count = [0] * args.clients
            stop = time.monotonic() + args.seconds

            def loop(i: int) -> None:
                box = Sandbox.connect(sb.id, **opts)
                while time.monotonic() < stop:
                    box.run("true")
                    count[i] += 1

            before = (cpu_seconds(srv.proc.pid), time.process_time(), sandbox_cpu_seconds(sb.id))
            threads = [threading.Thread(target=loop, args=(i,)) for i in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            after = (cpu_seconds(srv.proc.pid), time.process_time(), sandbox_cpu_seconds(sb.id))
            n = sum(count)
            server, client, sandbox = (
                1000 * (b - a) / n for a, b in zip(before, after, strict=True)
            )
            print(f"{n / args.seconds:.0f} execs/s with {args.clients} clients")
            print(
                f"CPU ms per exec: server {server:.2f}, client {client:.2f}, sandbox {sandbox:.2f}"
            )
            print(f"load average: {Path('/proc/loadavg').read_text().strip()}")
    finally:
        srv.stop()
        _cleanup_home(srv)


if __name__ == "__main__":
    main()
