"""A disk snapshot pulled from one node to another (node/_disk_moves.py): `btrfs send` on the
sending node writes into the tunnel connection and `btrfs receive` on the receiving node reads
it, no Python copying in between. What a user would notice if it went wrong: a moved or
forked sandbox missing data, a half-received disk left behind to fill the node, a node that
sends a disk to anyone who asks, a move to or from a node of the previous Hutch that fails.

Two real btrfs pools on this machine stand for the two nodes; no sandbox runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import socket
import struct
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from hutch.node import DiskMoveFailed, TunnelServer, pull, send_into
from hutch.node._tunnel import Accept
from hutch.runtime.container._mounts import umount
from hutch.runtime.container._snapshots import DiskSnapshots
from hutch.runtime.container._storage import StoragePool

pytestmark = pytest.mark.sandbox

MB = 1 << 20
TOKEN = "node-token-for-tests"


@pytest.fixture()
def pools() -> Iterator[tuple[DiskSnapshots, DiskSnapshots]]:
    """The sending node's snapshots (one, `snap-a`, holding 8 MB of random data) and the
    receiving node's (none)."""
    homes = [Path(tempfile.mkdtemp(prefix="hutch-moves-", dir="/var/tmp")) for _ in range(2)]
    storages = [StoragePool(home, 1) for home in homes]
    try:
        for storage in storages:
            asyncio.run(storage.ensure())
        source = DiskSnapshots(storages[0])
        disk = storages[0].create("sb-1", 64 * MB)
        (disk / "upper").mkdir()
        (disk / "upper" / "data").write_bytes(os.urandom(8 * MB))
        (disk / "upper" / "small").write_text("kept")
        source.take("sb-1", "snap-a")
        yield source, DiskSnapshots(storages[1])
    finally:
        for storage, home in zip(storages, homes, strict=True):
            with contextlib.suppress(OSError):
                umount(storage.root)
            shutil.rmtree(home, ignore_errors=True)


@contextlib.asynccontextmanager
async def tunnels(sender: object) -> AsyncIterator[str]:
    """A node's tunnel listener on loopback sending snapshots with `sender`; yields the
    node API URL a puller is given (the tunnels listen on its port + 1)."""
    server = TunnelServer(TOKEN, lambda rid: Path("/nonexistent"), lambda rid: None, sender)  # type: ignore[arg-type]
    port = await server.start("127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{port - 1}"
    finally:
        await server.close()


def leftovers(snaps: DiskSnapshots) -> list[str]:
    return sorted(p.name for p in snaps.root.iterdir()) if snaps.root.is_dir() else []


async def test_a_snapshot_pulled_through_the_tunnel_arrives_whole_and_read_only(
    pools: tuple[DiskSnapshots, DiskSnapshots],
) -> None:
    source, target = pools
    async with tunnels(functools.partial(send_into, source)) as url:
        await pull(target, "snap-a", url, TOKEN)
    got = target.path("snap-a")
    sent = source.path("snap-a")
    assert (got / "upper" / "data").read_bytes() == (sent / "upper" / "data").read_bytes()
    assert (got / "upper" / "small").read_text() == "kept"
    with pytest.raises(OSError):
        (got / "upper" / "new").write_text("x")  # read-only, as a snapshot taken here
    assert leftovers(target) == ["snap-a"]  # the receive dir went


async def test_a_pull_without_the_node_token_gets_nothing_and_leaves_nothing(
    pools: tuple[DiskSnapshots, DiskSnapshots],
) -> None:
    source, target = pools
    async with tunnels(functools.partial(send_into, source)) as url:
        with pytest.raises(DiskMoveFailed, match="401"):
            await pull(target, "snap-a", url, "not-the-token")
        with pytest.raises(DiskMoveFailed, match="404"):
            await pull(target, "no-such-snapshot", url, TOKEN)
    assert leftovers(target) == []


def command_ends(stream: bytes) -> list[int]:
    """The offsets just after each of a send stream's commands (a stream header of 17 bytes,
    then commands: le32 payload length, le16 command, le32 crc, payload)."""
    assert stream.startswith(b"btrfs-stream\0")
    ends, at = [], 17
    while at < len(stream):
        (length,) = struct.unpack_from("<I", stream, at)
        at += 10 + length
        ends.append(at)
    assert ends[-1] == len(stream)  # read right: the last command ends the stream
    return ends


@pytest.mark.parametrize("cut", ["closed", "reset", "at a command's end"])
async def test_a_stream_cut_midway_leaves_no_half_subvolume(
    pools: tuple[DiskSnapshots, DiskSnapshots], cut: str
) -> None:
    source, target = pools
    stream = (
        await asyncio.to_thread(
            subprocess.run,
            ["btrfs", "send", "-q", str(source.path("snap-a"))],
            capture_output=True,
            check=True,
        )
    ).stdout
    assert len(stream) > 8 * MB
    end = len(stream) // 2
    if cut == "at a command's end":  # a stream that looks whole to whatever counts commands
        end = next(e for e in command_ends(stream) if e >= len(stream) // 2)
    assert end < len(stream) - 10

    async def half_then_gone(snapshot_id: str, accept: Accept) -> None:
        sock = await accept()
        with sock:
            sock.setblocking(True)
            await asyncio.to_thread(sock.sendall, stream[:end])
            if cut == "reset":  # as a sender whose btrfs send failed
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    async with tunnels(half_then_gone) as url:
        with pytest.raises(DiskMoveFailed, match="btrfs receive failed"):
            await pull(target, "snap-a", url, TOKEN)
    assert leftovers(target) == []
    assert not target.exists("snap-a")
    # ...and the next pull of it, whole, works.
    async with tunnels(functools.partial(send_into, source)) as url:
        await pull(target, "snap-a", url, TOKEN)
    assert (target.path("snap-a") / "upper" / "small").read_text() == "kept"


async def test_a_node_of_the_previous_hutch_is_pulled_from_over_http(
    pools: tuple[DiskSnapshots, DiskSnapshots],
) -> None:
    """A node without snapshot tunnels answers them 400; its node API's stream is used."""
    from hutch.node._disk_moves import send_stream

    source, target = pools
    served: list[str] = []

    async def stream(request: Request) -> Response:
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        served.append(request.path_params["snapshot"])
        chunks = await send_stream(source, request.path_params["snapshot"])
        return StreamingResponse(chunks, media_type="application/octet-stream")

    app = Starlette(routes=[Route("/node/v1/snapshots/{snapshot}/stream", stream)])
    old_tunnels = await asyncio.start_server(_answer_400, "127.0.0.1", 0)
    api_port = old_tunnels.sockets[0].getsockname()[1] - 1
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=api_port, log_level="warning", lifespan="off")
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
            assert not serving.done(), "the node API did not start (port taken?)"
        await pull(target, "snap-a", f"http://127.0.0.1:{api_port}", TOKEN)
    finally:
        server.should_exit = True
        await serving
        old_tunnels.close()
        await old_tunnels.wait_closed()
    assert served == ["snap-a"]
    sent = source.path("snap-a") / "upper" / "data"
    assert (target.path("snap-a") / "upper" / "data").read_bytes() == sent.read_bytes()
    assert leftovers(target) == ["snap-a"]


async def _answer_400(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A tunnel listener of the previous Hutch: `snapshot/...` is no target it knows."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    await writer.drain()
    writer.close()
