"""`ClusterHost`: `SandboxHost` across the nodes of a cluster (`hutch api`, docs/cluster.md).

Each call goes to the node that holds the sandbox (the store's `sandbox_nodes`), through that
node's `RemoteHost`; a create places the sandbox first (services/_placement.py) and tries the
next node when one refuses. A node that is lost, or does not answer within the bounded call
timeout, makes the request fail with 503 `node_unavailable` naming the node, never hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from hutch.node import POOL_LIMITS, AgentConnection, NodeRefused, NodeUnavailable, RemoteHost
from hutch.runtime import (
    BackupTarget,
    BucketMount,
    BucketRequest,
    Image,
    Limits,
    NetworkPolicy,
    OomKill,
    SandboxSpec,
    SandboxUsage,
)
from hutch.server._errors import NoCapacity, NodeUnavailableError
from hutch.server.services._fork_sends import ForkSends, create_from_sent
from hutch.server.services._placement import Need
from hutch.server.services._placement_plans import PlacementPlans
from hutch.server.services._pool_claims import claim_order, placement_order, pool_status
from hutch.server.store._nodes import NodeRecord
from hutch.server.store._off_loop import off_loop
from hutch.server.store._sqlite import Store

log = logging.getLogger("hutch.server")

# A node whose last heartbeat is older than this takes no new sandbox (it beats every ~2 s);
# services/_node_watch.py marks it lost a little later.
FRESH_FOR = 6.0
CONNECT_TIMEOUT = 5.0
# Runtime ids kept from placement reads: a bound on those of sandboxes gone meanwhile.
PLACED_AS_KEPT = 10_000
# How long a create's placement stands in for its read (`_on`): more than a create can take.
CREATING_FOR = 60.0


class ClusterHost:
    def __init__(
        self,
        store: Store,
        token: str,
        runtime_id: Callable[[str], str],
        *,
        pool_sizes: Mapping[str, int] | None = None,
        image_id: Callable[[str], str | None] = lambda name: None,
    ) -> None:
        self._store = store
        self._token = token
        self._rid = runtime_id
        # The runtime id each sandbox's placement row gave with its node, as of the last call
        # for it (the remotes map ids by it): read with the node, not once more per call.
        self._placed_as: dict[str, str] = {}
        self._remotes: dict[str, RemoteHost] = {}
        # Warm pools set on this replica too (HUTCH_WARM_POOLS of `hutch api`, not needed): for
        # GET /v1/pools, of images no node reports (nodes of an older Hutch); image name -> id.
        self._pool_sizes = dict(pool_sizes or {})
        self._image_id = image_id
        self._fork_sends = ForkSends()
        self._placing = asyncio.Lock()
        self._plans = PlacementPlans()
        # The node of each sandbox this replica is creating, for its create's next calls
        # (agent connection, network_ready): no read (`_on`), as nothing moves a sandbox
        # being created. network_ready, the create's last call, and destroy drop it.
        self._creating: dict[str, tuple[RemoteHost, float]] = {}

    # -- nodes ------------------------------------------------------------------------------

    def remote(self, name: str, node: NodeRecord | None = None) -> RemoteHost:
        """The node's RemoteHost (made on first use from its row, `node` if the caller has just
        read it; a moved address renews it)."""
        node = node or self._store.get_node(name)
        if node is None:
            raise NodeUnavailableError(f"node {name} is not known to this cluster")
        remote = self._remotes.get(name)
        if remote is None or remote.api_url != node.address.rstrip("/"):
            remote = RemoteHost(name, node.address, self._token, self._runtime_id)
            self._remotes[name] = remote
        return remote

    def node_of(self, sandbox_id: str) -> str:
        # NB: read from the store each time: another replica may have moved the sandbox
        # (`drain --move`); a primary-key read, next to the node row read for every call.
        name = self._store.sandbox_node(sandbox_id)
        if name is None:
            raise NodeUnavailableError(f"sandbox {sandbox_id} is on no known node")
        return name

    def _runtime_id(self, sandbox_id: str) -> str:
        rid = self._placed_as.get(sandbox_id)
        # NB: a placement recorded before its row had a runtime id (migration 15): the
        # sandbox's own row has it (a read).
        return rid if rid is not None else self._rid(sandbox_id)

    def _on(self, sandbox_id: str) -> RemoteHost:
        creating = self._creating.get(sandbox_id)
        if creating is not None:
            if time.monotonic() - creating[1] < CREATING_FOR:
                return creating[0]
            del self._creating[sandbox_id]  # a create that ended without network_ready
        # One read per call: the sandbox's node, its runtime id and the node's row (a join).
        # NB: each time: another replica may have moved the sandbox, or destroyed it and made
        # a new one with the same id from a warm pool.
        placement = self._store.sandbox_placement(sandbox_id)
        if placement is None:
            raise NodeUnavailableError(f"sandbox {sandbox_id} is on no known node")
        if placement.runtime_id is None:
            self._placed_as.pop(sandbox_id, None)
        else:
            if len(self._placed_as) >= PLACED_AS_KEPT and sandbox_id not in self._placed_as:
                self._placed_as.clear()  # ids another replica destroyed; the rest read again
            self._placed_as[sandbox_id] = placement.runtime_id
        node = placement.record
        if node is None or node.state == "lost":
            raise _unavailable(placement.node, "it stopped heartbeating")
        return self.remote(placement.node, node)

    async def _do(self, sandbox_id: str, call: Callable[[RemoteHost], Any]) -> Any:
        return await self._call(self._on(sandbox_id), call)

    async def _call(self, remote: RemoteHost, call: Callable[[RemoteHost], Any]) -> Any:
        try:
            return await call(remote)
        except NodeUnavailable as exc:
            raise _unavailable(remote.name, str(exc)) from exc

    async def aclose(self) -> None:
        for remote in self._remotes.values():
            await remote.aclose()

    # -- SandboxHost ------------------------------------------------------------------------

    def supports(self, runtime: str) -> bool:
        # A node that reports it (gVisor: runsc installed there), lost or not: one that is
        # full, draining or away for now makes a create of it 503 no_capacity, not a 400.
        return any(runtime in n.runtimes for n in self._store.list_nodes())

    async def create(
        self,
        sandbox_id: str,
        spec: SandboxSpec,
        *,
        defer_network: bool,
        snapshot: str | None = None,
    ) -> None:
        need = _need(spec)
        refusals = []
        copy_from: RemoteHost | None = None
        # NB: the read and the record of the first choice under one lock: the creates of a
        # fork run at once, and each must count the ones placed before it. Off the event
        # loop: round trips to the database. A read made ahead is taken if none was placed
        # since (services/_placement_plans.py).
        async with self._placing:
            order, rows = await self._plans.order(self._store, sandbox_id, need, FRESH_FOR)
            if snapshot is not None:
                # A disk snapshot is a subvolume of one node's storage: the sandbox goes there,
                # or, when that node is full or draining, a copy of it goes to the node
                # placement picks, node to node (as `drain --move` sends disks), for this one.
                home = self._snapshot_home(snapshot)
                node = rows.get(home)
                if home in order:
                    order = [home]
                elif not order or node is None or node.state == "lost":
                    raise NoCapacity(
                        f"snapshot {snapshot} is on node {home}, which cannot take a sandbox "
                        f"of {need.cpu} cpu, {need.memory_mb} MB memory and {need.disk_mb} MB "
                        "disk now (full, draining or lost), and no other node can take it "
                        "either; retry later, or free room"
                    )
                else:
                    copy_from = self.remote(home, node)
            if order:
                await self._place(sandbox_id, order[0], spec.id)
        for i, name in enumerate(order):
            remote = self.remote(name, rows.get(name))
            if i > 0:
                await self._place(sandbox_id, name, spec.id)
            try:
                if copy_from is not None and snapshot is not None:
                    await create_from_sent(
                        self._fork_sends, remote, copy_from, sandbox_id, spec, snapshot,
                        defer_network,
                    )  # fmt: skip
                else:
                    await remote.create(
                        sandbox_id, spec, defer_network=defer_network, snapshot=snapshot
                    )
                if defer_network:
                    self._creating[sandbox_id] = (remote, time.monotonic())
                return
            except (NodeUnavailable, NodeRefused) as exc:
                log.warning("node %s refused sandbox %s: %s", name, sandbox_id, exc)
                refusals.append(f"{name}: {exc}")
        self._forget(sandbox_id)
        tried = "; ".join(refusals) if refusals else "no ready node has room"
        if need.runtime != "runc":
            tried += f"; the nodes that run {need.runtime}: {self._running(need.runtime)}"
        raise NoCapacity(
            f"no node can take a sandbox of {need.cpu} cpu, {need.memory_mb} MB memory and "
            f"{need.disk_mb} MB disk now ({tried}); retry later, ask for less, or add a node"
        )

    async def prepare_create(self, sandbox_id: str, spec: SandboxSpec) -> None:
        await self._plans.read_ahead(self._store, sandbox_id, _need(spec), FRESH_FOR)

    def _running(self, runtime: str) -> str:
        names = [n.name for n in self._store.list_nodes() if runtime in n.runtimes]
        return ", ".join(names) or "none"

    def placements(self, need: Need, *, but: str) -> list[str]:
        """The nodes that can take a sandbox of `need` now, best first (sandbox `but` not
        counted where it is)."""
        return placement_order(self._store, need, but=but, fresh_for=FRESH_FOR)[0]

    async def _place(self, sandbox_id: str, node: str, runtime_id: str) -> None:
        # Recorded first: a create that dies half-way is found on its node by recovery.
        await off_loop(self._store, self._store.set_sandbox_node, sandbox_id, node, runtime_id)
        self._plans.placed()
        self._placed_as[sandbox_id] = runtime_id

    def relocate(self, sandbox_id: str, node: str, runtime_id: str) -> None:
        """The sandbox is on `node` from now on, known there as `runtime_id` (its disk was
        moved there)."""
        self._store.set_sandbox_node(sandbox_id, node, runtime_id)
        self._placed_as[sandbox_id] = runtime_id

    def _forget(self, sandbox_id: str) -> None:
        self._store.forget_sandbox_node(sandbox_id)
        self._placed_as.pop(sandbox_id, None)
        self._creating.pop(sandbox_id, None)

    async def network_ready(self, sandbox_id: str) -> None:
        try:
            await self._do(sandbox_id, lambda r: r.network_ready(sandbox_id))
        finally:
            self._creating.pop(sandbox_id, None)

    async def start_existing(self, sandbox_id: str, spec: SandboxSpec) -> None:
        remote = self._on(sandbox_id)
        if self._placed_as.get(sandbox_id) != spec.id:
            # Started under another id than its placement says (a row from before migration
            # 15): every later call finds it by this one.
            self._store.set_sandbox_node(sandbox_id, remote.name, spec.id)
            self._placed_as[sandbox_id] = spec.id
        await self._call(remote, lambda r: r.start_existing(sandbox_id, spec))

    async def stop(self, sandbox_id: str) -> None:
        await self._do(sandbox_id, lambda r: r.stop(sandbox_id))

    async def destroy(self, sandbox_id: str) -> None:
        self._creating.pop(sandbox_id, None)
        try:
            remote: RemoteHost | None = self._on(sandbox_id)
        except NodeUnavailableError:
            remote = None  # never placed (nothing to remove), or on a lost node
        if remote is not None:
            await self._call(remote, lambda r: r.destroy(sandbox_id))
        # NB: on a lost node the container may still run; the node sweeps it when it comes
        # back (recovery keeps only what the store still has).
        self._forget(sandbox_id)

    async def pause(self, sandbox_id: str) -> None:
        await self._do(sandbox_id, lambda r: r.pause(sandbox_id))

    async def resume(self, sandbox_id: str) -> None:
        await self._do(sandbox_id, lambda r: r.resume(sandbox_id))

    async def states(self, sandbox_ids: Collection[str]) -> dict[str, str]:
        """What the reachable nodes report (sandboxes on lost nodes are absent)."""
        by_node: dict[str, list[str]] = {}
        for sid in sandbox_ids:
            placement = self._store.sandbox_placement(sid)
            if placement is None or placement.record is None:
                continue
            if placement.record.state == "lost":
                continue
            if placement.runtime_id is None:
                self._placed_as.pop(sid, None)
            else:
                self._placed_as[sid] = placement.runtime_id
            by_node.setdefault(placement.node, []).append(sid)
        found: dict[str, str] = {}
        for name, sids in by_node.items():
            try:
                found.update(await self.remote(name).states(sids))
            except (NodeUnavailable, NodeRefused) as exc:
                log.warning("node %s: states not read: %s", name, exc)
        return found

    async def sweep(self, keep: Collection[str]) -> list[str]:
        # NB: each node sweeps its own leftovers (the node daemon does, at its start); an API
        # replica cannot tell a container another replica is creating from a leftover.
        return []

    async def restore_buckets(self, sandbox_id: str) -> None:
        await self._do(sandbox_id, lambda r: r.restore_buckets(sandbox_id))

    async def connect_agent(self, sandbox_id: str, *, timeout: float) -> AgentConnection:  # noqa: ASYNC109
        conn: AgentConnection = await self._do(
            sandbox_id, lambda r: r.connect_agent(sandbox_id, timeout=timeout)
        )
        return conn

    async def node_down(self, sandbox_id: str) -> NodeUnavailableError | None:
        """The error to give when the sandbox's node does not answer now (else None)."""
        try:
            remote = self._on(sandbox_id)
            await remote.info()
        except NodeUnavailableError as exc:
            return exc
        except (NodeUnavailable, NodeRefused) as exc:
            return _unavailable(self.node_of(sandbox_id), str(exc))
        return None

    def port_token(self, sandbox_id: str, port: int) -> str | None:
        """The preview token of an exposed port, as the shared database has it now."""
        for record in self._store.list_ports(sandbox_id):
            if record.port == port:
                return record.token
        return None

    def preview_key(self, sandbox_id: str) -> str | None:
        """What the preview proxy caches for a sandbox: its node (it connects through it)."""
        try:
            return "node:" + self.node_of(sandbox_id)
        except NodeUnavailableError:
            return None

    async def connect_port(
        self, sandbox_id: str, port: int, protocol: Callable[[], asyncio.Protocol]
    ) -> None:
        """Connect the proxy's upstream protocol to the sandbox's port through its node."""
        remote = self._on(sandbox_id)
        await remote.connect_port(sandbox_id, port, protocol, timeout=CONNECT_TIMEOUT)

    def gateway_address(self, sandbox_id: str) -> str | None:
        try:
            return self._on(sandbox_id).gateway_address(sandbox_id)
        except NodeUnavailableError:
            return None

    def address(self, sandbox_id: str) -> str | None:
        try:
            return self._on(sandbox_id).address(sandbox_id)
        except NodeUnavailableError:
            return None

    async def set_network_policy(self, sandbox_id: str, policy: NetworkPolicy) -> None:
        await self._do(sandbox_id, lambda r: r.set_network_policy(sandbox_id, policy))

    async def grant_egress(self, sandbox_id: str, secrets: Mapping[str, str]) -> None:
        """The sandbox's node injects these egress secrets (services/_egress_grants.py)."""
        await self._do(sandbox_id, lambda r: r.grant_egress(sandbox_id, secrets))

    def egress_port(self, sandbox_id: str) -> int | None:
        try:
            return self._on(sandbox_id).egress_port
        except NodeUnavailableError:
            return None

    async def mount_bucket(self, sandbox_id: str, request: BucketRequest) -> BucketMount:
        # The node that holds the sandbox runs rclone; this replica keeps nothing of it.
        mount: BucketMount = await self._do(
            sandbox_id, lambda r: r.mount_bucket(sandbox_id, request)
        )
        return mount

    async def unmount_bucket(self, sandbox_id: str, mount_path: str) -> None:
        await self._do(sandbox_id, lambda r: r.unmount_bucket(sandbox_id, mount_path))

    async def bucket_mounts(self, sandbox_id: str) -> list[BucketMount]:
        """As the sandbox's node has them; none while it cannot be asked (a sandbox's info
        must not fail because of its node)."""
        try:
            mounts: list[BucketMount] = await self._do(
                sandbox_id, lambda r: r.bucket_mounts(sandbox_id)
            )
        except (NodeUnavailableError, NodeRefused) as exc:
            log.debug("sandbox %s: bucket mounts not read: %s", sandbox_id, exc)
            return []
        return mounts

    async def usage(self, sandbox_id: str, *, disk: bool = True) -> SandboxUsage:
        usage: SandboxUsage = await self._do(sandbox_id, lambda r: r.usage(sandbox_id, disk=disk))
        return usage

    def storage_usage(self) -> tuple[int, int]:
        nodes = self._store.list_nodes()
        return (
            sum(n.used_disk_mb for n in nodes) << 20,
            sum(n.disk_mb for n in nodes) << 20,
        )

    # -- warm pools: the nodes fill them, replicas claim through the store ------------------

    async def claim_pooled(
        self,
        sandbox_id: str,
        image: Image,
        limits: Limits,
        env: Mapping[str, str],
        runtime: str,
    ) -> tuple[str, AgentConnection] | None:
        if runtime != "runc" or limits.disk_mb != POOL_LIMITS.disk_mb:
            return None  # what a running sandbox cannot change: a cold start
        need = Need(limits.cpu, limits.memory_mb, limits.disk_mb)
        async with self._placing:  # not between a create's placement read and its record
            order = claim_order(self._store, image.id, need, fresh_for=FRESH_FOR)
        for node in order:
            # NB: SKIP LOCKED: another replica claiming on this node at once gets another row.
            rid = self._store.claim_pool_entry(node, image.id, sandbox_id)
            if rid is None:
                continue
            # Recorded first: every later call for the sandbox goes to this node, by the
            # pool's runtime id.
            self._store.set_sandbox_node(sandbox_id, node, rid)
            self._placed_as[sandbox_id] = rid
            try:
                conn = await self.remote(node).claim_pooled(rid, limits, env)
            except (NodeUnavailable, NodeRefused, OSError) as exc:
                log.warning("node %s: pooled sandbox %s not handed out: %s", node, rid, exc)
                conn = None
            if conn is not None:
                return rid, conn
            self._forget(sandbox_id)
        return None

    def pool_status(self) -> dict[str, tuple[int, int]]:
        return pool_status(self._store, self._pool_sizes, self._image_id, fresh_for=FRESH_FOR)

    async def drain_pooled(self, image_id: str) -> None:
        pass  # each node's pool lets go of an image it no longer finds

    def start_pools(self) -> None:
        pass  # the nodes fill them

    async def stop_pools(self) -> None:
        pass

    # -- the death watch: each node watches its own containers -----------------------------

    def _by_node(self, sandbox_ids: Collection[str]) -> dict[str, dict[str, str | None]]:
        """The sandboxes by node, of the nodes that are not lost, with their runtime ids."""
        # NB: a read per node, not per sandbox: the death watch asks twice a second.
        wanted = set(sandbox_ids)
        by_node: dict[str, dict[str, str | None]] = {}
        for node in self._store.list_nodes():
            if node.state == "lost":
                continue
            placed = self._store.placements_on(node.name)
            held = {sid: rid for sid, rid in placed.items() if sid in wanted}
            if held:
                by_node[node.name] = held
        return by_node

    async def _each_node(
        self,
        sandbox_ids: Collection[str],
        call: Callable[[RemoteHost, list[str], Mapping[str, str]], Any],
    ) -> list[Any]:
        """`call` on every node that holds some of these sandboxes, at once, with their runtime
        ids; a node that does not answer is left out (the node watch deals with it)."""
        by_node = self._by_node(sandbox_ids)
        if not by_node:
            return []
        # Their runtime ids came with their placements (a pooled one has its pool's).
        rids = {sid: rid for held in by_node.values() for sid, rid in held.items() if rid}
        if any(rid is None for held in by_node.values() for rid in held.values()):
            # NB: placements from before migration 15: one read of the sandboxes' rows for
            # all of them, not one per sandbox (the death watch asks twice a second).
            wanted = set(sandbox_ids) - rids.keys()
            rids.update(
                (r.id, r.runtime_id or r.id) for r in self._store.list_sandboxes() if r.id in wanted
            )

        async def one(name: str, sids: list[str]) -> Any:
            try:
                return await call(self.remote(name), sids, rids)
            except (NodeUnavailable, NodeRefused, NodeUnavailableError) as exc:
                log.debug("node %s: not asked: %s", name, exc)
                return None

        got = await asyncio.gather(*(one(n, list(held)) for n, held in by_node.items()))
        return [g for g in got if g is not None]

    async def dead(self, sandbox_ids: Collection[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for part in await self._each_node(
            sandbox_ids, lambda r, sids, rids: r.dead(sids, rids=rids)
        ):
            found.update(part)
        return found

    async def oom_kills(self, sandbox_ids: Collection[str]) -> list[tuple[str, OomKill]]:
        kills: list[tuple[str, OomKill]] = []
        for part in await self._each_node(
            sandbox_ids, lambda r, sids, rids: r.oom_kills(sids, rids=rids)
        ):
            kills.extend(part)
        return kills

    def close_watch(self) -> None:
        pass  # each node holds its own

    # -- disk snapshots: on the node of the sandbox they were taken from --------------------

    def _snapshot_home(self, snapshot_id: str) -> str:
        name = self._store.snapshot_node(snapshot_id)
        if name is None:
            raise NodeUnavailableError(f"snapshot {snapshot_id} is on no known node")
        return name

    async def take_snapshot(
        self, sandbox_id: str, snapshot_id: str, *, spare: bool = False
    ) -> None:
        await self._on_node_of(
            sandbox_id,
            [snapshot_id],
            lambda r: r.take_snapshot(sandbox_id, snapshot_id, spare=spare),
        )

    async def fork_disks(self, sandbox_id: str, copy_ids: Sequence[str]) -> None:
        self._fork_sends.forked(copy_ids)
        await self._on_node_of(sandbox_id, copy_ids, lambda r: r.fork_disks(sandbox_id, copy_ids))

    async def _on_node_of(
        self, sandbox_id: str, snapshot_ids: Sequence[str], call: Callable[[RemoteHost], Any]
    ) -> None:
        # Recorded first: a snapshot taken by a call that then fails is still found (and
        # deleted) through its record.
        node = self.node_of(sandbox_id)
        for snapshot_id in snapshot_ids:
            self._store.set_snapshot_node(snapshot_id, node)
        try:
            await self._do(sandbox_id, call)
        except BaseException:
            for snapshot_id in snapshot_ids:
                self._store.forget_snapshot_node(snapshot_id)
            raise

    async def delete_snapshot(self, snapshot_id: str) -> None:
        for node in self._fork_sends.holders(snapshot_id):  # a fork's copy sent there
            with contextlib.suppress(NodeUnavailable, NodeRefused, NodeUnavailableError):
                await self.remote(node).delete_snapshot(snapshot_id)
        name = self._store.snapshot_node(snapshot_id)
        if name is None:
            return
        remote = self._live(name, f"snapshot {snapshot_id}")
        try:
            await remote.delete_snapshot(snapshot_id)
        except NodeUnavailable as exc:
            raise _unavailable(name, str(exc), what=f"snapshot {snapshot_id}") from exc
        self._store.forget_snapshot_node(snapshot_id)

    async def has_snapshot(self, snapshot_id: str) -> bool:
        name = self._store.snapshot_node(snapshot_id)
        if name is None:
            return False
        remote = self._live(name, f"snapshot {snapshot_id}")
        try:
            return await remote.has_snapshot(snapshot_id)
        except NodeUnavailable as exc:
            raise _unavailable(name, str(exc), what=f"snapshot {snapshot_id}") from exc

    # -- backups: the node that holds the disk streams it to S3 itself ---------------------

    async def send_backup(
        self, snapshot_id: str, target: BackupTarget, name: str, *, parent: str | None
    ) -> bool:
        home = self._snapshot_home(snapshot_id)
        remote = self._live(home, f"snapshot {snapshot_id}")
        if parent is not None and self._store.snapshot_node(parent) != home:
            parent = None  # left on the node the sandbox moved from: a full backup
        try:
            return await remote.send_backup(snapshot_id, target, name, parent=parent)
        except NodeUnavailable as exc:
            raise _unavailable(home, str(exc), what=f"snapshot {snapshot_id}") from exc

    async def receive_backup(
        self,
        target: BackupTarget,
        names: Sequence[str],
        last: str,
        snapshot_id: str,
        *,
        limits: Limits,
    ) -> None:
        """On the node placement picks for a sandbox of `limits` (the next if one is down):
        the restored sandbox is then created there, from this snapshot."""
        need = Need(limits.cpu, limits.memory_mb, limits.disk_mb)
        refusals = []
        for node in self.placements(need, but=""):
            # Recorded first: a snapshot a failed call left is still found (and deleted).
            self._store.set_snapshot_node(snapshot_id, node)
            try:
                await self.remote(node).receive_backup(
                    target, names, last, snapshot_id, limits=limits
                )
                return
            except NodeUnavailable as exc:
                refusals.append(f"{node}: {exc}")
            except BaseException:
                with contextlib.suppress(NodeUnavailable, NodeRefused):
                    await self.remote(node).delete_snapshot(snapshot_id)
                self._store.forget_snapshot_node(snapshot_id)
                raise
            self._store.forget_snapshot_node(snapshot_id)
        tried = "; ".join(refusals) if refusals else "no ready node has room"
        raise NoCapacity(
            f"no node can take the restored sandbox ({need.cpu} cpu, {need.memory_mb} MB memory, "
            f"{need.disk_mb} MB disk) now ({tried}); retry later, or add a node"
        )

    def _live(self, name: str, what: str) -> RemoteHost:
        node = self._store.get_node(name)
        if node is None or node.state == "lost":
            raise _unavailable(name, "it stopped heartbeating", what=what)
        return self.remote(name)


def _need(spec: SandboxSpec) -> Need:
    return Need(spec.limits.cpu, spec.limits.memory_mb, spec.limits.disk_mb, spec.runtime)


def _unavailable(node: str, why: str, *, what: str = "this sandbox") -> NodeUnavailableError:
    return NodeUnavailableError(
        f"node {node}, which holds {what}, is unavailable ({why}); retry shortly, or "
        "destroy the sandbox and create a new one"
    )
