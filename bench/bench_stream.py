"""Streaming figures: exec_stream throughput to the SDK, next to a local pipe in the same run,
and how soon a byte the process writes reaches the SDK.

    .venv/bin/python bench/bench_stream.py [--bytes 2G] [--lines 300]

- throughput: stdout of `head -c SIZE /dev/zero` through agent -> server -> HTTP -> SDK
  (binary frames, no base64 or JSON per chunk), counted by the SDK; the baseline is
  `head -c SIZE /dev/zero | cat > /dev/null` on the host.
- first byte: a process in the sandbox prints time.time() and flushes, every 20 ms; the SDK
  subtracts it from its own clock on arrival (sandbox and host share CLOCK_REALTIME).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stats import report
from hutch import Sandbox
from tests._server import ServerProcess


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text[-1].upper() in units:
        return int(float(text[:-1]) * units[text[-1].upper()])
    return int(text)


def local_pipe(size: int) -> float:
    t0 = time.perf_counter()
    subprocess.run(f"head -c {size} /dev/zero | cat > /dev/null", shell=True, check=True)
    return size / (time.perf_counter() - t0)


def exec_stream(sb: Sandbox, size: int) -> float:
    got = 0
    t0 = time.perf_counter()
    for event in sb.exec_stream(f"head -c {size} /dev/zero"):
        got += len(event.data)
    elapsed = time.perf_counter() - t0
    assert got == size, (got, size)
    return size / elapsed


FIRST_BYTE = (
    "import time, sys\n"
    "for _ in range({n}):\n"
    "    time.sleep(0.02)\n"
    "    sys.stdout.write(repr(time.time()) + '\\n'); sys.stdout.flush()\n"
)


def first_byte(sb: Sandbox, lines: int) -> list[float]:
    samples: list[float] = []
    pending = b""
    for event in sb.run_stream("python3", ["-c", FIRST_BYTE.format(n=lines)]):
        now = time.time()
        if event.type != "stdout":
            continue
        pending += event.data
        *done, pending = pending.split(b"\n")
        samples.extend(now - float(line) for line in done)
    return samples[10:]  # the first ones pay for python's warm-up of the path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bytes", default="2G")
    parser.add_argument("--lines", type=int, default=300)
    args = parser.parse_args()
    size = parse_size(args.bytes)

    server = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-bench-", dir="/var/tmp")))
    server.start()
    try:
        sb = Sandbox.create(base_url=server.url, api_key=server.api_key)
        try:
            exec_stream(sb, 64 << 20)  # warm up
            base = local_pipe(size)
            ours = exec_stream(sb, size)
            print(f"baseline: local pipe (head | cat)            {base / 1e6:10.1f} MB/s")
            print(
                f"exec_stream to the SDK ({size >> 20} MiB)          {ours / 1e6:10.1f} MB/s"
                f"  ({ours / base:.2f} of the pipe)"
            )
            print(report("first byte: process write -> SDK", first_byte(sb, args.lines)))
        finally:
            sb.destroy()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
