"""Big file transfers through the real agent (run on the host) and the server's agent client:
bytes arrive exact in frames of at most CHUNK, ranges across frame edges, the agent's heap is
given back after a transfer, and a peer that cuts a frame short or sends garbage fails the
streams at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hutch._wire.frames import FRAME_HEADER, Channel, Frame, Kind, encode_frame
from hutch.agent._file_transfer import CHUNK
from hutch.agent._host import HostAgent
from hutch.agent._replace import replace_file
from hutch.node._agent_client import AgentConnection
from tests.test_agent import FakeAgent, read_open, stream_breaks

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def agent() -> Iterator[HostAgent]:
    with HostAgent() as host:
        yield host


async def write(conn: AgentConnection, path: str, data: bytes) -> dict[str, Any]:
    stream = conn.open_stream({"op": "write", "path": path})
    async with asyncio.timeout(60):
        first = await anext(stream)
        assert first.kind is Kind.EVENT, first
        await stream.send_stdin(data, chunk_size=MiB)
        await stream.close_stdin()
        frames = [f async for f in stream]
    assert frames[-1].kind is Kind.RESULT
    return frames[-1].json()


async def read(conn: AgentConnection, path: str, **request: Any) -> tuple[bytes, list[Frame]]:
    stream = conn.open_stream({"op": "read", "path": path, **request})
    async with asyncio.timeout(60):
        frames = [f async for f in stream]
    result = frames[-1].json()
    assert result.get("ok"), result
    data = [f for f in frames if f.kind is Kind.DATA]
    return b"".join(f.payload for f in data), data


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_a_big_file_arrives_exact_and_ranges_cross_frame_edges(
    agent: HostAgent, conn: AgentConnection
) -> None:
    # Not a repeated block: a frame put in the wrong place would not go unnoticed.
    data = os.urandom(5 * MiB + 12345)
    assert (await write(conn, "big.bin", data))["size"] == len(data)
    assert hashlib.sha256((agent.workspace / "big.bin").read_bytes()).digest() == (
        hashlib.sha256(data).digest()
    )
    back, frames = await read(conn, "big.bin")
    assert back == data
    assert all(0 < len(f.payload) <= CHUNK for f in frames)
    offsets = [f.offset for f in frames]
    assert offsets == [sum(len(f.payload) for f in frames[:i]) for i in range(len(frames))]
    for offset, length in [(CHUNK - 1, 2), (CHUNK - 7, 2 * CHUNK + 9), (3 * CHUNK, None)]:
        got, _ = await read(conn, "big.bin", offset=offset, length=length)
        assert got == data[offset : None if length is None else offset + length]


async def test_a_big_write_over_a_file_replaces_it_whole(
    agent: HostAgent, conn: AgentConnection
) -> None:
    # A big write over a file swaps the names (no btrfs flush-on-rename) and unlinks the old
    # file: a reader that had the old file open keeps reading it whole, the path has the new
    # bytes, the old file is gone and no temporary file is left.
    target = agent.workspace / "swap.bin"
    target.write_bytes(b"old" * 100_000)
    os.chmod(target, 0o640)
    old = os.open(target, os.O_RDONLY)
    try:
        data = os.urandom(2 * MiB + 7)
        assert (await write(conn, "swap.bin", data))["size"] == len(data)
        assert target.read_bytes() == data
        assert os.pread(old, 400_000, 0) == b"old" * 100_000
        assert os.fstat(old).st_nlink == 0
    finally:
        os.close(old)
    assert os.stat(target).st_mode & 0o777 == 0o640
    assert sorted(p.name for p in agent.workspace.iterdir() if "swap" in p.name) == ["swap.bin"]


def test_replace_file_refuses_a_target_that_became_a_directory(tmp_path: Path) -> None:
    temp, target = tmp_path / ".t.hutch-1", tmp_path / "t"
    temp.write_bytes(b"new")
    target.mkdir()
    (target / "inside").write_bytes(b"kept")
    with pytest.raises(IsADirectoryError):
        replace_file(str(temp), str(target))
    assert (target / "inside").read_bytes() == b"kept" and temp.read_bytes() == b"new"
    # And with a file there, the temp takes its place.
    (target / "inside").unlink()
    target.rmdir()
    target.write_bytes(b"old")
    replace_file(str(temp), str(target))
    assert target.read_bytes() == b"new" and not temp.exists()


async def test_the_agent_gives_its_heap_back_after_a_big_transfer(
    agent: HostAgent, conn: AgentConnection
) -> None:
    data = os.urandom(MiB) * 48
    before = rss_kb(agent.pid)
    for _ in range(2):
        await write(conn, "heap.bin", data)
        back, _ = await read(conn, "heap.bin")
        assert len(back) == len(data)
    del back
    # The agent keeps its heap while frames come and go, and trims it shortly after.
    await asyncio.sleep(1.5)
    grown = rss_kb(agent.pid) - before
    assert grown < 4 * 1024, f"the agent kept {grown} kB after the transfers"


async def test_a_frame_cut_short_fails_the_stream_at_once(tmp_path: Path) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream, _ = await read_open(reader)
        writer.write(FRAME_HEADER.pack(Kind.DATA, Channel.STDOUT, stream, 0, 1000) + b"x" * 10)
        await writer.drain()

    request = {"op": "read", "path": "x"}
    c = await stream_breaks(tmp_path / "a.sock", script, request, "closed the connection")
    assert c.closed
    await c.close()


async def test_an_unknown_frame_kind_drops_the_connection(tmp_path: Path) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream, _ = await read_open(reader)
        writer.write(FRAME_HEADER.pack(99, 0, stream, 0, 0))
        await writer.drain()
        await reader.read()

    request = {"op": "read", "path": "x"}
    c = await stream_breaks(tmp_path / "a.sock", script, request, "unknown frame kind 99")
    await c.close()


async def test_frames_split_anyhow_and_packed_together_come_out_whole(tmp_path: Path) -> None:
    big = os.urandom(3 * MiB + 5)
    wire = b"".join(
        [
            encode_frame(Kind.DATA, 1, b"a", Channel.STDOUT, 0),
            encode_frame(Kind.DATA, 1, big, Channel.STDOUT, 1),
            encode_frame(Kind.DATA, 1, b"", Channel.STDOUT, 1 + len(big)),
            encode_frame(Kind.EOF, 1, b"", Channel.STDOUT, 1 + len(big)),
            encode_frame(Kind.RESULT, 1, b'{"ok": true, "size": 3}'),
        ]
    )

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream, _ = await read_open(reader)
        assert stream == 1
        # Pieces of every size: inside a header, across a header, inside a payload.
        rest = wire
        for size in [1, 7, 20, 1000, 65536, MiB + 3, 3]:
            writer.write(rest[:size])
            await writer.drain()
            await asyncio.sleep(0.01)
            rest = rest[size:]
        writer.write(rest)  # the rest, several frames in one write
        await writer.drain()
        await reader.read()

    async with FakeAgent(tmp_path / "a.sock", script):
        c = await AgentConnection.connect(tmp_path / "a.sock", timeout=5)
        stream = c.open_stream({"op": "read", "path": "x"})
        async with asyncio.timeout(10):
            frames = [f async for f in stream]
        await c.close()
    assert [f.kind for f in frames] == [Kind.DATA, Kind.DATA, Kind.DATA, Kind.EOF, Kind.RESULT]
    assert frames[0].payload == b"a" and frames[1].payload == big and frames[2].payload == b""
    assert [f.offset for f in frames[:4]] == [0, 1, 1 + len(big), 1 + len(big)]
