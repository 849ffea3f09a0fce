"""The agent's start-up of two Hutch builds, interleaved: CPU and wall to the first answer.

    .venv/bin/python bench/ab_agent_start.py --other /work/main/.venv/bin/python [--n 30]

Each build's agent code is laid out as in a sandbox (``build_code_dir``: an empty ``hutch``
package, ``_wire`` and ``agent``, compiled) and started as a host process the way the
runtime starts it: the server's connection and its ping are already queued on the listening
socket when the interpreter starts (a cold create waits for that answer). Per start: the
wall time from the spawn to the ping's answer, the agent's CPU up to then (all its threads,
``/proc/PID/task/*/schedstat``), the wall time of a first and a second ``exec true`` sent
``--gap`` ms after the answer (20 by default, as a server that finishes the create first
leaves it; 0 as a create that answered before its agent did: the exec is then at the agent
right behind the ping), and the
agent's CPU up to the end of the first exec (what it did after the answer included).
Both builds run on this interpreter, so only the agent's code differs; turns alternate
A B B A, and the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stats import percentile
from hutch._wire.frames import FrameDecoder, Kind, encode_json_frame
from hutch.agent._host import bootstrap_code


def _build(python: str, dest: Path) -> Path:
    subprocess.run(
        [
            python,
            "-c",
            "import sys; from pathlib import Path; from hutch.agent._host import build_code_dir; "
            "build_code_dir(Path(sys.argv[1]))",
            str(dest),
        ],
        check=True,
    )
    return dest


def _cpu_ms(pid: int) -> float:
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e6


def _until_result(conn: socket.socket, decoder: FrameDecoder, stream: int) -> None:
    while True:
        data = conn.recv(65536)
        if not data:
            raise RuntimeError("the agent closed the connection")
        for frame in decoder.feed(data):
            if frame.kind == Kind.RESULT and frame.stream == stream:
                return


def one_start(code: Path, workdir: Path, gap: float = 0.02) -> tuple[float, ...]:
    """(wall to the answer, CPU to the answer, first exec, second exec, CPU to the first
    exec's end), in ms."""
    path = workdir / "agent.sock"
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(str(path))
    conn.sendall(encode_json_frame(Kind.OPEN, 1, {"op": "ping"}))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HUTCH_AGENT_LISTEN_FD": str(listener.fileno()),
        "HUTCH_AGENT_WORKSPACE": str(workdir),
    }
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", bootstrap_code(str(code))],
        pass_fds=[listener.fileno()],
        env=env,
        cwd=workdir,
    )
    listener.close()
    try:
        decoder = FrameDecoder()
        _until_result(conn, decoder, 1)
        answered = (time.perf_counter() - started) * 1000
        cpu = _cpu_ms(proc.pid)
        time.sleep(gap)
        execs = []
        for stream in (3, 5):
            t0 = time.perf_counter()
            conn.sendall(encode_json_frame(Kind.OPEN, stream, {"op": "exec", "argv": ["true"]}))
            _until_result(conn, decoder, stream)
            execs.append((time.perf_counter() - t0) * 1000)
            if stream == 3:
                cpu_first = _cpu_ms(proc.pid)
    finally:
        conn.close()
        proc.terminate()
        proc.wait()
    return answered, cpu, execs[0], execs[1], cpu_first


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--other", required=True, help="the other build's python")
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--gap", type=float, default=20.0, help="ms from the answer to the exec")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hutch-ab-agent-"))
    codes = {
        "this": _build(sys.executable, tmp / "this"),
        "other": _build(args.other, tmp / "other"),
    }
    figures: dict[str, list[tuple[float, ...]]] = {n: [] for n in codes}
    loads = [os.getloadavg()]
    try:
        for name in codes:  # the page cache
            one_start(codes[name], tmp)
        for i in range(args.n):
            for name in list(codes) if i % 2 == 0 else list(codes)[::-1]:
                figures[name].append(one_start(codes[name], tmp, args.gap / 1000))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    loads.append(os.getloadavg())
    print(
        f"{args.n} starts each, interleaved, first exec {args.gap:g} ms after the answer; "
        f"load average {loads[0]} -> {loads[-1]}"
    )
    labels = (
        "wall to the answer",
        "CPU to the answer",
        "first exec (wall)",
        "second exec (wall)",
        "CPU to the first exec's end",
    )
    for j, label in enumerate(labels):
        print(f"{label}:")
        for name, samples in figures.items():
            values = [s[j] for s in samples]
            p50, p95 = percentile(values, 50), percentile(values, 95)
            print(f"  {name:6} p50 {p50:7.2f} p95 {p95:7.2f} ms")


if __name__ == "__main__":
    main()
