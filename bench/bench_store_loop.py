"""Store calls and the event loop: concurrent execs with a member key (whose every request
reads the store: its key, its sandbox's team, the sandbox's record), SQLite next to
PostgreSQL (a private server with fsync on, on a unix socket), in the same run.

    sudo .venv/bin/python bench/bench_store_loop.py [--seconds 5] [--clients 8]

For each store: exec round trips of `true` from one client, then `--clients` clients at once
(throughput and each exec's latency) while one more client reads the sandbox's info in a
loop (how long a light request waits behind the others). Run it with another checkout's
Python (e.g. /work/main/.venv/bin/python bench/bench_store_loop.py) for the baseline of that
code in the same period. Prints p50/p95/p99 and the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stats import loadavg, report
from hutch import Sandbox
from tests._server import ServerProcess
from tests.conftest import _cleanup_home
from tests.support.postgres import PostgresServer


def new_home() -> Path:
    # Straight under /var/tmp: a sandbox's unprivileged uid must traverse the path to its root.
    return Path(tempfile.mkdtemp(prefix="hutch-bench-storeloop-", dir="/var/tmp"))


def member_key(srv: ServerProcess) -> str:
    r = httpx.post(
        f"{srv.url}/v1/keys",
        headers={"Authorization": f"Bearer {srv.api_key}"},
        json={"name": "bench", "role": "member"},
        timeout=30,
    )
    r.raise_for_status()
    return str(r.json()["key"])


def concurrent(
    opts: dict[str, str], sb_id: str, clients: int, seconds: float
) -> tuple[float, list[float], list[float]]:
    """(execs/s, exec latencies, info latencies of the extra reader)."""
    execs: list[list[float]] = [[] for _ in range(clients)]
    infos: list[float] = []
    stop = time.monotonic() + seconds

    def worker(i: int) -> None:
        box = Sandbox.connect(sb_id, **opts)
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            box.run("true")
            execs[i].append(time.perf_counter() - t0)

    def reader() -> None:
        box = Sandbox.connect(sb_id, **opts)
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            box.info()
            infos.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    threads.append(threading.Thread(target=reader))
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = [s for samples in execs for s in samples]
    return len(done) / (time.monotonic() - t0), done, infos


def run(name: str, srv: ServerProcess, seconds: float, clients: int) -> None:
    srv.start(timeout=300)
    try:
        opts = {"base_url": srv.url, "api_key": member_key(srv)}
        sb = Sandbox.create(**opts)
        try:
            for _ in range(10):
                sb.run("true")
            single = []
            for _ in range(100):
                t0 = time.perf_counter()
                sb.run("true")
                single.append(time.perf_counter() - t0)
            print(report(f"{name}: exec, 1 client", single))
            rate, execs, infos = concurrent(opts, sb.id, clients, seconds)
            print(report(f"{name}: exec, {clients} clients", execs) + f"  {rate:.0f} execs/s")
            print(report(f"{name}: info beside them", infos))
        finally:
            sb.destroy()
    finally:
        srv.stop()
        _cleanup_home(srv)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: sandboxes, and PostgreSQL runs as the postgres user")
    print(f"load average at start: {loadavg()}")
    run("sqlite", ServerProcess(new_home()), args.seconds, args.clients)
    pg = PostgresServer(fsync=True)
    pg.start()
    try:
        url = pg.new_database()
        srv = ServerProcess(new_home(), extra_env={"HUTCH_DATABASE_URL": url})
        run("postgresql", srv, args.seconds, args.clients)
    finally:
        pg.stop()
    print(f"load average at end: {loadavg()}")


if __name__ == "__main__":
    main()
