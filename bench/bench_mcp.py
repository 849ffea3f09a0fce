"""MCP `exec` round trip (client -> `hutch mcp` -> server -> sandbox) next to the SDK's exec.

Run as root once the default image is built:

    .venv/bin/python bench/bench_mcp.py [--n 200]

One Hutch server and one sandbox; in the same run and on the same sandbox:
- baseline: the async SDK's ``exec("true")`` (one HTTP request to the server);
- ``exec`` through the real MCP client over stdio (``hutch mcp`` as a subprocess);
- ``exec`` through the real MCP client over streamable HTTP (``hutch mcp --transport http``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from bench._stats import report
from hutch import AsyncSandbox
from hutch.sdk import AsyncClient
from tests._server import HUTCH_BIN, ServerProcess, free_port
from tests.conftest import _cleanup_home


async def timed(call: Callable[[], Awaitable[object]], n: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        await call()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - t0)
    return samples


async def run(server: ServerProcess, n: int) -> None:
    client = AsyncClient(server.url, server.api_key)
    sb = await AsyncSandbox.create(client=client)
    try:
        sdk = await timed(lambda: sb.exec("true"), n)
        print(report("baseline: SDK exec('true')", sdk))

        env = {"PATH": os.environ["PATH"], "HUTCH_URL": server.url, "HUTCH_API_KEY": server.api_key}
        params = StdioServerParameters(command=str(HUTCH_BIN), args=["mcp"], env=env)
        args = {"sandbox_id": sb.id, "command": "true"}
        async with Client(params) as mcp:
            stdio = await timed(lambda: mcp.call_tool("exec", args), n)
        print(report("MCP exec over stdio", stdio))

        port = free_port()
        log = open(server.home / "mcp-bench.log", "ab")  # noqa: ASYNC230
        proc = subprocess.Popen(  # noqa: ASYNC220 - a bench, started once
            [str(HUTCH_BIN), "mcp", "--transport", "http", "--port", str(port)],
            env={**os.environ, **env},
            stdout=log,
            stderr=log,
        )
        try:
            url = f"http://127.0.0.1:{port}/mcp"
            for _ in range(300):
                try:
                    httpx.get(url, timeout=0.5)  # noqa: ASYNC210
                    break
                except httpx.HTTPError:
                    await asyncio.sleep(0.05)
            headers = {"Authorization": f"Bearer {server.api_key}"}
            async with (
                httpx2.AsyncClient(headers=headers, timeout=60) as http,
                Client(streamable_http_client(url, http_client=http)) as mcp,
            ):
                over_http = await timed(lambda: mcp.call_tool("exec", args), n)
            print(report("MCP exec over streamable HTTP", over_http))
        finally:
            proc.terminate()
            proc.wait(10)
            log.close()
        p50 = sorted(sdk)[len(sdk) // 2]
        for name, samples in (("stdio", stdio), ("http", over_http)):
            ratio = sorted(samples)[len(samples) // 2] / p50
            print(f"MCP {name} p50 / SDK p50 = {ratio:.2f}x")
    finally:
        await sb.destroy()
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    server = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-bench-", dir="/var/tmp")))
    server.start()
    try:
        asyncio.run(run(server, args.n))
    finally:
        server.stop()
        _cleanup_home(server)


if __name__ == "__main__":
    main()
