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

from bench._stats import report
from hutch import Sandbox
from tests._server import ServerProcess

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


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sandbox_cgroup(hierarchy: Path, sandbox_id: str) -> Path:
    """The sandbox's cgroup in `hierarchy`: `hutch/<home tag>/<id>` (one server runs here)."""
    found = sorted(hierarchy.glob(f"hutch/*/{sandbox_id}"))
    return found[0] if found else hierarchy / "hutch" / sandbox_id


def sandbox_cpu_seconds(sandbox_id: str) -> float:
    """CPU time of everything in the sandbox (the agent, here), from its cgroup (v2 or v1)."""
    v2 = sandbox_cgroup(Path("/sys/fs/cgroup"), sandbox_id) / "cpu.stat"
    v1 = sandbox_cgroup(Path("/sys/fs/cgroup/cpuacct"), sandbox_id) / "cpuacct.usage"
    try:
        if v2.exists():
            for line in v2.read_text().splitlines():
                if line.startswith("usage_usec"):
                    return int(line.split()[1]) / 1e6
        return int(v1.read_text()) / 1e9
    except (OSError, ValueError):
        return float("nan")


class CpuUse:
    """CPU seconds spent by the server, this client and the sandbox over a block: with the
    machine shared, MB per CPU-second says more than wall-clock MB/s."""

    def __init__(self, server_pid: int, sandbox_id: str) -> None:
        self.server_pid = server_pid
        self.sandbox_id = sandbox_id

    def __enter__(self) -> CpuUse:
        self._start = (
            cpu_seconds(self.server_pid),
            time.process_time(),
            sandbox_cpu_seconds(self.sandbox_id),
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.server = cpu_seconds(self.server_pid) - self._start[0]
        self.client = time.process_time() - self._start[1]
        self.agent = sandbox_cpu_seconds(self.sandbox_id) - self._start[2]

    def line(self, size: int) -> str:
        per = size / 1e6
        return (
            f"  cpu s: server {self.server:.2f} ({per / max(self.server, 1e-9):.0f} MB/cpu-s), "
            f"client {self.client:.2f} ({per / max(self.client, 1e-9):.0f}), "
            f"sandbox {self.agent:.2f} ({per / max(self.agent, 1e-9):.0f})"
        )


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
            with (
                PeakRss(server.proc.pid) as up,
                CpuUse(server.proc.pid, sb.id) as up_cpu,
                open(src, "rb") as f,
            ):
                t0 = time.perf_counter()
                written = sb.write_file("big.bin", f)
                upload = time.perf_counter() - t0
            assert written == size
            dst = tmp / "back.bin"
            with (
                PeakRss(server.proc.pid) as down,
                CpuUse(server.proc.pid, sb.id) as down_cpu,
                open(dst, "wb") as f,
            ):
                t0 = time.perf_counter()
                for chunk in sb.read_file_stream("big.bin"):
                    f.write(chunk)
                download = time.perf_counter() - t0
            assert dst.stat().st_size == size
            dst.unlink()

            print(f"{'host cp (same file, same disk)':<44} {mbps(size, host_cp)}")
            print(f"{'SDK write_file (file object, streamed)':<44} {mbps(size, upload)}")
            print(up_cpu.line(size))
            print(f"{'SDK read_file_stream':<44} {mbps(size, download)}")
            print(down_cpu.line(size))
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
