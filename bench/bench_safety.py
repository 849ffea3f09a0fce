"""What the issue-14 fixes cost, each next to its baseline in the same run.

Run as root:

    .venv/bin/python bench/bench_safety.py [--n 2000]

- unmount: `unmount_in_root` (mountinfo read, openat2 beneath the root, statx mount id, umount2
  through the fd) of a tmpfs under a directory, next to a plain `umount2` of the same kind of
  mount by name (what the bucket code did before).
- preview response head: `parse_response` of a head with a `Set-Cookie ...; Domain=` (rewritten
  to host-only) and of one with a host-only `Set-Cookie`, next to the same head without any
  `Set-Cookie` (the path every response took before, plus the one added regex search).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stats import percentile, report
from hutch.proxy._http1 import parse_response
from hutch.runtime.container._mounts import UMOUNT_NOFOLLOW, mount_table
from hutch.runtime.container._safepath import unmount_in_root

LIBC = ctypes.CDLL(None, use_errno=True)


def _mount_tmpfs(path: Path) -> int:
    path.mkdir(parents=True, exist_ok=True)
    if LIBC.mount(b"t", os.fsencode(path), b"tmpfs", 0, b"size=64k") != 0:
        raise OSError(ctypes.get_errno(), f"mount tmpfs on {path}")
    return next(e.mount_id for e in reversed(mount_table()) if e.mountpoint == str(path))


def bench_unmount(n: int) -> None:
    top = Path(tempfile.mkdtemp(prefix="hutch-bench-safety-", dir="/var/tmp"))
    root, target = top / "root", top / "root" / "mnt" / "data"
    by_name: list[float] = []
    by_fd: list[float] = []
    try:
        for _ in range(n):
            _mount_tmpfs(target)
            t = time.perf_counter()
            if LIBC.umount2(os.fsencode(target), UMOUNT_NOFOLLOW) != 0:
                raise OSError(ctypes.get_errno(), "umount2")
            by_name.append(time.perf_counter() - t)
            mount_id = _mount_tmpfs(target)
            t = time.perf_counter()
            assert unmount_in_root(root, mount_id)
            by_fd.append(time.perf_counter() - t)
    finally:
        subprocess.run(["umount", "-R", "-l", str(target)], capture_output=True)
        subprocess.run(["rm", "-rf", "--one-file-system", str(top)], check=False)
    print(f"(mount table: {len(mount_table())} entries)")
    print(report("umount2 by name (baseline)", by_name))
    print(report("unmount_in_root (fd, mount id checked)", by_fd))


def bench_response_heads(n: int) -> None:
    common = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 10\r\n"
    heads = {
        "response head, no Set-Cookie (baseline)": common,
        "response head, host-only Set-Cookie": common + b"Set-Cookie: s=1; Path=/; HttpOnly\r\n",
        "response head, Set-Cookie with Domain": common + b"Set-Cookie: s=1; Domain=localhost\r\n",
    }
    for name, head in heads.items():
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            for _ in range(100):
                parse_response(head[:-2], b"GET", True)
            samples.append((time.perf_counter() - t) / 100)
        us = [x * 1e6 for x in samples]
        print(
            f"{name:<44} n={len(us):<5} p50={percentile(us, 50):7.2f} us  "
            f"p95={percentile(us, 95):7.2f} us  p99={percentile(us, 99):7.2f} us"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    print(f"load average: {Path('/proc/loadavg').read_text().strip()}")
    bench_unmount(args.n)
    bench_response_heads(args.n)
    print(f"load average: {Path('/proc/loadavg').read_text().strip()}")


if __name__ == "__main__":
    main()
