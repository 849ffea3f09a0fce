"""Fork: new running sandboxes whose disks start as a sandbox's is now, with its settings.

A fork keeps nothing of its own: no snapshot row, no read-only snapshot. The host makes one
copy of the source's disk per child (`SandboxHost.fork_disks`: one btrfs commit of the live
disk, the others copies of that one, so all are alike), and each child is an ordinary create
that takes its copy over. So fork(1) is a cold create plus one commit, which its create
overlaps with the steps that need no disk; fork(n)'s copies are made while the creates wait
for their turn (a host starts a few sandboxes at a time: services/_cold_starts.py).
On a cluster the copies are made on the source's node; the children that do not fit there
are made on other nodes from a copy sent there, one per node (ClusterHost.create,
services/_fork_sends.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

from hutch.node import SandboxHost
from hutch.server._errors import InvalidRequest
from hutch.server._models import SandboxCreate
from hutch.server.services._fork_leftovers import FORK_COPY_PREFIX
from hutch.server.services._sandbox_create import _Steps
from hutch.server.services._sandboxes import SandboxManager
from hutch.server.store._sqlite import SandboxRecord

log = logging.getLogger("hutch.server")

MAX_FORK = 50


def settings_of(request: SandboxCreate, spec: SandboxRecord, image_id: str) -> SandboxCreate:
    """`request` with what a disk of the sandbox `spec` needs: its image, env and limits;
    the request's lifetime, idle policy, labels and secrets stay."""
    update = {
        "image": image_id,
        "env": {**spec.env, **request.env},
        "cpu": spec.cpu,
        "memory_mb": spec.memory_mb,
        "disk_mb": max(spec.disk_mb, request.disk_mb),
        "pids_limit": spec.pids_limit,
        "runtime": spec.runtime,
        "snapshot": None,
    }
    return request.model_copy(update=update)


async def fork_sandbox(
    manager: SandboxManager, host: SandboxHost, sandbox_id: str, count: int
) -> list[SandboxRecord]:
    """`count` new running sandboxes whose disks start as sandbox `sandbox_id`'s is now, with
    its settings (image, env, limits, network, labels, lifetime and idle policy; not its
    secrets).
    All or none: if one fails to start, those that did are destroyed and its error raised.

    Raises:
        InvalidRequest: count is out of range.
        SandboxNotFound: no such sandbox.
    """
    if not 1 <= count <= MAX_FORK:
        raise InvalidRequest(f"count must be 1-{MAX_FORK}, not {count}", code="invalid_request")
    steps = _Steps()
    copies = [FORK_COPY_PREFIX + secrets.token_hex(6) for _ in range(count)]
    async with manager.lock_for(sandbox_id):
        source = manager.get(sandbox_id)
        steps.mark("lock")
        # NB: returns once the copies are under way; the creates wait for them on the host.
        await host.fork_disks(sandbox_id, copies)
        steps.mark("disks")
    try:
        request = SandboxCreate(
            # Its own disk size, not the default (which may not fit the node it is on).
            disk_mb=source.disk_mb,
            labels=source.labels,
            timeout=source.timeout or 0,
            sleep_after=source.sleep_after,
            keep_alive=source.keep_alive,
            on_idle=source.on_idle,  # type: ignore[arg-type]
            on_timeout=source.on_timeout,  # type: ignore[arg-type]
            # Its network as it is now: a sandbox kept off the internet forks into sandboxes
            # kept off it, not into ones with the default network.
            network=source.network,  # type: ignore[arg-type]
            network_allow=list(source.network_allow),
            network_deny=list(source.network_deny),
        )
        request = settings_of(request, source, source.image_id)
        made = await asyncio.gather(
            *(manager.create(request, snapshot=copy) for copy in copies), return_exceptions=True
        )
        steps.mark("creates")
        failed = [r for r in made if isinstance(r, BaseException)]
        if failed:
            # All or nothing: the client gets an error, not a list, so the forks that did
            # start would be sandboxes nobody knows of.
            for record in made:
                if isinstance(record, SandboxRecord):
                    with contextlib.suppress(Exception):
                        await manager.destroy(record.id)
            raise failed[0]
        return [r for r in made if isinstance(r, SandboxRecord)]
    finally:
        # A copy its create took over is gone already (nothing to do, no thread); one that
        # was not taken (its create failed, or never came) is removed here.
        for result in await asyncio.gather(
            *(host.delete_snapshot(copy) for copy in copies), return_exceptions=True
        ):
            if isinstance(result, BaseException):
                log.warning(
                    "a copy of sandbox %s's disk for a fork is left: %s", sandbox_id, result
                )
        steps.mark("cleanup")
        log.debug(
            "forked sandbox %s (%d): %s", sandbox_id, count, steps, extra={"timings": steps.timings}
        )
