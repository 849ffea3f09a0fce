"""A fork's children placed on other nodes than their source's: one copy sent per node, not
one per child.

A fork's copies are made on the source's node (`SandboxHost.fork_disks`); a child that does
not fit there is created on the node placement picks from a copy sent there
(`ClusterHost.create`). The first child placed on a node pulls its own copy; the others
placed there wait for that pull and are made from the copy it brought (a received copy is a
read-only snapshot on that node, which a create copies without using it up). If that pull
fails, each of them pulls its own. The received copies stay until the fork removes its
copies (`delete_snapshot` of each, once every create is done): `holders` says where.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from hutch.node import NodeRefused, NodeUnavailable, RemoteHost
from hutch.runtime import SandboxSpec

log = logging.getLogger("hutch.server")


class ForkSends:
    """The copies of the forks in flight on this replica, and where they were received."""

    def __init__(self) -> None:
        self._fork_of: dict[str, str] = {}  # copy id -> its fork (the first copy's id)
        # (fork, node) -> the copy received there (None: that pull failed)
        self._sent: dict[tuple[str, str], asyncio.Future[str | None]] = {}
        self._held: dict[str, list[str]] = {}  # copy id -> nodes that received it

    def forked(self, copy_ids: Sequence[str]) -> None:
        """These copies are one fork's: a node needs only one of them."""
        for copy_id in copy_ids:
            self._fork_of[copy_id] = copy_ids[0]

    def is_copy(self, snapshot_id: str) -> bool:
        return snapshot_id in self._fork_of

    async def received_on(
        self, node: str, copy_id: str, pull: Callable[[], Awaitable[None]]
    ) -> str:
        """The id of a copy of this fork on `node` to create a child from: one another
        child's pull brought there, or `copy_id`, pulled now with `pull` (which raises as
        the pull does)."""
        slot = (self._fork_of.get(copy_id, copy_id), node)
        sent = self._sent.get(slot)
        if sent is not None:
            received = await asyncio.shield(sent)
            if received is not None:
                return received
        mine: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._sent[slot] = mine
        try:
            await pull()
        except BaseException:
            mine.set_result(None)  # the others waiting pull their own
            if self._sent.get(slot) is mine:
                del self._sent[slot]
            raise
        self._held.setdefault(copy_id, []).append(node)
        mine.set_result(copy_id)
        return copy_id

    def holders(self, copy_id: str) -> list[str]:
        """The nodes that received `copy_id` (the fork is removing it there); the copy is
        forgotten, and its fork once all its copies are."""
        fork = self._fork_of.pop(copy_id, None)
        if fork is not None and fork not in self._fork_of.values():
            for slot in [s for s in self._sent if s[0] == fork]:
                del self._sent[slot]
        return self._held.pop(copy_id, [])


async def create_from_sent(
    sends: ForkSends,
    dst: RemoteHost,
    src: RemoteHost,
    sandbox_id: str,
    spec: SandboxSpec,
    snapshot: str,
    defer_network: bool,
) -> None:
    """Pull `snapshot` from `src` to `dst`, create the sandbox on `dst` from it, and drop
    the copy (the new disk is a subvolume of its own; the snapshot stays on `src`). A
    fork's copy: one pull per node for all its children there (`sends`), dropped when the
    fork removes its copies."""

    async def pull() -> None:
        log.info("snapshot %s: copied from node %s to %s for %s", snapshot, src.name,
                 dst.name, sandbox_id)  # fmt: skip
        await dst.pull_snapshot(snapshot, src)

    if sends.is_copy(snapshot):
        received = await sends.received_on(dst.name, snapshot, pull)
        await dst.create(sandbox_id, spec, defer_network=defer_network, snapshot=received)
        return
    await pull()
    try:
        await dst.create(sandbox_id, spec, defer_network=defer_network, snapshot=snapshot)
    finally:
        with contextlib.suppress(NodeUnavailable, NodeRefused):
            await dst.delete_snapshot(snapshot)
