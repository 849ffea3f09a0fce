"""File figures: 1 GiB write and read through the SDK, and list_files of a 10,000-entry tree.

Run as root after the default image is built:

    .venv/bin/python bench/bench_files.py [--size-mb 1024] [--n 20]

Baselines in the same run: host `cp` of the same file (to a file on the same disk, then back),
and the server's peak RSS while the transfers run (it must stay bounded: bodies are streamed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stats import report  # noqa: E402
from hutch import Sandbox  # noqa: E402
from tests._server import ServerProcess  # noqa: E402

CHUNK = 1024 * 1024


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class PeakRss:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb(self.pid))

    def __enter__(self) -> PeakRss:
        self.peak = rss_mb(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def mbps(size: int, seconds: float) -> str:
    return f"{size / seconds / 1e6:8.1f} MB/s ({seconds:.2f} s)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--n", type=int, default=20, help="list_files repetitions")
    args = parser.parse_args()
    size = args.size_mb * 1024 * 1024

    tmp = Path(tempfile.mkdtemp(prefix="hutch-bench-files-", dir="/var/tmp"))
    tmp.chmod(0o755)
    server = ServerProcess(tmp / "home")
    server.start()
    assert server.proc is not None
    try:
        src = tmp / "big.bin"
        with open(src, "wb") as f:
            block = os.urandom(CHUNK)
            for _ in range(size // CHUNK):
                f.write(block)
        # Baseline: host cp of the same file, both ways, from a warm page cache.
        subprocess.run(["cat", str(src)], stdout=subprocess.DEVNULL, check=True)
        t0 = time.perf_counter()
        subprocess.run(["cp", str(src), str(tmp / "copy.bin")], check=True)
        host_cp = time.perf_counter() - t0
        (tmp / "copy.bin").unlink()

        with Sandbox.create(
            base_url=server.url, api_key=server.api_key, disk_mb=args.size_mb * 2 + 1024
        ) as sb:
            idle = rss_mb(server.proc.pid)
            with PeakRss(server.proc.pid) as up, open(src, "rb") as f:
                t0 = time.perf_counter()
                written = sb.write_file("big.bin", f)
                upload = time.perf_counter() - t0
            assert written == size
            dst = tmp / "back.bin"
            with PeakRss(server.proc.pid) as down, open(dst, "wb") as f:
                t0 = time.perf_counter()
                for chunk in sb.read_file_stream("big.bin"):
                    f.write(chunk)
                download = time.perf_counter() - t0
            assert dst.stat().st_size == size
            dst.unlink()

            print(f"{'host cp (same file, same disk)':<44} {mbps(size, host_cp)}")
            print(f"{'SDK write_file (file object, streamed)':<44} {mbps(size, upload)}")
            print(f"{'SDK read_file_stream':<44} {mbps(size, download)}")
            print(
                f"{'server RSS idle / peak up / peak down':<44} {idle:8.1f} / {up.peak:.1f} / "
                f"{down.peak:.1f} MB  (file: {size / 2**20:.0f} MiB)"
            )
            sb.remove("big.bin")

            # list_files of a 10,000-entry tree: 100 directories of 99 files.
            r = sb.exec(
                "mkdir -p /workspace/tree && cd /workspace/tree && for d in $(seq 100); do "
                "mkdir d$d; (cd d$d && touch $(seq -f f%g 99)); done"
            )
            assert r.exit_code == 0, r.stderr
            samples = []
            for _ in range(args.n):
                t0 = time.perf_counter()
                entries = sb.list_files("tree", recursive=True)
                samples.append(time.perf_counter() - t0)
            assert len(entries) == 10_000, len(entries)
            base = []
            for _ in range(args.n):
                t0 = time.perf_counter()
                sb.exec("find /workspace/tree -printf '%y %s %m %T@ %p\\n' >/dev/null")
                base.append(time.perf_counter() - t0)
            print(report("list_files(tree, recursive) 10,000 entries", samples))
            print(report("baseline: exec find -printf of the same tree", base))
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
