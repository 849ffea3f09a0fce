"""Asking a bucket's rclone whether it still has uploads to make, before it is stopped.

rclone cancels the uploads under way when it gets SIGTERM (`upload canceled` in its log) and
leaves them in its cache for its next start with the same flags (rclone/rclone#7309), but an
unmount removes the slot's cache with it: a file closed in the sandbox just before an unmount
or a destroy never reached the bucket (the TypeScript SDK's bucket test lost one so in CI).
So each rclone serves its remote control on a unix socket in its slot dir (0700, root only),
and the unmount waits until `vfs/stats` counts no upload in progress or queued.

The socket's name is relative (rclone runs in its slot dir): a sandbox id may make the slot's
path longer than a socket address may be (108 bytes); the host connects through
`/proc/self/fd/N/`, an O_PATH descriptor of the slot dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path

RC_SOCKET = "rc.sock"  # relative to the slot dir, rclone's working directory
POLL = 0.05  # seconds between two looks at the upload queue
# Empty on two looks POLL apart: the kernel sends FUSE's RELEASE, on which rclone queues the
# file's upload, after the host's close has returned (asynchronously), so a close made just
# before the first look (a gVisor gofer's, sent by the agent's flush) may not be queued yet.
IDLE_LOOKS = 2
_ASK_TIMEOUT = 5.0  # one stats call; rclone answers it from memory


async def wait_for_uploads(slot_dir: Path, timeout: float) -> bool:  # noqa: ASYNC109
    """Wait until the rclone of `slot_dir` has no upload in progress or queued, at most
    `timeout` seconds. False if it could not be asked (an rclone started without its socket,
    by an older Hutch, or gone) or still had uploads at the end."""
    deadline = time.monotonic() + timeout
    try:
        fd = os.open(slot_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        socket = f"/proc/self/fd/{fd}/{RC_SOCKET}"
        idle_looks = 0
        while True:
            pending = await _pending_uploads(socket)
            if pending is None:
                return False
            idle_looks = idle_looks + 1 if pending == 0 else 0
            if idle_looks == IDLE_LOOKS:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(POLL)
    finally:
        os.close(fd)


async def _pending_uploads(socket: str) -> int | None:
    """Uploads in progress plus queued, from `vfs/stats`; None when rclone cannot be asked."""
    try:
        body = await asyncio.wait_for(_call(socket, "vfs/stats"), _ASK_TIMEOUT)
        cache = json.loads(body)["diskCache"]
        return int(cache["uploadsInProgress"]) + int(cache["uploadsQueued"])
    except (OSError, TimeoutError, ValueError, KeyError, TypeError):
        return None


async def _call(socket: str, method: str) -> bytes:
    """POST `method` with no parameters to rclone's remote control; the response's body.

    Raises:
        OSError: no socket, or the connection failed.
        ValueError: not a 200 answer.
    """
    reader, writer = await asyncio.open_unix_connection(socket)
    try:
        writer.write(
            f"POST /{method} HTTP/1.0\r\nContent-Type: application/json\r\n"
            "Content-Length: 2\r\n\r\n{}".encode()
        )
        await writer.drain()
        answer = await reader.read()  # HTTP/1.0: the answer ends with the connection
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1:2]
    if status != [b"200"]:
        raise ValueError(f"rclone's remote control answered {head[:80]!r}")
    return body
