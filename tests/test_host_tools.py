"""Host tools (`ip`, `nft`, `nsenter`) run by the runtime without forking the server."""

from __future__ import annotations

import os

import pytest

from hutch.runtime.container._spawn import run_tool


async def test_a_tool_gets_its_input_and_gives_its_exit_code_and_errors() -> None:
    assert await run_tool(["sh", "-c", 'read line; echo "got $line" >&2; exit 3'], b"x\n") == (
        3,
        b"got x\n",
    )


async def test_an_input_bigger_than_a_pipe_and_a_long_error_both_get_through() -> None:
    data = os.urandom(300_000)
    code, err = await run_tool(["sh", "-c", "wc -c >&2; head -c 200000 /dev/zero >&2"], data)
    assert code == 0 and err.startswith(b"300000\n") and len(err) == 7 + 200_000


async def test_without_input_the_tool_reads_nothing() -> None:
    assert await run_tool(["sh", "-c", "wc -c >&2"]) == (0, b"0\n")


async def test_a_missing_tool_raises_and_leaks_no_fd() -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with pytest.raises(FileNotFoundError):
            await run_tool(["hutch-no-such-tool"], b"input")
    assert len(os.listdir("/proc/self/fd")) == before
