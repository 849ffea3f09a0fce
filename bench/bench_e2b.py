"""E2B compatibility overhead: ``commands.run("true")`` through the unmodified e2b SDK
against ``Sandbox.exec("true")`` through Hutch's own SDK, same server, same sandbox, same run.

Run as root once the default image is built:

    .venv/bin/python bench/bench_e2b.py [--n 200] [--url http://127.0.0.1:PORT --key KEY]

The e2b SDK runs every command as ``/bin/bash -l -c CMD`` (a login shell) as E2B's user
``user``; the third line, Hutch's SDK running that same argv, shows what the login shell
itself costs, and the fourth, Hutch's exec as ``user``, what running as a non-root user costs:
the agent then cannot vfork (CPython's subprocess forks the whole agent to change uid), the
largest part of the gap measured in session 8.

The goal (issue 16): e2b's p50 at most 1.5x Hutch's. The runs are interleaved in rounds so
that a change of machine load hits both alike; the load average is printed with the figures.
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

WARMUP = 20
ROUND = 10


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--url", help="a running Hutch server (else one is started)")
    parser.add_argument("--key", help="its API key")
    args = parser.parse_args()
    srv = None
    if args.url:
        url, key = args.url, args.key or os.environ.get("HUTCH_API_KEY", "")
    else:
        srv = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-bench-", dir="/var/tmp")))
        srv.start()
        url, key = srv.url, srv.api_key
    os.environ.update(E2B_API_URL=url, E2B_SANDBOX_URL=url, E2B_API_KEY=key)
    import e2b  # after the environment: the SDK reads it per call, but be plain about it

    try:
        e2b_sb = e2b.Sandbox.create(timeout=3600)
        hutch_sb = Sandbox.connect(e2b_sb.sandbox_id, base_url=url, api_key=key)
        try:
            for _ in range(WARMUP):
                e2b_sb.commands.run("true")
                hutch_sb.exec("true")
            e2b_samples: list[float] = []
            hutch_samples: list[float] = []
            login_samples: list[float] = []
            user_samples: list[float] = []
            before = loadavg()
            while len(e2b_samples) < args.n:
                for _ in range(ROUND):
                    t0 = time.perf_counter()
                    e2b_sb.commands.run("true")
                    e2b_samples.append(time.perf_counter() - t0)
                for _ in range(ROUND):
                    t0 = time.perf_counter()
                    r = hutch_sb.exec("true")
                    hutch_samples.append(time.perf_counter() - t0)
                    assert r.exit_code == 0
                for _ in range(ROUND):
                    t0 = time.perf_counter()
                    hutch_sb.run("/bin/bash", ["-l", "-c", "true"])
                    login_samples.append(time.perf_counter() - t0)
                for _ in range(ROUND):
                    t0 = time.perf_counter()
                    hutch_sb.exec("true", user="user")
                    user_samples.append(time.perf_counter() - t0)
            print(f"load average before: {before}")
            print(report('e2b SDK commands.run("true")', e2b_samples))
            print(report('  baseline: hutch SDK Sandbox.exec("true")', hutch_samples))
            print(report('  hutch SDK run("/bin/bash -l -c true")', login_samples))
            print(report('  hutch SDK exec("true", user="user")', user_samples))
            ratio = percentile(e2b_samples, 50) / percentile(hutch_samples, 50)
            print(f"p50 ratio e2b/hutch: {ratio:.2f}x (goal <= 1.5x)")
            print(f"load average after:  {loadavg()}")
        finally:
            e2b_sb.kill()
    finally:
        if srv is not None:
            srv.stop()
            _cleanup_home(srv)


if __name__ == "__main__":
    main()
