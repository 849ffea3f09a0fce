"""A file written into a mounted bucket, from the write's end to the object in the S3 server:
two Hutch builds interleaved in one run, under gVisor by default, with CPU load added.

    .venv/bin/python bench/ab_bucket_write.py --other /work/main/.venv/bin/python \\
        [--runtime gvisor] [--rounds 4] [--n 10] [--burn 3] [--timeout 15]

Run as root after the default image is built. Both servers run at once (this checkout's and
the one whose interpreter `--other` names), each with one sandbox that has its own bucket of
one S3 server (`rclone serve s3` on loopback, its directory polled every 2 ms), and they take
turns (A B B A ...), so that the load of any minute falls on both. Each turn, after a round
of file work in the sandbox (as in test_gvisor's long-used sandbox), `--n` samples of:

- api: `write_file` (a temporary name, closed, renamed onto the target).
- mv: `echo … > .tmp && mv .tmp NAME` through exec (a tool's atomic save).

each timed from the call's return (0 when the object was there before it) to the object's
ctime in the S3 server's directory (when the upload put it there). A sample
that does not arrive within `--timeout` seconds (test_gvisor's bound: 15) is counted as
missed, not timed. `--burn K` runs K busy loops meanwhile (a CI run at load, on purpose).
Prints p50/p95/max per build and case next to the other build's, with the load average.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tests._server as test_server
from bench._stats import loadavg, percentile
from bench.bench_bucket_close import FILE_WORK  # the same long-used sandbox's file work
from hutch import Sandbox
from tests._server import ServerProcess
from tests.conftest import _cleanup_home
from tests.support.s3 import S3Server

CASES = ("api", "mv")


def _start(python: Path) -> ServerProcess:
    test_server.HUTCH_BIN = python.with_name("hutch")  # read by ServerProcess.start
    home = Path(tempfile.mkdtemp(prefix="hutch-ab-bucket-", dir="/var/tmp"))
    os.chmod(home, 0o711)
    server = ServerProcess(home)
    server.start(timeout=180)
    return server


def _arrival(path: Path, text: str, timeout: float) -> float | None:
    """When the object at `path` was stored with `text` (its file's ctime), None if not
    within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if path.read_text() == text:
                return path.stat().st_ctime
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    return None


def _sample(sb: Sandbox, bucket: Path, case: str, key: str, timeout: float) -> float | None:
    if case == "api":
        sb.write_file(f"/mnt/b/{key}", key)
        written = time.time()
        text = key
    else:
        r = sb.exec(f"echo {key} > /mnt/b/.{key}.tmp && mv /mnt/b/.{key}.tmp /mnt/b/{key}")
        assert r.exit_code == 0, r.stderr
        written = time.time()
        text = key + "\n"
    arrived = _arrival(bucket / key, text, timeout)
    return None if arrived is None else max(0.0, arrived - written)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--other", type=Path, required=True, help="the other build's python")
    parser.add_argument("--runtime", default="gvisor", choices=("gvisor", "runc"))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--n", type=int, default=10, help="samples per case per turn")
    parser.add_argument("--burn", type=int, default=0, help="busy loops to run meanwhile")
    parser.add_argument("--timeout", type=float, default=15.0)
    args = parser.parse_args()
    sides = {"this": Path(sys.executable), "other": args.other}
    print(f"load average at start: {loadavg()}  ({os.cpu_count()} cpus)", flush=True)
    s3 = S3Server()
    s3.start()
    servers: dict[str, ServerProcess] = {}
    boxes: dict[str, Sandbox] = {}
    burners: list[subprocess.Popen[bytes]] = []
    samples: dict[tuple[str, str], list[float]] = {(s, c): [] for s in sides for c in CASES}
    missed: dict[tuple[str, str], int] = dict.fromkeys(samples, 0)
    loads: list[str] = []
    try:
        for name, python in sides.items():
            servers[name] = srv = _start(python)
            s3.make_bucket(f"ab-{name}")
            boxes[name] = sb = Sandbox.create(
                base_url=srv.url, api_key=srv.api_key, runtime=args.runtime
            )
            sb.mount_bucket(f"ab-{name}", "/mnt/b", s3.endpoint, s3.credentials)
            sb.write_file("/tmp/work.py", FILE_WORK)
        burners = [
            subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(args.burn)
        ]
        order = list(sides)
        for i in range(args.rounds):
            for name in order if i % 2 == 0 else order[::-1]:
                sb = boxes[name]
                assert sb.exec("python3 /tmp/work.py && ls -lR /tmp/work >/dev/null").exit_code == 0
                for j in range(args.n):
                    for case in CASES:
                        took = _sample(
                            sb, s3.root / f"ab-{name}", case, f"{case}{i}-{j}", args.timeout
                        )
                        if took is None:
                            missed[name, case] += 1
                        else:
                            samples[name, case].append(took)
            loads.append(loadavg())
            print(f"round {i + 1}/{args.rounds} done, load average {loads[-1]}", flush=True)
    finally:
        for p in burners:
            p.kill()
            p.wait()
        for sb in boxes.values():
            sb.destroy()
        for server in servers.values():
            server.stop()
            _cleanup_home(server)
        s3.stop()
    total = args.rounds * args.n
    print(f"write's end -> object in the bucket ({args.runtime}, {args.burn} busy loops):")
    for case in CASES:
        for name, python in sides.items():
            ms = [s * 1e3 for s in samples[name, case]]
            figures = (
                f"p50 {percentile(ms, 50):7.1f}  p95 {percentile(ms, 95):7.1f}  "
                f"max {max(ms):7.1f} ms"
                if ms
                else "no sample arrived"
            )
            print(
                f"  {case:3} {name:5} ({python}): {figures}  "
                f"missed {missed[name, case]}/{total} (> {args.timeout:g} s)"
            )
    print("load average (1, 5, 15 min) per round: " + "; ".join(loads))


if __name__ == "__main__":
    main()
