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
FEATURES = {
    "start_process",
    "follow_process",
    "kill_process",
    "read_file",
    "write_file",
    "list_files",
    "run_code",
    "expose_port",
}


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


async def test_feature_tools(server: ServerProcess) -> None:
    """Files, processes (kill included), code and ports, each called for real, with the errors
    a model gets back when a call goes wrong."""
    tools = set(available_tools())
    assert tools == ALWAYS | FEATURES, tools ^ (ALWAYS | FEATURES)
    async with Client(_stdio_params(server)) as client:
        listed_tools = {t.name for t in (await client.list_tools()).tools}
        assert listed_tools == tools
        sid = _json(await client.call_tool("create_sandbox", {}))["id"]
        try:
            # Files: written, read back, listed (with its size), and errors that name the path.
            args = {"sandbox_id": sid, "path": "/workspace/a.txt", "content": "hello"}
            assert _json(await client.call_tool("write_file", args)) == {
                "written": "/workspace/a.txt",
                "bytes": 5,
            }
            read = await client.call_tool(
                "read_file", {"sandbox_id": sid, "path": "/workspace/a.txt"}
            )
            assert not read.is_error and read.content[0].text == "hello"
            listed = _json(
                await client.call_tool("list_files", {"sandbox_id": sid, "path": "/workspace"})
            )
            entry = next(e for e in listed if e["name"] == "a.txt")
            assert entry["size"] == 5 and entry["type"] == "file", entry
            text = _error_text(
                await client.call_tool("read_file", {"sandbox_id": sid, "path": "/workspace/no"})
            )
            assert "FileNotFound" in text and "/workspace/no" in text, text
            text = _error_text(
                await client.call_tool(
                    "list_files", {"sandbox_id": sid, "path": "/workspace/a.txt"}
                )
            )
            assert "not_a_directory" in text or "not a directory" in text, text

            # Processes: output followed from an offset, then one killed for real.
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
            sleeper = _json(
                await client.call_tool(
                    "start_process",
                    {"sandbox_id": sid, "command": "echo up; sleep 600", "process_id": "sleeper"},
                )
            )
            assert sleeper["status"] == "running"
            killed = _json(
                await client.call_tool(
                    "kill_process",
                    {"sandbox_id": sid, "process_id": "sleeper", "signal": "SIGKILL"},
                )
            )
            assert killed == {"killed": "sleeper", "signal": "SIGKILL"}
            after = _json(
                await client.call_tool(
                    "follow_process",
                    {"sandbox_id": sid, "process_id": "sleeper", "wait_seconds": 10},
                )
            )
            assert after["status"] == "killed" and after["stdout"] == "up\n", after
            for bad in (
                {"process_id": "no-such-process"},
                {"process_id": "sleeper", "signal": "SIGBOGUS"},
            ):
                text = _error_text(
                    await client.call_tool("kill_process", {"sandbox_id": sid, **bad})
                )
                assert bad.get("signal", bad["process_id"]) in text, text

            # Code: the kernel's inline backend turns the figure into a PNG display; an
            # exception comes back as its name and message.
            code = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3]); plt.show()\nprint('done')"
            r = await client.call_tool("run_code", {"sandbox_id": sid, "code": code})
            assert not r.is_error, r.content
            assert any(c.type == "image" for c in r.content)
            assert any(getattr(c, "text", "") == "done\n" for c in r.content), r.content
            r = await client.call_tool(
                "run_code", {"sandbox_id": sid, "code": "raise ValueError('bad value')"}
            )
            assert "ValueError: bad value" in " ".join(getattr(c, "text", "") for c in r.content)
            text = _error_text(
                await client.call_tool(
                    "run_code", {"sandbox_id": sid, "code": "1", "language": "cobol"}
                )
            )
            assert "cobol" in text, text

            # Ports: a preview URL for this sandbox; a bad port is an error naming it.
            r = _json(await client.call_tool("expose_port", {"sandbox_id": sid, "port": 8080}))
            assert r["port"] == 8080 and str(sid) in r["url"]
            text = _error_text(
                await client.call_tool("expose_port", {"sandbox_id": sid, "port": 70000})
            )
            assert "port" in text, text
        finally:
            await client.call_tool("destroy_sandbox", {"sandbox_id": sid})
