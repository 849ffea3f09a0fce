"""How long a file closed in a sandbox takes to show up in its mounted bucket: runc next to
gVisor, in a fresh sandbox and in the same sandbox after a lot of file work, in one run.

Run as root after the default image is built (`hutch image build`):

    .venv/bin/python bench/bench_bucket_close.py [--n 20] [--work 3]

Each sample writes one small file in the bucket and waits for the object in the S3 server
(`rclone serve s3` on loopback: its directory is polled every 2 ms):

- command: `echo … > file && date +%s.%N` through exec (the file is closed when `date` runs).
- running process: a process that keeps running after it closed the file (nothing exits, so
  under gVisor only the agent's periodic flush sends the close), then prints `time.time()`.

Timed from that stamp (the sandbox's clock is the host's, for both runtimes) to the object's
ctime in the S3 server's directory (when rclone's upload put it there).

runc in a fresh sandbox is the baseline. "long-used": the same sandbox after `--work` rounds
of 400 files made, read and mostly removed and 10 files written and read through the API.
A sample that does not arrive within `--timeout` seconds is counted, not timed. The load
average is printed first and last: the machine is shared, read the figures with it.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stats import loadavg, percentile, report
from hutch import Sandbox
from tests._server import ServerProcess
from tests.conftest import _cleanup_home
from tests.support.s3 import S3Server

FILE_WORK = """
import os
for i in range(400):
    p = f"/tmp/work/{i % 40}"
    os.makedirs(p, exist_ok=True)
    with open(f"{p}/f{i}", "w") as f:
        f.write("x" * i)
    with open(f"{p}/f{i}") as f:
        f.read()
    if i % 3:
        os.unlink(f"{p}/f{i}")
"""

RUNNING_WRITER = (
    "python3 -c \"import time; f = open('{path}', 'w'); f.write('x'); f.close(); "
    "print('closed', time.time(), flush=True); time.sleep(600)\""
)


class Bucket:
    def __init__(self, s3: S3Server, name: str, timeout: float) -> None:
        self.s3, self.name, self.timeout = s3, name, timeout
        s3.make_bucket(name)

    def arrival(self, key: str) -> float | None:
        """When the object `key` was stored (its file's ctime), None if not within the
        timeout."""
        path = self.s3.root / self.name / key
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                return path.stat().st_ctime
            except FileNotFoundError:
                time.sleep(0.005)
        return None


def command_samples(sb: Sandbox, bucket: Bucket, tag: str, n: int) -> tuple[list[float], int]:
    samples, missed = [], 0
    for i in range(n):
        key = f"{tag}-cmd{i}"
        r = sb.exec(f"echo x > /mnt/b/{key} && date +%s.%N")
        assert r.exit_code == 0, r.stderr
        closed = float(r.stdout)
        arrived = bucket.arrival(key)
        if arrived is None:
            missed += 1
        else:
            samples.append(max(0.0, arrived - closed))
    return samples, missed


def running_samples(sb: Sandbox, bucket: Bucket, tag: str, n: int) -> tuple[list[float], int]:
    samples, missed = [], 0
    for i in range(n):
        key = f"{tag}-run{i}"
        p = sb.start_process(RUNNING_WRITER.format(path=f"/mnt/b/{key}"))
        closed = float(p.wait_for_log(re.compile(r"closed [0-9.]+\n"), timeout=60).split()[1])
        arrived = bucket.arrival(key)
        p.kill()
        if arrived is None:
            missed += 1
        else:
            samples.append(max(0.0, arrived - closed))
    return samples, missed


def use_for_a_while(sb: Sandbox, rounds: int) -> None:
    sb.write_file("/tmp/work.py", FILE_WORK)
    for _ in range(rounds):
        assert sb.exec("python3 /tmp/work.py && ls -lR /tmp/work /etc >/dev/null").exit_code == 0
        for i in range(10):
            sb.write_file(f"/workspace/w{i}", "y" * i)
            sb.read_file(f"/workspace/w{i}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20, help="samples per case")
    parser.add_argument(
        "--work", type=int, default=3, help="rounds of file work before 'long-used'"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait per sample")
    args = parser.parse_args()
    print(f"load average at start: {loadavg()}  ({os.cpu_count()} cpus)")
    s3 = S3Server()
    s3.start()
    home = Path(tempfile.mkdtemp(prefix="hutch-bench-close-", dir="/var/tmp"))
    os.chmod(home, 0o711)
    srv = ServerProcess(home)
    srv.start(timeout=300)
    results: list[tuple[str, list[float], int]] = []
    try:
        for runtime in ("runc", "gvisor"):
            bucket = Bucket(s3, f"close-{runtime}", args.timeout)
            sb = Sandbox.create(base_url=srv.url, api_key=srv.api_key, runtime=runtime)
            try:
                sb.mount_bucket(bucket.name, "/mnt/b", s3.endpoint, s3.credentials)
                for age in ("fresh", "long-used"):
                    if age == "long-used":
                        use_for_a_while(sb, args.work)
                    for case, take in (("command", command_samples), ("running", running_samples)):
                        samples, missed = take(sb, bucket, f"{age}-{case}", args.n)
                        results.append((f"{runtime} {age}: {case}", samples, missed))
            finally:
                sb.destroy()
    finally:
        srv.stop()
        _cleanup_home(srv)
        s3.stop()
    base = {
        case: percentile(s, 50)
        for name, s, _ in results
        if name.startswith("runc fresh")
        for case in [name.rsplit(" ", 1)[1]]
    }
    print("close -> object in the bucket (small file):")
    for name, samples, missed in results:
        case = name.rsplit(" ", 1)[1]
        line = report(name, samples) if samples else f"{name:<44} no sample arrived"
        ratio = percentile(samples, 50) / base[case] if samples and base.get(case) else None
        extra = f"  p50 {ratio:.2f}x runc fresh" if ratio is not None else ""
        print(f"{line}{extra}  missed={missed}/{args.n}")
    print(f"load average at end: {loadavg()}")


if __name__ == "__main__":
    main()
