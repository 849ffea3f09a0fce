"""Exec round trip and 8-client throughput of two Hutch builds, interleaved in one run.

    .venv/bin/python bench/ab_exec.py --other /work/main/.venv/bin/python [--rounds 6]

On a shared machine the load moves more between two runs minutes apart than a change moves
the figures. This starts both servers at once (this checkout's and the one whose interpreter
`--other` names; each a sandbox of its own) and alternates between them in short turns —
A B B A A B ... — so that the load of any minute falls on both. Each turn: `--n` sequential
`sb.run("true")` (latency), then `--clients` clients for `--seconds` (throughput), with the
server's, the client's and the sandbox's CPU per exec, and the agent's own part of the
sandbox's (its process, all threads, without its children). The host baseline
(`subprocess.run(["true"])`) is taken in every turn too. Each turn's client is a process of
its build's own interpreter (that build's SDK: a change to the SDK shows), started and
warmed up before the clock starts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tests._server as test_server
from bench._stats import report
from bench.bench_files import cpu_seconds, sandbox_cpu_seconds
from bench.profile_exec import agent_pid
from hutch import Sandbox
from tests._server import ServerProcess
from tests.conftest import _cleanup_home


@dataclass
class Side:
    name: str
    python: Path
    server: ServerProcess
    sandbox: Sandbox | None = None
    latencies: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    cpu: list[tuple[float, float, float, float]] = field(default_factory=list)  # ms per exec


def _start(name: str, python: Path) -> Side:
    test_server.HUTCH_BIN = python.with_name("hutch")  # read by ServerProcess.start
    server = ServerProcess(Path(tempfile.mkdtemp(prefix=f"hutch-ab-{name}-", dir="/var/tmp")))
    server.start(timeout=180)
    return Side(name, python, server)


# The client of one turn, run by the build's own interpreter (public SDK calls only, so that
# any build runs it). Lines on stdin start its steps; it answers each with a JSON line.
_CLIENT = """
import json, sys, threading, time
from hutch import Sandbox
url, key, sandbox_id, n, clients, seconds = sys.argv[1:7]
n, clients, seconds = int(n), int(clients), float(seconds)
boxes = [Sandbox.connect(sandbox_id, base_url=url, api_key=key) for _ in range(clients)]
for box in boxes:
    for _ in range(5):
        box.run("true")  # connections made, first-call costs paid before the clock starts
print(json.dumps("ready"), flush=True)
sys.stdin.readline()
latencies = []
for _ in range(n):
    t0 = time.perf_counter()
    boxes[0].run("true")
    latencies.append(time.perf_counter() - t0)
print(json.dumps(latencies), flush=True)
sys.stdin.readline()
count = [0] * clients
stop = time.monotonic() + seconds
def loop(i):
    while time.monotonic() < stop:
        boxes[i].run("true")
        count[i] += 1
cpu0, t0 = time.process_time(), time.monotonic()
threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps([sum(count), time.monotonic() - t0, time.process_time() - cpu0]), flush=True)
"""


def _turn(side: Side, n: int, clients: int, seconds: float) -> None:
    assert side.sandbox is not None and side.server.proc is not None
    sb = side.sandbox
    args = [side.server.url, side.server.api_key, sb.id, str(n), str(clients), str(seconds)]
    client = subprocess.Popen(
        [str(side.python), "-c", _CLIENT, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdin is not None and client.stdout is not None

    def step() -> Any:
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write("go\n")
        client.stdin.flush()
        return json.loads(client.stdout.readline())

    try:
        assert json.loads(client.stdout.readline()) == "ready"
        side.latencies += step()
        pid, agent = side.server.proc.pid, agent_pid(sb.id)
        assert agent is not None
        before = (cpu_seconds(pid), sandbox_cpu_seconds(sb.id), cpu_seconds(agent))
        done, elapsed, client_cpu = step()
        after = (cpu_seconds(pid), sandbox_cpu_seconds(sb.id), cpu_seconds(agent))
    finally:
        client.stdin.close()
        client.wait()
    side.rates.append(done / elapsed)
    server, sandbox, agent_cpu = (1000 * (b - a) / done for a, b in zip(before, after, strict=True))
    side.cpu.append((server, 1000 * client_cpu / done, sandbox, agent_cpu))


def _host_true(n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(["true"], check=True)
        samples.append(time.perf_counter() - t0)
    return samples


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--other", type=Path, required=True, help="the other build's python")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--n", type=int, default=100, help="sequential execs per turn")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    loads = [Path("/proc/loadavg").read_text().strip()]
    sides = [_start("this", Path(sys.executable)), _start("other", args.other)]
    host: list[float] = []
    try:
        for side in sides:
            opts = {"base_url": side.server.url, "api_key": side.server.api_key}
            side.sandbox = Sandbox.create(**opts)
            for _ in range(20):
                side.sandbox.run("true")
        for r in range(args.rounds):
            order = sides if r % 2 == 0 else sides[::-1]
            for side in order:
                host += _host_true(50)
                _turn(side, args.n, args.clients, args.seconds)
        loads.append(Path("/proc/loadavg").read_text().strip())
    finally:
        for side in sides:
            if side.sandbox is not None:
                side.sandbox.destroy()
            side.server.stop()
            _cleanup_home(side.server)
    print(report("baseline: host subprocess.run(true)", host))
    for side in sides:
        print(report(f"{side.name}: exec round trip of `true`", side.latencies))
        per_round = ", ".join(f"{r:.0f}" for r in side.rates)
        print(
            f"{side.name}: {args.clients} clients: median {_median(side.rates):.0f} execs/s "
            f"(turns: {per_round})"
        )
        for i, what in enumerate(("server", "client", "sandbox", "agent (of sandbox)")):
            values = [c[i] for c in side.cpu]
            print(
                f"{side.name}: {what} CPU ms per exec ({args.clients} clients): median "
                f"{_median(values):.2f} (turns: {', '.join(f'{v:.2f}' for v in values)})"
            )
    print(f"load average before: {loads[0]}")
    print(f"load average after:  {loads[-1]}")


if __name__ == "__main__":
    main()
