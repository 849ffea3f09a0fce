"""Bucket mount figures: sequential write and read of a 256 MiB file through the mount, next to
`rclone copy` of the same file against the same S3 server (`rclone serve s3` on loopback) in
the same run; and how long a closed file takes to show up in the bucket, with and without
fsync before close.

Run as root (the default image must be built):

    .venv/bin/python bench/bench_buckets.py [--n 3] [--mib 256]

- write: `cp` of the file from the sandbox's /tmp into the mount, then wait until the bucket
  holds the whole object (the upload happens after close: upload starts at close).
- read: `cat` of the object through a freshly mounted path (empty VFS cache) to /dev/null.
- baseline: host `rclone copyto` of the same file up to the bucket / down from it.
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

from bench._stats import report
from hutch import Sandbox
from tests._server import ServerProcess
from tests.conftest import _cleanup_home
from tests.support.s3 import S3Server


def object_size(s3: S3Server, key: str) -> int:
    path = s3.root / key
    return path.stat().st_size if path.exists() else -1


def wait_for_object(s3: S3Server, key: str, size: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while object_size(s3, key) != size:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{key} never reached {size} bytes in the bucket")
        time.sleep(0.02)


def throughput(name: str, seconds: list[float], mib: int) -> str:
    rates = sorted(mib / s for s in seconds)
    return f"{report(name, seconds)}  ~{rates[len(rates) // 2]:.0f} MiB/s"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--mib", type=int, default=256)
    args = parser.parse_args()
    size = args.mib << 20

    s3 = S3Server()
    s3.start()
    s3.make_bucket("bench")
    home = Path(tempfile.mkdtemp(prefix="hutch-bench-s3-", dir="/var/tmp"))
    os.chmod(home, 0o711)
    srv = ServerProcess(home)
    srv.start()
    local = Path(tempfile.mkdtemp(prefix="hutch-bench-file-", dir="/var/tmp"))
    try:
        sb = Sandbox.create(disk_mb=4096, base_url=srv.url, api_key=srv.api_key)
        creds = s3.credentials
        sb.mount_bucket("bench", "/mnt/w", endpoint=s3.endpoint, credentials=creds)
        r = sb.exec(f"head -c {size} /dev/urandom > /tmp/big", timeout=300)
        assert r.exit_code == 0, r.stderr
        src = local / "big"
        with open(src, "wb") as f:
            f.write(os.urandom(size))

        # Close-to-bucket delay of a small file, with and without sync before close.
        plain, synced = [], []
        for i in range(max(args.n, 5)):
            for name, cmd, samples in (
                (f"p{i}", "echo x > /mnt/w/p{i}", plain),
                (f"s{i}", "echo x | dd of=/mnt/w/s{i} conv=fsync 2>/dev/null", synced),
            ):
                t0 = time.perf_counter()
                sb.exec(cmd.format(i=i))
                wait_for_object(s3, f"bench/{name}", 2)
                samples.append(time.perf_counter() - t0)

        write, read, up, down = [], [], [], []
        for i in range(args.n):
            key = f"bench/w{i}"
            t0 = time.perf_counter()
            r = sb.exec(f"cp /tmp/big /mnt/w/w{i}", timeout=600)
            assert r.exit_code == 0, r.stderr
            wait_for_object(s3, key, size)
            write.append(time.perf_counter() - t0)

            path = f"/mnt/r{i}"  # a fresh mount: nothing of the object in rclone's cache
            sb.mount_bucket("bench", path, endpoint=s3.endpoint, credentials=creds)
            t0 = time.perf_counter()
            r = sb.exec(f"cat {path}/w{i} > /dev/null", timeout=600)
            read.append(time.perf_counter() - t0)
            assert r.exit_code == 0, r.stderr
            sb.unmount_bucket(path)

            t0 = time.perf_counter()
            s3.rclone("copyto", str(src), f"s3test:bench/c{i}", timeout=600)
            up.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            s3.rclone("copyto", f"s3test:bench/c{i}", str(local / f"down{i}"), timeout=600)
            down.append(time.perf_counter() - t0)
            (local / f"down{i}").unlink()

        sb.destroy()

        mib = args.mib
        print(f"sequential {mib} MiB, n={args.n}, rclone serve s3 on loopback, same run:")
        print(throughput("mount: write (cp, until in the bucket)", write, mib))
        print(throughput("baseline: rclone copy up", up, mib))
        print(throughput("mount: read (cat, cold cache)", read, mib))
        print(throughput("baseline: rclone copy down", down, mib))
        print("close -> object in the bucket (small file):")
        print(report("  write, close", plain))
        print(report("  write, fsync, close (dd conv=fsync)", synced))
    finally:
        srv.stop()
        _cleanup_home(srv)
        s3.stop()
        subprocess.run(["rm", "-rf", str(local)], check=False)


if __name__ == "__main__":
    main()
