"""Sandbox lifecycle on the server: create, find, list, destroy, expire, recover after a crash.

The host (`hutch.node.SandboxHost`: this host in-process, or a node daemon) owns containers and
their resources; the store owns what was promised to clients. This module keeps the two in
step, and holds one agent connection per sandbox. It never touches the runtime itself.

Here: `SandboxManager`'s start/stop and recovery, spec building, find/list/destroy and the
agent connections. Its create path (pool claim, cold start, egress, entrypoint) is in
_sandbox_create.py.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from hutch._wire.agent_calls import AgentCall, StreamRequest
from hutch._wire.agent_ops import OpName
from hutch.node import (
    RULES_NAME,
    AgentConnection,
    AgentGateway,
    AgentPaused,
    AgentStream,
    AgentUnreachable,
    EgressRegistry,
    SandboxHost,
    agent_env,
)
from hutch.runtime import (
    Image,
    ImageStore,
    Limits,
    NetworkPolicy,
    SandboxSpec,
)
from hutch.server._cpu_env import cpu_env
from hutch.server._errors import (
    NodeUnavailableError,
    SandboxNotFound,
    SandboxNotRunning,
)
from hutch.server._models import SandboxInfo
from hutch.server._offline_env import offline_env
from hutch.server.services._caller import visible
from hutch.server.services._cold_starts import ColdStartGate
from hutch.server.services._events import EventSink, NoEvents
from hutch.server.services._image_owners import ImageOwners
from hutch.server.services._network_names import NetworkNames, split_allow
from hutch.server.services._sandbox_create import (
    Admission,
    SandboxCreation,
    check_sandbox_id,
    create_abandoned,
)
from hutch.server.services._secrets import SecretBox
from hutch.server.services._starts import PendingStarts
from hutch.server.store._off_loop import off_loop, point_read
from hutch.server.store._records import TeamAdmission
from hutch.server.store._sqlite import SandboxRecord, Store

log = logging.getLogger("hutch.server")

T = TypeVar("T")

# States a request wakes a sandbox from (server/_lifecycle.py).
SLEEPING = frozenset({"paused", "stopped"})
# How often a request its node refused (the agent is paused there) reads the row again while
# the row still says running: a pause through another replica, frozen and not yet committed.
PAUSE_COMMIT_POLL = 0.05  # seconds


def policy_for(
    network: str, allow: Sequence[str], deny: Sequence[str], names: NetworkNames | None
) -> NetworkPolicy:
    """The policy of these settings, host names in `allow` replaced by their addresses as
    `names` resolved them. With network="none" the sandbox has no name server: the names
    are pinned in its /etc/hosts to those addresses (exactly the allowed names resolve, and
    no DNS query leaves it, so none can carry data out)."""
    cidrs, hosts = split_allow(allow)
    if names is None:
        return NetworkPolicy.of(network, cidrs, deny)
    pinned = names.pinned(hosts) if network == "none" else []
    return NetworkPolicy.of(network, [*cidrs, *names.addresses(hosts)], deny, pinned)


def to_info(record: SandboxRecord) -> SandboxInfo:
    expires = (
        datetime.fromtimestamp(record.expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if record.expires_at is not None
        else None
    )
    return SandboxInfo(
        id=record.id,
        status=record.status,  # type: ignore[arg-type]
        status_reason=record.status_reason,
        image=record.image,
        created_at=record.created_at,
        expires_at=expires,
        team=record.team,
        cpu=record.cpu,
        memory_mb=record.memory_mb,
        disk_mb=record.disk_mb,
        pids_limit=record.pids_limit,
        network=record.network,
        runtime=record.runtime,
        labels=record.labels,
        env_keys=sorted(record.env),
        timeout=record.timeout,
        sleep_after=record.sleep_after,
        keep_alive=record.keep_alive,
        on_idle=record.on_idle,
        on_timeout=record.on_timeout,
        secret_names=sorted(record.secret_names),
    )


class SandboxManager(SandboxCreation):
    def __init__(
        self,
        store: Store,
        host: SandboxHost,
        images: ImageStore,
        *,
        agent_timeout: float,
        pools: bool = False,
        secrets: SecretBox | None = None,
    ) -> None:
        # Whether creates try the host's warm pools first (`SandboxHost.claim_pooled`).
        self._pools = pools
        # Sandboxes from a warm pool run under the pool's runtime id: the store's
        # `runtime_id`, cached here (every request and every proxied preview looks it up).
        self._runtime_ids: dict[str, str] = {}
        # Set on a cluster's replica: the store, not this cache, knows the runtime ids.
        self.shared_runtime_ids = False
        # Set when other API replicas share the store (PostgreSQL, a cluster): a create in
        # the store may be another replica's, in flight.
        self.other_replicas = False
        # Set on a cluster's replica: a create opens the dedicated agent connection of the
        # first exec while it waits for the agent (a tunnel through the node: a round trip).
        self.spare_connections = False
        self._store = store
        self._secrets = secrets
        self._host = host
        self._images = images
        self._agent_timeout = agent_timeout
        self.gateway = AgentGateway(
            lambda sid, timeout: host.connect_agent(sid, timeout=timeout),
            timeout=agent_timeout,
            on_connect=self._send_secrets,
        )
        self._id_locks: dict[str, asyncio.Lock] = {}
        self._fresh: set[str] = set()
        self.on_destroy: list[Callable[[str], None]] = []
        # Set by the lifecycle service: a request to a sleeping sandbox waits for its wake,
        # and every request counts as activity against its idle timer.
        self.waker: Callable[[str], Awaitable[object]] | None = None
        self.on_use: Callable[[str], None] | None = None
        # Egress header injection (node/_egress.py), when the server runs its proxy.
        self.egress: EgressRegistry | None = None
        self.default_runtime = "runc"  # of a create that names none (ServerConfig)
        # Team quotas (services/_quotas.py): holds a create's reservation while it runs.
        self.admission: Admission | None = None
        # ...and checks its row again in the insert's transaction (replicas on one database).
        self.row_admission: Callable[[SandboxRecord], TeamAdmission | None] | None = None
        self.image_owners = ImageOwners(store)
        # Host names in network_allow, resolved (the server sets the resolv.conf to ask).
        self.names = NetworkNames(Path("/etc/resolv.conf"))
        self._names_task: asyncio.Task[None] | None = None
        # Where the sandboxes' events go (services/_events.py; set by the app's Services).
        self.events: EventSink = NoEvents()
        # How many cold starts run at once; the rest wait their turn (services/_cold_starts.py).
        self.cold_starts = ColdStartGate()
        # Starts that settle after their create answered (services/_starts.py).
        self.starts = PendingStarts()

    # -- start/stop ---------------------------------------------------------------------

    def runtime_id(self, sandbox_id: str) -> str:
        """The id the runtime knows this sandbox by (a pooled sandbox keeps its pool id)."""
        return self._rid(sandbox_id)

    def _rid(self, sandbox_id: str) -> str:
        if self.shared_runtime_ids:
            # NB: read each time (a primary-key read): another replica may have made it from
            # a warm pool, or destroyed it and made a new one with the same id.
            found = self._store.sandbox_runtime_id(sandbox_id)
            if found is not None:
                return found
        return self._runtime_ids.get(sandbox_id, sandbox_id)

    def _load_runtime_ids(self) -> None:
        self._runtime_ids = {
            r.id: r.runtime_id for r in self._store.list_sandboxes() if r.runtime_id is not None
        }

    async def start(self, *, recover: bool = True) -> None:
        if recover:
            await self.recover()
        else:
            self._load_runtime_ids()
        if self._pools:
            self._host.start_pools()
        self._names_task = asyncio.create_task(
            self.names.keep_fresh(self._names_in_use, self._apply_policy)
        )

    async def _names_in_use(self) -> dict[str, list[str]]:
        found = {}
        # NB: off the event loop: every row, every 5 s, on every replica.
        for record in await off_loop(self._store, self._store.list_sandboxes):
            names = split_allow(record.network_allow)[1]
            if names and record.status == "running":
                found[record.id] = names
        return found

    async def _apply_policy(self, sandbox_id: str) -> None:
        # NB: under the sandbox's lock, as a network change through the API: the record read
        # here is then the policy on the host, never an older one applied after a newer.
        async with self.lock_for(sandbox_id):
            record = self._store.get_sandbox(sandbox_id)
            if record is not None and record.status == "running":
                await self._host.set_network_policy(sandbox_id, self._policy(record))

    def _policy(self, record: SandboxRecord) -> NetworkPolicy:
        return policy_for(record.network, record.network_allow, record.network_deny, self.names)

    async def policy_of(
        self, network: str, allow: Sequence[str], deny: Sequence[str]
    ) -> NetworkPolicy:
        """A policy to set now: its host names resolved (network_name_unresolved if not)."""
        await self.names.resolve(split_allow(allow)[1], strict=True)
        return policy_for(network, allow, deny, self.names)

    async def stop(self) -> None:
        await self.starts.finish(self._agent_timeout)
        if self._names_task is not None:
            self._names_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._names_task
        if self._pools:
            await self._host.stop_pools()
        # Sandboxes keep running: only our connections to them close.
        await self.gateway.close()

    async def recover(self) -> None:
        """Re-adopt what still runs, restart what the host lost, sweep what a crash left."""
        self._load_runtime_ids()
        records = self._store.list_sandboxes()
        containers = await self._host.states([r.id for r in records])
        keep: set[str] = set()
        for record in records:
            if record.status == "creating":
                if self.other_replicas and not create_abandoned(record, time.time()):
                    # NB: another replica may be making it now: its create ends it either
                    # way (running, or rolled back); one abandoned goes later (reconciler).
                    keep.add(record.id)
                    continue
                # A create that never answered its client: nothing was promised, undo it.
                log.info("removing half-created sandbox %s", record.id)
                self._store.delete_sandbox(record.id)
                continue
            keep.add(record.id)
            state = containers.get(record.id)
            if state == "running" or record.status != "running":
                continue
            try:
                image = self._images.get(record.image_id)
                await self._host.start_existing(record.id, self._spec(record, image))
                log.info("restarted sandbox %s (its container was %s)", record.id, state)
            except Exception as exc:
                log.error("could not restart sandbox %s: %s", record.id, exc)
                reason = f"could not restart after a host restart: {exc}"
                self._store.set_sandbox_state(record.id, "error", reason, None)
                self.events.emit(record.id, "error", reason=reason)
        self._load_runtime_ids()
        removed = await self._host.sweep(keep)
        for sandbox_id in removed:
            log.info("swept leftovers of sandbox %s", sandbox_id)
        for record in self._store.list_sandboxes():
            if record.status == "running":
                # Bucket mounts outlive a server crash (rclone runs in its own session):
                # re-adopt them, or mount again what a host or sandbox restart lost.
                await self._host.restore_buckets(record.id)

    # -- lifecycle ----------------------------------------------------------------------

    def _lock_for(self, sandbox_id: str) -> asyncio.Lock:
        return self._id_locks.setdefault(sandbox_id, asyncio.Lock())

    @contextlib.asynccontextmanager
    async def lock_for(self, sandbox_id: str) -> AsyncIterator[None]:
        """The lock that orders create, destroy and lifecycle steps of one sandbox, taken
        once a start still settling after its create answered has settled."""
        await self.starts.settled(sandbox_id, quiet=True)
        async with self._lock_for(sandbox_id):
            yield

    def spec_for(self, record: SandboxRecord, image: Image) -> SandboxSpec:
        """What the runtime runs for this sandbox."""
        return self._spec(record, image)

    def _spec(
        self, record: SandboxRecord, image: Image, *, runtime_id: str | None = None
    ) -> SandboxSpec:
        """`runtime_id`: the container's name when the caller knows it (a cold create: the
        sandbox's id); otherwise it is looked up (a pooled sandbox keeps its pool id)."""
        limits = Limits(
            cpu=record.cpu,
            memory_mb=record.memory_mb,
            pids=record.pids_limit,
            disk_mb=record.disk_mb,
        )
        policy = self._policy(record)
        return SandboxSpec(
            id=runtime_id or self._rid(record.id),
            image=image,
            env={
                **cpu_env(record.cpu, record.env),
                **offline_env(policy, record.env),
                **record.env,
            },
            limits=limits,
            runtime=record.runtime,  # type: ignore[arg-type]
            network=policy,
        )

    def get(self, sandbox_id: str) -> SandboxRecord:
        check_sandbox_id(sandbox_id)
        return self._found(sandbox_id, self._store.get_sandbox(sandbox_id))

    def _found(self, sandbox_id: str, record: SandboxRecord | None) -> SandboxRecord:
        # NB: another team's sandbox is not found, with the very same answer (services/_caller.py).
        if record is None or not visible(record.team):
            raise SandboxNotFound(sandbox_id)
        if record.runtime_id is not None:
            # NB: another API replica may have made it (from a pool): learn its runtime id here,
            # where every request passes before it reaches the runtime.
            self._runtime_ids[sandbox_id] = record.runtime_id
        return record

    def list(self, labels: Mapping[str, str]) -> list[SandboxRecord]:
        return [
            r
            for r in self._store.list_sandboxes()
            if visible(r.team) and all(r.labels.get(k) == v for k, v in labels.items())
        ]

    async def list_off_loop(self, labels: Mapping[str, str]) -> builtins.list[SandboxRecord]:
        """`list`, off the event loop: it reads every row (milliseconds for a few hundred)."""
        return await off_loop(self._store, self.list, labels)

    async def destroy(self, sandbox_id: str) -> None:
        await self.fetch(sandbox_id)
        async with self.lock_for(sandbox_id):
            await self._destroy_locked(sandbox_id)
        self._id_locks.pop(sandbox_id, None)

    async def _destroy_locked(self, sandbox_id: str) -> None:
        await self.gateway.forget(sandbox_id)
        await self._host.destroy(sandbox_id)
        await off_loop(self._store, self._store.delete_sandbox, sandbox_id)
        self._runtime_ids.pop(sandbox_id, None)
        self.events.emit(sandbox_id, "destroyed")
        for hook in self.on_destroy:
            hook(sandbox_id)

    # -- agent connections ----------------------------------------------------------------

    async def _send_secrets(self, sandbox_id: str, conn: AgentConnection) -> None:
        """Give the agent the sandbox's secrets (kept in its memory, never in config.json).

        Sent on every new connection: idempotent, and it covers a container restarted by
        recovery, whose agent starts with none.
        """
        if self._secrets is None or sandbox_id in self._fresh:
            return
        sealed = await point_read(self._store, self._store.get_secrets, sandbox_id)
        if not sealed:
            return
        egress = self.egress
        values = agent_env(
            self._secrets.open_all(sealed),
            self._host.gateway_address(sandbox_id),
            egress.port_for(sandbox_id) if egress is not None else None,
        )
        await asyncio.wait_for(conn.call("set_secrets", env=values), self._agent_timeout)

    async def fetch(self, sandbox_id: str) -> SandboxRecord:
        """`get`, off the event loop on a store that waits on the network (every request on
        a sandbox reads its record)."""
        return await point_read(self._store, self.get, sandbox_id)

    async def current(self, sandbox_id: str) -> SandboxRecord:
        """`fetch`, answered from memory where the store keeps the row current (PostgreSQL
        while it hears every change: store/_row_watch.py); no round trip then."""
        check_sandbox_id(sandbox_id)
        known, record = self._store.cached_sandbox(sandbox_id)
        if not known:
            record = await point_read(self._store, self._store.current_sandbox, sandbox_id)
        return self._found(sandbox_id, record)

    async def running(self, sandbox_id: str) -> SandboxRecord:
        """The sandbox, once it runs: a sleeping one is woken first (the caller waits)."""
        # NB: a create may have answered before its agent did: wait for that (a dict look-up
        # otherwise), and answer its failure if it failed.
        await self.starts.settled(sandbox_id)
        # NB: from memory when current: a pause, stop, destroy or move through another
        # replica reaches it as a notification (store/_row_watch.py).
        record = await self.current(sandbox_id)
        if self.on_use is not None:
            self.on_use(sandbox_id)
        if record.status in SLEEPING and self.waker is not None:
            await self.waker(sandbox_id)
            record = await self.fetch(sandbox_id)
        if record.status != "running":
            reason = f" ({record.status_reason})" if record.status_reason else ""
            raise SandboxNotRunning(
                f"sandbox {sandbox_id} is {record.status}{reason}; start it "
                f"(POST /v1/sandboxes/{sandbox_id}/start), or destroy it and create a new one"
            )
        return record

    async def _when_running(self, sandbox_id: str, connect: Callable[[], Awaitable[T]]) -> T:
        """`connect()` (to the agent) once the sandbox runs."""
        await self.running(sandbox_id)
        try:
            return await connect()
        except (AgentUnreachable, NodeUnavailableError) as exc:
            # NB: `running` answered from memory, and another replica's pause, stop, destroy
            # or move was not heard yet (its node refuses a paused agent's connections; its
            # container, or its node, is gone): the database says what to answer (404, 409,
            # or a wake and a connection to the resumed or started one).
            forgot = self._store.forget_sandbox(sandbox_id)
            if not forgot and not isinstance(exc, AgentPaused):
                raise
        # NB: the row may still say "running" while the node refuses: a pause through another
        # replica froze it and has yet to commit. Wait for it (then wake the sandbox), bounded.
        deadline = asyncio.get_running_loop().time() + self._agent_timeout
        thawed = False
        while True:
            await self.running(sandbox_id)
            try:
                return await connect()
            except AgentPaused:
                if asyncio.get_running_loop().time() > deadline:
                    if thawed or not await self._thaw_uncommitted_pause(sandbox_id):
                        raise
                    thawed = True
                    continue
                self._store.forget_sandbox(sandbox_id)
                await asyncio.sleep(PAUSE_COMMIT_POLL)

    async def _thaw_uncommitted_pause(self, sandbox_id: str) -> bool:
        """Resume a sandbox its node holds frozen while the database still says it runs, long
        after a pause would have committed (ms): the replica that froze it died before its
        commit. Without this every request waited for the agent timeout, for good."""
        if (await self.fetch(sandbox_id)).status != "running":
            return False  # it committed after all: the next `running` wakes it
        log.warning(
            "sandbox %s is frozen on its node but running in the database: a pause that "
            "never committed (its API replica died?); resuming it",
            sandbox_id,
        )
        await self._host.resume(sandbox_id)
        return True

    async def agent(self, sandbox_id: str) -> AgentConnection:
        """The live shared connection to a running sandbox's agent, (re)connecting if needed."""
        return await self._when_running(sandbox_id, lambda: self.gateway.shared(sandbox_id))

    def agent_call(self, sandbox_id: str) -> AgentCall:
        """``call(op, **args)`` on a running sandbox's agent, typed per op by the contract
        (agent errors propagate: the app maps them)."""

        async def call(op: OpName, **args: Any) -> dict[str, Any]:
            await self.agent(sandbox_id)  # connected (the shared connection the call takes)
            return await self.gateway.call_untyped(sandbox_id, op, **args)

        return cast("AgentCall", call)

    async def open_stream(
        self, sandbox_id: str, request: StreamRequest, conn: AgentConnection | None = None
    ) -> AgentStream:
        """A stream to a running sandbox's agent, on `conn` or the shared connection.

        A `conn` comes from `dedicated_agent`, which has just read the record (running) and
        marked the sandbox used: no second read of the same row (a store read per exec).
        A sandbox stopped in between fails the stream as a stop fails any open one."""
        if conn is None:
            await self.agent(sandbox_id)  # connected (the shared connection the stream takes)
        return await self.gateway.open_stream(sandbox_id, request, conn)

    async def open_own(
        self, sandbox_id: str, request: StreamRequest
    ) -> tuple[AgentConnection, AgentStream]:
        """A stream on a connection of its own (transfers, watches); close the connection when
        the stream ends."""
        return await self._when_running(
            sandbox_id, lambda: self.gateway.open_own(sandbox_id, request)
        )

    async def dedicated_agent(self, sandbox_id: str) -> AgentConnection:
        """A new connection of its own to a running sandbox's agent; the caller closes it."""
        return await self._when_running(sandbox_id, lambda: self.gateway.dedicated(sandbox_id))

    async def release_agent(self, sandbox_id: str, conn: AgentConnection) -> None:
        """Give back a `dedicated_agent` connection whose stream ended (kept for reuse)."""
        await self.gateway.release(sandbox_id, conn)

    def running_ids(self) -> builtins.list[str]:
        """The ids of the sandboxes that are running now."""
        return [r.id for r in self._store.list_sandboxes() if r.status == "running"]

    def running_with_egress_rules(self) -> builtins.list[tuple[str, str]]:
        """(sandbox id, runtime id) of the running sandboxes that have egress rules."""
        return [
            (r.id, self._rid(r.id))
            for r in self._store.list_sandboxes()
            if r.status == "running" and RULES_NAME in self._store.get_secrets(r.id)
        ]

    async def connect_agent(self, sandbox_id: str) -> AgentConnection:
        """Connect to a (re)started sandbox's agent and give it its secrets."""
        return await self.gateway.connect(sandbox_id)

    async def forget_agent(self, sandbox_id: str) -> None:
        """Close and forget the connection to the sandbox's agent (it is being stopped)."""
        await self.gateway.forget(sandbox_id)

    def streaming_sandboxes(self) -> builtins.list[str]:
        """The sandboxes with a stream (command, terminal, transfer) open through this server."""
        return self.gateway.streaming()

    def has_open_streams(self, sandbox_id: str) -> bool:
        """Whether a command, log stream, transfer or terminal is in flight (it is in use)."""
        return self.gateway.has_open_streams(sandbox_id)
