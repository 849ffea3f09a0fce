"""The agent's own CPU per exec, two builds interleaved: no server, no runc, no HTTP.

    .venv/bin/python bench/ab_agent_exec.py --other /work/main/.venv/bin/python [--rounds 6]

`bench/ab_exec.py` measures a whole sandbox's CPU per exec (agent + children), where the
agent's part is a few tenths of a millisecond among the other processes' noise. This runs
each build's agent on the host (`HostAgent`, as tests/test_agent.py does) and, in turns
A B B A ..., sends it `--n` execs of `true` (`--clients` at once), then reads the agent's own
CPU (all its threads) and its children's from /proc: the agent's part is what a change to
its spawn path moves. The load average is printed with the figures.

`--first`: a new agent's first exec instead, as a cold create's: each turn starts `--n`
agents one after another, and for each answers its first ping, then at once times one exec
of `true` and the one after it, and reads the agent's CPU from the ping's answer to the end
of that first exec (its deferred start-up runs in between: agent/_server.py).
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


# One `--first` turn: n new agents, each's first exec right after its first ping's answer.
_FIRST_TURN = """
import asyncio, glob, json, sys, time
from hutch._wire.frames import Kind
from hutch.agent._host import HostAgent
from hutch.node._agent_client import AgentConnection

n, request = int(sys.argv[1]), json.loads(sys.argv[3])

def cpu_ms(pid):  # all the agent's threads, in ns from schedstat (not its children)
    tasks = glob.glob(f"/proc/{pid}/task/*/schedstat")
    return sum(int(open(t).read().split()[0]) for t in tasks) / 1e6

async def one(conn):
    async for frame in conn.open_stream({"op": "exec", **request}):
        if frame.kind is Kind.RESULT:
            return

async def main():
    first, second, cpu = [], [], []
    for _ in range(n):
        with HostAgent() as agent:
            conn = await AgentConnection.connect(agent.socket_path, timeout=5)
            await conn.call("ping")
            before, t0 = cpu_ms(agent.pid), time.perf_counter()
            await one(conn)
            t1 = time.perf_counter()
            cpu.append(cpu_ms(agent.pid) - before)
            await one(conn)
            second.append(1000 * (time.perf_counter() - t1))
            first.append(1000 * (t1 - t0))
            await conn.close()
    med = lambda v: sorted(v)[len(v) // 2]
    print(json.dumps([med(first), med(second), med(cpu)]))

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
    parser.add_argument("--first", action="store_true", help="a new agent's first exec")
    args = parser.parse_args()
    turn, whats = _TURN, ("agent CPU ms/exec", "children CPU ms/exec", "execs/s")
    if args.first:
        turn = _FIRST_TURN
        whats = ("first exec ms (p50)", "second exec ms (p50)", "agent CPU ms, ping to first done")
    request = json.dumps({"command": args.command})
    sides = {"this": Path(sys.executable), "other": args.other}
    figures: dict[str, list[list[float]]] = {name: [] for name in sides}
    loads = [Path("/proc/loadavg").read_text().strip()]
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for name in order:
            out = subprocess.run(
                [str(sides[name]), "-c", turn, str(args.n), str(args.clients), request],
                check=True,
                capture_output=True,
                text=True,
                cwd="/",
            )
            figures[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    loads.append(Path("/proc/loadavg").read_text().strip())
    for name, turns in figures.items():
        for i, what in enumerate(whats):
            values = [t[i] for t in turns]
            print(
                f"{name}: {what}: median {_median(values):.3f} "
                f"(turns: {', '.join(f'{v:.3f}' for v in values)})"
            )
    print(f"load average before: {loads[0]}")
    print(f"load average after:  {loads[-1]}")


if __name__ == "__main__":
    main()
