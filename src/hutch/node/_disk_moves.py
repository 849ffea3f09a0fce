"""A disk snapshot moved from one node to another (`hutch node drain --move`): the node that
holds it serves it as a `btrfs send` stream, the node that is to hold it pulls that stream
over the node API (with the cluster's node token) straight into `btrfs receive`. Nothing is
written to disk in between, and nothing passes through the API replicas.

    GET  /node/v1/snapshots/{id}/stream          the btrfs send stream (source node)
    POST /node/v1/snapshots/{id}/pull  {source}  receive it from the node API at `source`
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import time
from collections.abc import AsyncIterator

import httpx

from hutch.runtime import (
    Runtime,
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


@functools.cache
def node_tls() -> ssl.SSLContext:
    # NB: made once: a client's own default context loads the CA bundle each time (~45 ms of
    # CPU per pull here, under load), for node addresses that are mostly plain http.
    return ssl.create_default_context()


class DiskMoveFailed(SandboxRuntimeError):
    """The snapshot could not be sent or received (the other node, btrfs)."""


async def send_stream(runtime: Runtime, snapshot_id: str) -> AsyncIterator[bytes]:
    """The snapshot (or a fork's copy, made read-only) as a `btrfs send` stream (raises
    DiskMoveFailed if it is not there)."""
    try:
        path = await runtime.snapshots.sendable(snapshot_id)
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


async def pull(runtime: Runtime, snapshot_id: str, source: str, token: str) -> None:
    """Receive snapshot `snapshot_id` from the node API at `source` into this node's
    snapshots (read-only, as `take` makes them)."""
    snaps = runtime.snapshots
    if snaps.exists(snapshot_id):
        raise DiskMoveFailed(f"snapshot {snapshot_id} is on this node already")
    snaps.root.mkdir(mode=0o700, exist_ok=True)
    into = receive_dir(snaps.root)
    started, size = time.perf_counter(), 0
    try:
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
                    timeout=httpx.Timeout(STALL_TIMEOUT, connect=2.0), verify=node_tls()
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
        "snapshot %s pulled from %s: %.1f MB streamed and received in %.3f s, kept in %.3f s, "
        "the received one removed in %.3f s", snapshot_id, source, size / 1e6,
        streamed - started, stored - streamed, time.perf_counter() - stored,
    )  # fmt: skip
