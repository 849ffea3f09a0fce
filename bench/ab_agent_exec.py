"""The agent's own CPU per exec, two builds interleaved: no server, no runc, no HTTP.

    .venv/bin/python bench/ab_agent_exec.py --other /work/main/.venv/bin/python [--rounds 6]

`bench/ab_exec.py` measures a whole sandbox's CPU per exec (agent + children), where the
agent's part is a few tenths of a millisecond among the other processes' noise. This runs
each build's agent on the host (`HostAgent`, as tests/test_agent.py does) and, in turns
A B B A ..., sends it `--n` execs of `true` (`--clients` at once), then reads the agent's own
CPU (all its threads) and its children's from /proc: the agent's part is what a change to
its spawn path moves. The load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

# One turn, run by the build's own interpreter (so its own hutch.agent is the one started).
_TURN = """
import asyncio, json, os, sys, time
from hutch._wire.frames import Kind
from hutch.agent._host import HostAgent
from hutch.node._agent_client import AgentConnection

n, clients, request = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])

def cpu(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick

async def one(conn):
    async for frame in conn.open_stream({"op": "exec", **request}):
        if frame.kind is Kind.RESULT:
            assert frame.json()["exit_code"] == 0, frame.json()
            return

async def main():
    with HostAgent() as agent:
        path = agent.socket_path
        conns = [await AgentConnection.connect(path, timeout=5) for _ in range(clients)]
        for conn in conns:
            for _ in range(20):
                await one(conn)
        before, t0 = cpu(agent.pid), time.perf_counter()
        async def loop(conn, count):
            for _ in range(count):
                await one(conn)
        await asyncio.gather(*(loop(c, n // clients) for c in conns))
        after, wall = cpu(agent.pid), time.perf_counter() - t0
        for conn in conns:
            await conn.close()
    done = n // clients * clients
    print(json.dumps([1000 * (after[0] - before[0]) / done, 1000 * (after[1] - before[1]) / done,
                      done / wall]))

asyncio.run(main())
"""


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--other", type=Path, required=True, help="the other build's python")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--n", type=int, default=2000, help="execs per turn")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--command", default="true", help="the exec's command")
    args = parser.parse_args()
    request = json.dumps({"command": args.command})
    sides = {"this": Path(sys.executable), "other": args.other}
    figures: dict[str, list[list[float]]] = {name: [] for name in sides}
    loads = [Path("/proc/loadavg").read_text().strip()]
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for name in order:
            out = subprocess.run(
                [str(sides[name]), "-c", _TURN, str(args.n), str(args.clients), request],
                check=True,
                capture_output=True,
                text=True,
                cwd="/",
            )
            figures[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    loads.append(Path("/proc/loadavg").read_text().strip())
    for name, turns in figures.items():
        for i, what in enumerate(("agent CPU ms/exec", "children CPU ms/exec", "execs/s")):
            values = [t[i] for t in turns]
            print(
                f"{name}: {what}: median {_median(values):.3f} "
                f"(turns: {', '.join(f'{v:.3f}' for v in values)})"
            )
    print(f"load average before: {loads[0]}")
    print(f"load average after:  {loads[-1]}")


if __name__ == "__main__":
    main()
