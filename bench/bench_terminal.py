"""Terminal figures: keystroke echo round trip and `cat` throughput through a terminal.

Run as root after the default image is built:

    .venv/bin/python bench/bench_terminal.py [--n 300] [--mb 100]

Echo: one byte typed over the WebSocket into a pty running `cat` (the tty echoes it), timed
until it comes back on the WebSocket. Baseline in the same run: the same echo through a local
pty on the host (os.openpty + cat), no network, no sandbox.

Throughput: `cat` of an N MB file in the terminal, counted as bytes reach the client.
Baseline: the same file through `exec_stream` (the binary-frames HTTP stream).
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


def local_pty_echo(n: int) -> list[float]:
    master, slave = os.openpty()
    proc = subprocess.Popen(
        ["cat"], stdin=slave, stdout=slave, stderr=slave, start_new_session=True
    )
    os.close(slave)
    samples = []
    try:
        for i in range(n):
            byte = bytes([97 + i % 26])
            t0 = time.perf_counter()
            os.write(master, byte)
            got = b""
            while byte not in got:
                got += os.read(master, 1024)
            samples.append(time.perf_counter() - t0)
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
    return samples


def terminal_echo(sb: Sandbox, n: int) -> list[float]:
    t = sb.terminal(cols=80, rows=24)
    try:
        t.send("exec cat\n")
        t.read_until(b"exec cat\r\n")
        time.sleep(0.3)
        samples = []
        for i in range(n):
            byte = bytes([97 + i % 26])
            t0 = time.perf_counter()
            t.send(byte)
            got = b""
            while byte not in got:
                got += t.recv(timeout=10)
            samples.append(time.perf_counter() - t0)
            if i % 60 == 59:
                t.send(b"\r")  # keep the line short
                t.read_until(b"\n")
        return samples
    finally:
        t.close()


def terminal_cat(sb: Sandbox, path: str) -> tuple[int, float]:
    t = sb.terminal(cols=200, rows=50)
    try:
        t.send("stty -echo; echo READY\n")
        t.read_until(b"READY\r\n")
        marker = b"CAT-DONE-MARKER"
        t.send(f"cat {path}; echo CAT-DONE-''MARKER\n")
        received = 0
        tail = b""
        t0 = time.perf_counter()
        while True:
            chunk = t.recv(timeout=60)
            received += len(chunk)
            if marker in tail[-32:] + chunk:
                break
            tail = chunk
        return received, time.perf_counter() - t0
    finally:
        t.close()


def host_pty_cat(mb: int) -> tuple[int, float]:
    """The kernel's own pty throughput on this host: cat into a local pty, read as fast as
    possible (the ceiling for any terminal, before the network and the sandbox)."""
    with tempfile.NamedTemporaryFile(dir="/var/tmp") as f:
        line = b"x" * 79 + b"\n"
        f.write(line * (mb * 1_000_000 // len(line)))
        f.flush()
        master, slave = os.openpty()
        t0 = time.perf_counter()
        proc = subprocess.Popen(["cat", f.name], stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        received = 0
        while True:
            try:
                data = os.read(master, 1 << 20)
            except OSError:  # EIO: cat has exited and closed the slave
                break
            if not data:
                break
            received += len(data)
        proc.wait()
        os.close(master)
        return received, time.perf_counter() - t0


IN_SANDBOX_PTY = """
import os, subprocess, sys, time
master, slave = os.openpty()
t0 = time.perf_counter()
proc = subprocess.Popen(["cat", sys.argv[1]], stdout=slave, stderr=slave, start_new_session=True)
os.close(slave)
n = 0
while True:
    try:
        data = os.read(master, 1 << 20)
    except OSError:
        break
    if not data:
        break
    n += len(data)
print(n, time.perf_counter() - t0)
"""


def sandbox_pty_cat(sb: Sandbox, path: str) -> tuple[int, float]:
    """The same pty ceiling measured inside the sandbox (its CPU share, seccomp, devpts)."""
    received, seconds = sb.run("python3", ["-c", IN_SANDBOX_PTY, path]).stdout.split()
    return int(received), float(seconds)


def exec_cat(sb: Sandbox, path: str) -> tuple[int, float]:
    received = 0
    t0 = time.perf_counter()
    for event in sb.exec_stream(f"cat {path}"):
        received += len(event.data or b"")
    return received, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--mb", type=int, default=100)
    args = parser.parse_args()

    server = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-bench-", dir="/var/tmp")))
    server.start()
    try:
        sb = Sandbox.create(base_url=server.url, api_key=server.api_key, memory_mb=2048)
        try:
            print(report("baseline: local pty echo (host, no sandbox)", local_pty_echo(args.n)))
            print(report("hutch: keystroke echo WebSocket->pty->back", terminal_echo(sb, args.n)))
            path = "/tmp/big.txt"
            # Printable lines, as a terminal would show them (80 chars each).
            sb.exec(f"yes {'x' * 79} | head -c {args.mb * 1_000_000} > {path}")
            received, seconds = host_pty_cat(args.mb)
            rate = received / seconds / 1e6
            name = "baseline: cat into a host pty (kernel)"
            print(f"{name:<44} {received / 1e6:8.1f} MB in {seconds:6.2f} s = {rate:7.1f} MB/s")
            for name, run in (
                ("baseline: cat into a pty in the sandbox", sandbox_pty_cat),
                ("baseline: exec_stream cat (HTTP frames)", exec_cat),
                ("hutch: terminal cat (WebSocket)", terminal_cat),
            ):
                received, seconds = run(sb, path)
                rate = received / seconds / 1e6
                print(f"{name:<44} {received / 1e6:8.1f} MB in {seconds:6.2f} s = {rate:7.1f} MB/s")
        finally:
            sb.destroy()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
