"""A disk snapshot moved from one node to another (`hutch node drain --move`, a fork's child
sent to another node): the node that holds it sends it as a `btrfs send` stream, the node that
is to hold it pulls that stream straight into `btrfs receive`, with the cluster's node token.
Nothing is written to disk in between, and nothing passes through the API replicas.

    CONNECT snapshot/{id}  (tunnel port)         the stream, unframed (node/_tunnel.py)
    GET  /node/v1/snapshots/{id}/stream          the same, as a chunked HTTP body (older nodes)
    POST /node/v1/snapshots/{id}/pull  {source}  receive it from the node API at `source`

Through the tunnel the two btrfs processes have the connection as their stdout and stdin: no
Python copies a byte on either node. The HTTP stream is what a node of an older Hutch serves
(it answers the tunnel 400); the puller falls back to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from hutch.node._tunnel import Accept, StreamUnavailable, TunnelRefused, open_raw_tunnel
from hutch.runtime import (
    SandboxRuntimeError,
    StorageError,
    receive_dir,
    remove_received,
    snapshot_subvolume,
)

log = logging.getLogger("hutch.node")

CHUNK = 1 << 20
# Seconds without a byte before a transfer is given up (a stream, not a call: no total bound).
STALL_TIMEOUT = 60.0
CONNECT_TIMEOUT = 2.0


@functools.cache
def node_tls() -> ssl.SSLContext:
    # NB: made once: a client's own default context loads the CA bundle each time (~45 ms of
    # CPU per pull here, under load), for node addresses that are mostly plain http.
    return ssl.create_default_context()


class DiskMoveFailed(SandboxRuntimeError):
    """The snapshot could not be sent or received (the other node, btrfs)."""


class Snapshots(Protocol):
    """A node's disk snapshots (the runtime's `DiskSnapshots`)."""

    root: Path

    def exists(self, snapshot_id: str) -> bool: ...

    async def sendable(self, snapshot_id: str) -> Path: ...


def _timeout(seconds: float) -> bytes:
    return struct.pack("ll", int(seconds), 0)  # struct timeval


async def send_into(snaps: Snapshots, snapshot_id: str, accept: Accept) -> None:
    """The snapshot (or a fork's copy, made read-only) as a `btrfs send` stream into the
    tunnel connection `accept` hands over (raises StreamUnavailable first if it is not
    here). A send that fails resets the connection, so the receiver cannot take what it
    got for the whole stream."""
    try:
        path = await snaps.sendable(snapshot_id)
    except StorageError as exc:
        raise StreamUnavailable(f"snapshot {snapshot_id} cannot be sent: {exc}") from exc
    sock = await accept()
    ok = False
    try:
        sock.setblocking(True)  # NB: btrfs writes to it; a stalled reader fails its write:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeout(STALL_TIMEOUT))
        proc = await asyncio.create_subprocess_exec(
            "btrfs", "send", "-q", str(path),
            stdout=sock.fileno(), stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            err = await proc.stderr.read()  # type: ignore[union-attr]
            ok = await proc.wait() == 0
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if not ok:
            log.warning("snapshot %s: btrfs send failed: %s", snapshot_id,
                        err.decode(errors="replace").strip())  # fmt: skip
    finally:
        if not ok:
            # A reset, not an end: the receiver's read fails instead of ending the stream.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


async def send_stream(snaps: Snapshots, snapshot_id: str) -> AsyncIterator[bytes]:
    """The snapshot (or a fork's copy, made read-only) as a `btrfs send` stream, for the
    HTTP endpoint (raises DiskMoveFailed if it is not there)."""
    try:
        path = await snaps.sendable(snapshot_id)
    except StorageError as exc:
        raise DiskMoveFailed(f"snapshot {snapshot_id} cannot be sent: {exc}") from exc
    proc = await asyncio.create_subprocess_exec(
        "btrfs",
        "send",
        "-q",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while chunk := await proc.stdout.read(CHUNK):  # type: ignore[union-attr]
                yield chunk
            # A failed send ends the stream early: the receiver's btrfs refuses the rest.
            await proc.wait()
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    return chunks()


async def pull(snaps: Snapshots, snapshot_id: str, source: str, token: str) -> None:
    """Receive snapshot `snapshot_id` from the node at `source` (its node API's URL) into
    this node's snapshots (read-only, as `take` makes them). Whatever fails, nothing of it
    stays here."""
    if snaps.exists(snapshot_id):
        raise DiskMoveFailed(f"snapshot {snapshot_id} is on this node already")
    snaps.root.mkdir(mode=0o700, exist_ok=True)
    into = receive_dir(snaps.root)
    started, how = time.perf_counter(), "through the tunnel"
    try:
        if not await _receive_direct(into, snapshot_id, source, token):
            size = await _receive_copied(into, snapshot_id, source, token)
            how = f"{size / 1e6:.1f} MB over HTTP"
        streamed = time.perf_counter()
        # The stream names the subvolume as the sender had it (a fork's copy is sent as
        # `<id>.sent`: DiskSnapshots.sendable): the one subvolume received, whatever its name.
        received = list(into.iterdir())
        if len(received) != 1:
            raise DiskMoveFailed(f"snapshot {snapshot_id}: received {len(received)} subvolumes")
        # NB: a snapshot, not a rename: a read-only subvolume cannot change its parent.
        await asyncio.to_thread(
            snapshot_subvolume, received[0], snaps.root, snapshot_id, read_only=True
        )
    finally:
        stored = time.perf_counter()
        await asyncio.to_thread(remove_received, into)
    # Where a move's or a sent fork's time goes (docs/performance.md).
    log.info(
        "snapshot %s pulled from %s (%s): streamed and received in %.3f s, kept in %.3f s, "
        "the received one removed in %.3f s", snapshot_id, source, how,
        streamed - started, stored - streamed, time.perf_counter() - stored,
    )  # fmt: skip


async def _receive_direct(into: Path, snapshot_id: str, source: str, token: str) -> bool:
    """`btrfs receive` reading the sender's tunnel connection itself; False: the source is a
    node of an older Hutch (no such tunnel), nothing done."""
    parts = urlsplit(source)
    host = parts.hostname or "127.0.0.1"
    # The tunnels listen next to the node API (node/_remote.py: port + 1).
    port = (parts.port or (443 if parts.scheme == "https" else 80)) + 1
    try:
        sock = await open_raw_tunnel(
            host, port, f"snapshot/{snapshot_id}", token, timeout=CONNECT_TIMEOUT
        )
    except TunnelRefused as exc:
        if exc.status == 400:
            return False
        raise DiskMoveFailed(f"{source} refused snapshot {snapshot_id}: {exc}") from exc
    except (OSError, TimeoutError) as exc:
        raise DiskMoveFailed(f"pulling snapshot {snapshot_id} from {source}: {exc}") from exc
    with sock:
        # NB: btrfs reads it; a stream that stalls fails its read instead of hanging it.
        sock.setblocking(True)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeout(STALL_TIMEOUT))
        # btrfs reads a command's payload (up to ~48 KB) in one read: woken once for it,
        # not per segment as it arrives.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1 << 16)
        proc = await asyncio.create_subprocess_exec(
            "btrfs", "receive", "-q", str(into),
            stdin=sock.fileno(), stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    # Closed here as soon as btrfs has it: the connection is btrfs's alone.
    try:
        err = await proc.stderr.read()  # type: ignore[union-attr]
        if await proc.wait() != 0:
            raise DiskMoveFailed(
                f"receiving snapshot {snapshot_id} from {source}: btrfs receive failed: "
                f"{err.decode(errors='replace').strip()}"
            )
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    return True


async def _receive_copied(into: Path, snapshot_id: str, source: str, token: str) -> int:
    """The stream from the node API's HTTP endpoint, copied into `btrfs receive`'s stdin;
    returns its size."""
    size = 0
    proc = await asyncio.create_subprocess_exec(
        "btrfs",
        "receive",
        "-q",
        str(into),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stderr is not None
    url = f"{source.rstrip('/')}/node/v1/snapshots/{snapshot_id}/stream"
    try:
        async with (
            httpx.AsyncClient(
                timeout=httpx.Timeout(STALL_TIMEOUT, connect=CONNECT_TIMEOUT), verify=node_tls()
            ) as client,
            client.stream("GET", url, headers={"Authorization": f"Bearer {token}"}) as got,
        ):
            if got.status_code != 200:
                body = (await got.aread()).decode(errors="replace")[:300]
                raise DiskMoveFailed(f"{source} refused the snapshot: {body}")
            # NB: in CHUNKs, not as read (64 KB): a write to the pipe each costs more
            # than the copy into a CHUNK (py-spy, bench/bench_cluster_fork.py).
            async for chunk in got.aiter_bytes(CHUNK):
                size += len(chunk)
                proc.stdin.write(chunk)
                await proc.stdin.drain()
        proc.stdin.close()
        err = await proc.stderr.read()
        if await proc.wait() != 0:
            raise DiskMoveFailed(f"btrfs receive failed: {err.decode(errors='replace')}")
    except (httpx.HTTPError, OSError) as exc:
        raise DiskMoveFailed(f"pulling snapshot {snapshot_id} from {source}: {exc}") from exc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    return size
