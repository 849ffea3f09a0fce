"""`hutch mcp` with the real MCP client (the `mcp` package), over stdio and streamable HTTP,
against a real Hutch server running real sandboxes."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from hutch.mcp import available_tools
from tests._server import HUTCH_BIN, ServerProcess, free_port

pytestmark = pytest.mark.sandbox

ALWAYS = {"create_sandbox", "list_sandboxes", "destroy_sandbox", "exec"}


def _stdio_params(server: ServerProcess) -> StdioServerParameters:
    env = {"PATH": os.environ["PATH"], "HUTCH_URL": server.url, "HUTCH_API_KEY": server.api_key}
    return StdioServerParameters(command=str(HUTCH_BIN), args=["mcp"], env=env)


@pytest.fixture(scope="module")
def mcp_http(server: ServerProcess) -> Iterator[str]:
    port = free_port()
    env = dict(os.environ, HUTCH_URL=server.url, HUTCH_API_KEY=server.api_key)
    log_path = server.home / "mcp-http.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [str(HUTCH_BIN), "mcp", "--transport", "http", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=0.5)
            break
        except httpx.HTTPError:
            assert proc.poll() is None, log_path.read_text()
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(10)


@asynccontextmanager
async def _http_client(url: str, key: str) -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=120)
    async with http, Client(streamable_http_client(url, http_client=http)) as client:
        yield client


def _json(result: Any) -> Any:
    assert not result.is_error, result.content
    return json.loads(result.content[0].text)


def _error_text(result: Any) -> str:
    assert result.is_error, result.content
    return " ".join(getattr(c, "text", "") for c in result.content)


async def _round_trip(client: Client) -> None:
    names = {t.name for t in (await client.list_tools()).tools}
    assert ALWAYS <= names
    assert names == set(available_tools())
    info = _json(await client.call_tool("create_sandbox", {"labels": {"via": "mcp"}}))
    sid = info["id"]
    try:
        assert info["status"] == "running"
        listed = _json(await client.call_tool("list_sandboxes", {"labels": {"via": "mcp"}}))
        assert sid in [s["id"] for s in listed]
        r = _json(
            await client.call_tool(
                "exec", {"sandbox_id": sid, "command": "echo hi | tr a-z A-Z; echo err >&2"}
            )
        )
        assert (r["exit_code"], r["stdout"], r["stderr"]) == (0, "HI\n", "err\n")
        r = _json(await client.call_tool("exec", {"sandbox_id": sid, "command": "exit 3"}))
        assert r["exit_code"] == 3
        # Bad input: the error names the field.
        text = _error_text(
            await client.call_tool("exec", {"sandbox_id": sid, "command": "true", "bogus": 1})
        )
        assert "bogus" in text
        text = _error_text(await client.call_tool("exec", {"sandbox_id": sid}))
        assert "command" in text
        text = _error_text(
            await client.call_tool("exec", {"sandbox_id": sid, "command": "true", "timeout": "x"})
        )
        assert "timeout" in text
        text = _error_text(
            await client.call_tool("exec", {"sandbox_id": "sb-nope", "command": "true"})
        )
        assert "SandboxNotFound" in text and "sb-nope" in text
        unknown = await client.call_tool("no_such_tool", {})
        assert unknown.is_error and "no_such_tool" in unknown.content[0].text
        text = _error_text(await client.call_tool("create_sandbox", {"image": "no-such-image"}))
        assert "no-such-image" in text
    finally:
        _json(await client.call_tool("destroy_sandbox", {"sandbox_id": sid}))
    text = _error_text(await client.call_tool("destroy_sandbox", {"sandbox_id": sid}))
    assert "SandboxNotFound" in text


async def test_stdio_round_trip(server: ServerProcess) -> None:
    async with Client(_stdio_params(server)) as client:
        await _round_trip(client)


async def test_http_round_trip(server: ServerProcess, mcp_http: str) -> None:
    async with _http_client(mcp_http, server.api_key) as client:
        await _round_trip(client)


def test_http_needs_the_key(mcp_http: str) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.post(mcp_http, json=body, headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"


async def test_feature_tools_when_the_sdk_has_them(server: ServerProcess) -> None:
    """Files, processes, code and ports."""
    tools = set(available_tools())
    assert tools > ALWAYS, "the process, file, code and port tools are missing"
    async with Client(_stdio_params(server)) as client:
        sid = _json(await client.call_tool("create_sandbox", {}))["id"]
        try:
            if "write_file" in tools and "read_file" in tools:
                args = {"sandbox_id": sid, "path": "/workspace/a.txt", "content": "hello"}
                _json(await client.call_tool("write_file", args))
                read = await client.call_tool(
                    "read_file", {"sandbox_id": sid, "path": "/workspace/a.txt"}
                )
                assert read.content[0].text == "hello"
            if "list_files" in tools:
                listed = _json(
                    await client.call_tool("list_files", {"sandbox_id": sid, "path": "/workspace"})
                )
                assert listed is not None
            if "start_process" in tools:
                p = _json(
                    await client.call_tool(
                        "start_process",
                        {"sandbox_id": sid, "command": "for i in 1 2 3; do echo line$i; done"},
                    )
                )
                out = _json(
                    await client.call_tool(
                        "follow_process",
                        {"sandbox_id": sid, "process_id": p["id"], "wait_seconds": 5},
                    )
                )
                assert "line3" in out["stdout"], out
                assert out["next_since"] == len("line1\nline2\nline3\n")
            if "run_code" in tools:
                # The kernel's inline backend turns the figure into a PNG display.
                code = (
                    "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3]); plt.show()\n"
                    "print('done')"
                )
                r = await client.call_tool("run_code", {"sandbox_id": sid, "code": code})
                assert not r.is_error, r.content
                assert any(c.type == "image" for c in r.content)
            if "expose_port" in tools:
                r = _json(await client.call_tool("expose_port", {"sandbox_id": sid, "port": 8080}))
                assert str(sid) in r["url"]
        finally:
            await client.call_tool("destroy_sandbox", {"sandbox_id": sid})
