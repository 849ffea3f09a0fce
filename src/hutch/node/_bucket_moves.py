"""A sandbox's bucket mounts moved with its disk (`hutch node drain --move`): the node that is
to hold the sandbox pulls what each mount was asked with, credentials included, from the node
that holds it, over the node API (with the cluster's node token), as it pulls the disk
(node/_disk_moves.py). Nothing passes through an API replica or the database: a mount's
credentials are only ever on the node that runs its rclone, and there only while it does.

    GET  /node/v1/c/{rid}/mounts/requests           each mount's request (source node)
    POST /node/v1/c/{rid}/mounts/pull  {source}     keep them here, for the next start

The receiving node reaches each bucket once before it keeps it (a node that cannot reach
the bucket fails the move, and the sandbox stays where it was); its next start mounts them
(`BucketMounts.restore`), and the source's rclone goes with the old container.
"""

from __future__ import annotations

import httpx

from hutch.node._disk_moves import DiskMoveFailed, node_tls
from hutch.node._node_wire import bucket_request_from_json
from hutch.runtime import Runtime

PULL_TIMEOUT = 30.0


async def pull_mounts(runtime: Runtime, runtime_id: str, source: str, token: str) -> int:
    """Keep the bucket mounts the node API at `source` has for sandbox `runtime_id` as this
    node's (the sandbox is stopped here); returns how many. Raises DiskMoveFailed when the
    source does not answer, BucketMountFailed when a bucket cannot be reached from here."""
    url = f"{source.rstrip('/')}/node/v1/c/{runtime_id}/mounts/requests"
    try:
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(PULL_TIMEOUT, connect=2.0), verify=node_tls()
        ) as client:
            got = await client.get(url, headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        raise DiskMoveFailed(f"bucket mounts of {runtime_id} from {source}: {exc}") from exc
    if got.status_code != 200:
        raise DiskMoveFailed(f"{source} refused the bucket mounts: {got.text[:300]}")
    requests = [bucket_request_from_json(r) for r in got.json()["requests"]]
    await runtime.buckets.adopt(runtime_id, requests)
    return len(requests)
