"""Exec latency through the agent vs. a plain fork+exec on the host, in the same process.

    .venv/bin/python bench/bench_agent.py [N]

The agent runs as a host process laid out as in a sandbox (no runc), so the figures are the
agent's and the protocol's own cost: one OPEN/RESULT round trip plus the agent's spawn and reap.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from typing import Any

from hutch._wire.frames import Kind
from hutch.agent._host import HostAgent
from hutch.node._agent_client import AgentConnection


def percentiles(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return f"p50 {q[49]:6.3f} ms   p95 {q[94]:6.3f} ms   p99 {q[98]:6.3f} ms"


async def timed_stream(conn: AgentConnection, request: dict[str, Any]) -> float:
    started = time.perf_counter()
    async for frame in conn.open_stream(request):
        if frame.kind is Kind.RESULT:
            break
    return (time.perf_counter() - started) * 1000


async def timed_call(conn: AgentConnection, op: str) -> float:
    started = time.perf_counter()
    await conn.call(op)
    return (time.perf_counter() - started) * 1000


async def through_agent(n: int) -> dict[str, list[float]]:
    argv = {"op": "exec", "argv": ["true"]}
    shell = {"op": "exec", "command": "true"}
    with HostAgent() as agent:
        conn = await AgentConnection.connect(agent.socket_path, timeout=5)
        try:
            for _ in range(50):  # warm up: the agent imports subprocess on its first exec
                await timed_stream(conn, argv)
            figures = {
                "agent ping": [await timed_call(conn, "ping") for _ in range(n)],
                "agent exec argv=['true']": [await timed_stream(conn, argv) for _ in range(n)],
                "agent exec command='true'": [await timed_stream(conn, shell) for _ in range(n)],
            }
            print(f"agent RSS after the runs: {(await conn.call('ping'))['rss_kb']} kB")
        finally:
            await conn.close()
    return figures


def on_host(n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        subprocess.run(["true"], check=True)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def main(n: int) -> None:
    figures = asyncio.run(through_agent(n))
    figures["host subprocess.run(['true'])"] = on_host(n)
    print(f"{n} runs each")
    for name, samples in figures.items():
        print(f"{name:32} {percentiles(samples)}")
    ratio = statistics.median(figures["agent exec argv=['true']"]) / statistics.median(
        figures["host subprocess.run(['true'])"]
    )
    print(f"agent exec / host subprocess at p50: {ratio:.2f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
