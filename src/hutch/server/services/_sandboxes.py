"""Sandbox lifecycle on the server: create, find, list, destroy, expire, recover after a crash.

The runtime owns containers and their host resources; the store owns what was promised to
clients. This module keeps the two in step, and holds one agent connection per sandbox.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hutch._wire.agent_ops import OpName
from hutch.node import (
    RULES_NAME,
    AgentConnection,
    AgentError,
    AgentGateway,
    AgentStream,
    EgressProxy,
    WarmPools,
    agent_env,
    seal_rules,
)
from hutch.runtime import (
    Image,
    ImageNotFound,
    ImageStore,
    Limits,
    NetworkPolicy,
    Runtime,
    SandboxSpec,
    image_command,
)
from hutch.server._errors import (
    ImageNotFoundError,
    InvalidRequest,
    SandboxExists,
    SandboxNotFound,
    SandboxNotRunning,
    SandboxStartFailed,
)
from hutch.server._models import SANDBOX_ID_RE, SANDBOX_ID_RULE, SandboxCreate, SandboxInfo
from hutch.server._offline_env import offline_env
from hutch.server.services._keys import now_iso
from hutch.server.services._secrets import SecretBox
from hutch.server.store._sqlite import SandboxRecord, Store

log = logging.getLogger("hutch.server")

# The process id of the image's ENTRYPOINT+CMD when a create asks to start it.
ENTRYPOINT_PROCESS_ID = "entrypoint"

# States a request wakes a sandbox from (server/_lifecycle.py).
SLEEPING = frozenset({"paused", "stopped"})


def check_sandbox_id(sandbox_id: str) -> str:
    if not SANDBOX_ID_RE.match(sandbox_id):
        raise InvalidRequest(
            f"invalid sandbox id {sandbox_id!r}: use {SANDBOX_ID_RULE}", code="invalid_sandbox_id"
        )
    return sandbox_id


def network_policy(record: SandboxRecord) -> NetworkPolicy:
    return NetworkPolicy.of(record.network, record.network_allow, record.network_deny)


def new_sandbox_id() -> str:
    return "sb-" + secrets.token_hex(6)


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


class _Steps:
    """Wall time of each step of a request, for the debug log (`HUTCH_LOG_LEVEL=debug`)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = now - self._last
        self._last = now

    def __str__(self) -> str:
        return " ".join(f"{k}={v * 1e3:.2f}ms" for k, v in self.timings.items())


class SandboxManager:
    def __init__(
        self,
        store: Store,
        runtime: Runtime,
        images: ImageStore,
        *,
        agent_timeout: float,
        pools: WarmPools | None = None,
        secrets: SecretBox | None = None,
    ) -> None:
        self._pools = pools
        # Sandboxes from a warm pool run under the pool's runtime id: the store's
        # `runtime_id`, cached here (every request and every proxied preview looks it up).
        self._runtime_ids: dict[str, str] = {}
        self._store = store
        self._secrets = secrets
        self._runtime = runtime
        self._images = images
        self._agent_timeout = agent_timeout
        self.gateway = AgentGateway(
            lambda sid: runtime.agent_socket(self._rid(sid)),
            timeout=agent_timeout,
            on_connect=self._send_secrets,
        )
        self._id_locks: dict[str, asyncio.Lock] = {}
        self.on_destroy: list[Callable[[str], None]] = []
        # Set by the lifecycle service: a request to a sleeping sandbox waits for its wake,
        # and every request counts as activity against its idle timer.
        self.waker: Callable[[str], Awaitable[object]] | None = None
        self.on_use: Callable[[str], None] | None = None
        # Egress header injection (node/_egress.py), when the server runs its proxy.
        self.egress: EgressProxy | None = None

    # -- start/stop ---------------------------------------------------------------------

    def runtime_id(self, sandbox_id: str) -> str:
        """The id the runtime knows this sandbox by (a pooled sandbox keeps its pool id)."""
        return self._rid(sandbox_id)

    def _rid(self, sandbox_id: str) -> str:
        return self._runtime_ids.get(sandbox_id, sandbox_id)

    def _load_runtime_ids(self) -> None:
        self._runtime_ids = {
            r.id: r.runtime_id for r in self._store.list_sandboxes() if r.runtime_id is not None
        }

    async def start(self) -> None:
        await self.recover()
        if self._pools is not None:
            self._pools.start()

    async def stop(self) -> None:
        if self._pools is not None:
            await self._pools.stop()
        # Sandboxes keep running: only our connections to them close.
        await self.gateway.close()

    async def recover(self) -> None:
        """Re-adopt what still runs, restart what the host lost, sweep what a crash left."""
        self._load_runtime_ids()
        containers = await self._runtime.list_sandboxes()
        keep: set[str] = set()
        for record in self._store.list_sandboxes():
            if record.status == "creating":
                # A create that never answered its client: nothing was promised, undo it.
                log.info("removing half-created sandbox %s", record.id)
                self._store.delete_sandbox(record.id)
                continue
            keep.add(self._rid(record.id))
            state = containers.get(self._rid(record.id))
            if state == "running" or record.status != "running":
                continue
            try:
                image = self._images.get(record.image_id)
                await self._runtime.start_existing(self._spec(record, image))
                log.info("restarted sandbox %s (its container was %s)", record.id, state)
            except Exception as exc:
                log.error("could not restart sandbox %s: %s", record.id, exc)
                self._store.set_sandbox_state(
                    record.id, "error", f"could not restart after a host restart: {exc}", None
                )
        self._load_runtime_ids()
        removed = await self._runtime.sweep(keep)
        for sandbox_id in removed:
            log.info("swept leftovers of sandbox %s", sandbox_id)
        for record in self._store.list_sandboxes():
            if record.status == "running":
                # Bucket mounts outlive a server crash (rclone runs in its own session):
                # re-adopt them, or mount again what a host or sandbox restart lost.
                rid = self._rid(record.id)
                await self._runtime.buckets.restore(rid, self._runtime.rootfs(rid))

    # -- lifecycle ----------------------------------------------------------------------

    def _lock_for(self, sandbox_id: str) -> asyncio.Lock:
        return self._id_locks.setdefault(sandbox_id, asyncio.Lock())

    def lock_for(self, sandbox_id: str) -> asyncio.Lock:
        """The lock that orders create, destroy and lifecycle steps of one sandbox."""
        return self._lock_for(sandbox_id)

    def spec_for(
        self, record: SandboxRecord, image: Image, disk_from: Path | None = None
    ) -> SandboxSpec:
        """What the runtime runs for this sandbox (`disk_from`: a disk to copy, see
        runtime/_snapshots.py)."""
        return self._spec(record, image, disk_from)

    def _spec(
        self, record: SandboxRecord, image: Image, disk_from: Path | None = None
    ) -> SandboxSpec:
        limits = Limits(
            cpu=record.cpu,
            memory_mb=record.memory_mb,
            pids=record.pids_limit,
            disk_mb=record.disk_mb,
        )
        policy = network_policy(record)
        return SandboxSpec(
            id=self._rid(record.id),
            image=image,
            env={**offline_env(policy, record.env), **record.env},
            limits=limits,
            runtime=record.runtime,  # type: ignore[arg-type]
            network=policy,
            disk_from=disk_from,
        )

    def _image(self, name: str) -> Image:
        try:
            return self._images.get(name)
        except ImageNotFound as exc:
            raise ImageNotFoundError(str(exc)) from None

    async def create(
        self,
        request: SandboxCreate,
        sandbox_id: str | None = None,
        *,
        disk_from: Path | None = None,
    ) -> SandboxRecord:
        sandbox_id = check_sandbox_id(sandbox_id or request.id or new_sandbox_id())
        async with self._lock_for(sandbox_id):
            return await self._create_locked(request, sandbox_id, disk_from)

    async def get_or_create(
        self, sandbox_id: str, request: SandboxCreate, *, disk_from: Path | None = None
    ) -> tuple[SandboxRecord, bool]:
        check_sandbox_id(sandbox_id)
        async with self._lock_for(sandbox_id):
            existing = self._store.get_sandbox(sandbox_id)
            if existing is not None:
                return existing, False
            return await self._create_locked(request, sandbox_id, disk_from), True

    async def _create_locked(
        self, request: SandboxCreate, sandbox_id: str, disk_from: Path | None = None
    ) -> SandboxRecord:
        steps = _Steps()
        image = self._image(request.image)
        steps.mark("image")
        if request.start_entrypoint and not image_command(image.config):
            raise InvalidRequest(
                f"image {request.image!r} has neither ENTRYPOINT nor CMD to start; create the "
                "sandbox without start_entrypoint and start a process yourself",
                code="image_has_no_entrypoint",
            )
        if request.runtime == "gvisor" and not self._runtime.supports("gvisor"):
            raise InvalidRequest(
                "runtime 'gvisor' is not available on this host (runsc is not installed); "
                "use runtime='runc'"
            )
        record = SandboxRecord(
            id=sandbox_id,
            status="creating",
            image=request.image,
            image_id=image.id,
            created_at=now_iso(),
            expires_at=time.time() + request.lifetime if request.lifetime else None,
            cpu=request.cpu,
            memory_mb=request.memory_mb,
            disk_mb=request.disk_mb,
            pids_limit=request.pids_limit,
            network=request.network,
            network_allow=list(request.network_allow),
            network_deny=list(request.network_deny),
            runtime=request.runtime,
            timeout=request.lifetime,
            sleep_after=request.idle_limit,
            keep_alive=request.keep_alive,
            on_idle=request.on_idle,
            on_timeout=request.on_timeout,
            start_entrypoint=request.start_entrypoint,
            env=dict(request.env),
            labels=dict(request.labels),
            secret_names=sorted(request.secrets),
        )
        if request.secrets and self._secrets is None:
            raise InvalidRequest("this server has no secret store; start it with a HUTCH_HOME")
        if request.egress_secrets and self.egress is None:
            raise InvalidRequest("this server runs no egress proxy; egress_secrets cannot be used")
        steps.mark("record")
        if self._store.get_sandbox(sandbox_id) is not None:
            raise _exists(sandbox_id)
        if self._pools is not None and disk_from is None:
            spec = self._spec(record, image)
            claimed = await self._pools.claim(image, spec.limits, spec.env, spec.runtime)
            steps.mark("claim")
            if claimed is not None:
                await self._adopt_pooled(record, request, *claimed, steps=steps)
        if record.status != "running":
            await self._create_cold(record, request, image, disk_from)
            steps.mark("cold")
        if request.egress_secrets:
            await self._open_egress(record)
            steps.mark("egress")
        if request.start_entrypoint:
            await self._start_entrypoint(record, image)
            steps.mark("entrypoint")
        log.debug("created sandbox %s: %s", sandbox_id, steps, extra={"timings": steps.timings})
        return record

    async def _open_egress(self, record: SandboxRecord) -> None:
        """The gateway port opens once the veth is there; the agent then learns the proxy's
        URL (its first secrets had only the placeholders). If that fails the sandbox goes."""
        assert self.egress is not None
        try:
            await self.egress.register(record.id, self._rid(record.id))
            await self._send_secrets(record.id, self.gateway.current(record.id))
        except BaseException as exc:
            self.egress.forget(record.id)
            with contextlib.suppress(Exception):
                await self._destroy_locked(record.id)
            if isinstance(exc, Exception):
                raise SandboxStartFailed(f"sandbox {record.id} failed to start: {exc}") from exc
            raise

    async def _start_entrypoint(self, record: SandboxRecord, image: Image) -> None:
        """Start the image's ENTRYPOINT+CMD as the process `entrypoint` (with the image's user,
        env and working dir, as every process); if it cannot start, the sandbox goes again."""
        conn = self.gateway.current(record.id)
        try:
            await asyncio.wait_for(
                conn.call("process_start", **entrypoint_request(image)), self._agent_timeout
            )
        except (AgentError, TimeoutError) as exc:
            with contextlib.suppress(Exception):
                await self._destroy_locked(record.id)
            message = exc.message if isinstance(exc, AgentError) else "timed out"
            raise InvalidRequest(
                f"the entrypoint of image {record.image!r} could not start ({message}); the "
                "sandbox was removed",
                code="entrypoint_failed",
            ) from exc

    async def _adopt_pooled(
        self,
        record: SandboxRecord,
        request: SandboxCreate,
        runtime_id: str,
        conn: AgentConnection,
        *,
        steps: _Steps,
    ) -> None:
        """Make a sandbox handed out by a pool this one: its policy and secrets, then its row
        (with the runtime id and the sealed secrets) in one transaction. A crash before that
        commit leaves only a pool sandbox that no row claims, which recovery sweeps."""
        try:
            # Pooled sandboxes start with no egress; give this one what was asked for
            # (an nft transaction costs ~15 ms, so only when it differs).
            policy = network_policy(record)
            if policy != NetworkPolicy():
                await self._runtime.set_network_policy(runtime_id, policy)
            steps.mark("policy")
            sealed = None
            if request.secrets and self._secrets is not None:
                # A pooled agent was connected before this sandbox had secrets. Egress secrets
                # go as placeholders only (agent_env); the proxy's URL follows in _open_egress.
                plain = _secrets_to_store(request)
                sealed = self._secrets.seal(plain)
                await asyncio.wait_for(
                    conn.call("set_secrets", env=agent_env(plain, None, None)),
                    self._agent_timeout,
                )
            steps.mark("secrets")
            record.status = "running"
            record.runtime_id = runtime_id
            if not self._store.insert_sandbox(record, sealed):
                raise _exists(record.id)
            steps.mark("insert")
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await conn.close()
            with contextlib.suppress(Exception):
                await asyncio.shield(self._runtime.destroy(runtime_id))
            if isinstance(exc, Exception) and not isinstance(exc, SandboxExists):
                raise SandboxStartFailed(f"sandbox {record.id} failed to start: {exc}") from exc
            raise
        self._runtime_ids[record.id] = runtime_id
        self.gateway.adopt(record.id, conn)

    async def _create_cold(
        self,
        record: SandboxRecord,
        request: SandboxCreate,
        image: Image,
        disk_from: Path | None = None,
    ) -> None:
        sandbox_id = record.id
        sealed = None
        if request.secrets and self._secrets is not None:
            sealed = self._secrets.seal(_secrets_to_store(request))
        if not self._store.insert_sandbox(record, sealed):
            raise _exists(sandbox_id)
        try:
            socket_path = await self._runtime.create(
                self._spec(record, image, disk_from), defer_network=True
            )
            conn = await self.gateway.connect(sandbox_id, socket_path)
            # The veth is attached while the agent starts; both before anyone gets it.
            await asyncio.wait_for(
                asyncio.gather(conn.call("ping"), self._runtime.network_ready(sandbox_id)),
                self._agent_timeout,
            )
        except BaseException as exc:
            await self.gateway.forget(sandbox_id)
            if self.egress is not None:
                self.egress.forget(sandbox_id)
            with contextlib.suppress(Exception):
                await self._runtime.destroy(sandbox_id)
            self._store.delete_sandbox(sandbox_id)
            if isinstance(exc, Exception):
                raise SandboxStartFailed(f"sandbox {sandbox_id} failed to start: {exc}") from exc
            raise
        self._store.set_sandbox_status(sandbox_id, "running")
        record.status = "running"

    def get(self, sandbox_id: str) -> SandboxRecord:
        check_sandbox_id(sandbox_id)
        record = self._store.get_sandbox(sandbox_id)
        if record is None:
            raise SandboxNotFound(sandbox_id)
        return record

    def list(self, labels: Mapping[str, str]) -> list[SandboxRecord]:
        return [
            r
            for r in self._store.list_sandboxes()
            if all(r.labels.get(k) == v for k, v in labels.items())
        ]

    async def destroy(self, sandbox_id: str) -> None:
        self.get(sandbox_id)
        async with self._lock_for(sandbox_id):
            await self._destroy_locked(sandbox_id)
        self._id_locks.pop(sandbox_id, None)

    async def _destroy_locked(self, sandbox_id: str) -> None:
        await self.gateway.forget(sandbox_id)
        await self._runtime.destroy(self._rid(sandbox_id))
        self._store.delete_sandbox(sandbox_id)
        self._runtime_ids.pop(sandbox_id, None)
        for hook in self.on_destroy:
            hook(sandbox_id)

    # -- agent connections ----------------------------------------------------------------

    async def _send_secrets(self, sandbox_id: str, conn: AgentConnection) -> None:
        """Give the agent the sandbox's secrets (kept in its memory, never in config.json).

        Sent on every new connection: idempotent, and it covers a container restarted by
        recovery, whose agent starts with none.
        """
        if self._secrets is None:
            return
        sealed = self._store.get_secrets(sandbox_id)
        if not sealed:
            return
        egress = self.egress
        values = agent_env(
            self._secrets.open_all(sealed),
            self._runtime.sandbox_gateway(self._rid(sandbox_id)),
            egress.port if egress is not None else None,
        )
        await asyncio.wait_for(conn.call("set_secrets", env=values), self._agent_timeout)

    async def running(self, sandbox_id: str) -> SandboxRecord:
        """The sandbox, once it runs: a sleeping one is woken first (the caller waits)."""
        record = self.get(sandbox_id)
        if self.on_use is not None:
            self.on_use(sandbox_id)
        if record.status in SLEEPING and self.waker is not None:
            await self.waker(sandbox_id)
            record = self.get(sandbox_id)
        if record.status != "running":
            reason = f" ({record.status_reason})" if record.status_reason else ""
            raise SandboxNotRunning(
                f"sandbox {sandbox_id} is {record.status}{reason}; start it "
                f"(POST /v1/sandboxes/{sandbox_id}/start), or destroy it and create a new one"
            )
        return record

    async def agent(self, sandbox_id: str) -> AgentConnection:
        """The live shared connection to a running sandbox's agent, (re)connecting if needed."""
        await self.running(sandbox_id)
        return await self.gateway.shared(sandbox_id)

    async def call(self, sandbox_id: str, op: OpName, **args: Any) -> dict[str, Any]:
        """One request to a running sandbox's agent (agent errors propagate: the app maps them)."""
        await self.running(sandbox_id)
        return await self.gateway.call(sandbox_id, op, **args)

    async def open_stream(
        self, sandbox_id: str, request: dict[str, Any], conn: AgentConnection | None = None
    ) -> AgentStream:
        """A stream to a running sandbox's agent, on `conn` or the shared connection."""
        await self.running(sandbox_id)
        return await self.gateway.open_stream(sandbox_id, request, conn)

    async def open_own(
        self, sandbox_id: str, request: dict[str, Any]
    ) -> tuple[AgentConnection, AgentStream]:
        """A stream on a connection of its own (transfers, watches); close the connection when
        the stream ends."""
        await self.running(sandbox_id)
        return await self.gateway.open_own(sandbox_id, request)

    async def dedicated_agent(self, sandbox_id: str) -> AgentConnection:
        """A new connection of its own to a running sandbox's agent; the caller closes it."""
        await self.running(sandbox_id)
        return await self.gateway.dedicated(sandbox_id)

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

    async def connect_agent(self, sandbox_id: str, socket_path: Path) -> AgentConnection:
        """Connect to a (re)started sandbox's agent and give it its secrets."""
        return await self.gateway.connect(sandbox_id, socket_path)

    async def forget_agent(self, sandbox_id: str) -> None:
        """Close and forget the connection to the sandbox's agent (it is being stopped)."""
        await self.gateway.forget(sandbox_id)

    def has_open_streams(self, sandbox_id: str) -> bool:
        """Whether a command, log stream, transfer or terminal is in flight (it is in use)."""
        return self.gateway.has_open_streams(sandbox_id)


def entrypoint_request(image: Image) -> dict[str, object]:
    """The agent's process_start of the image's ENTRYPOINT+CMD (at create, and at start)."""
    return {
        "id": ENTRYPOINT_PROCESS_ID,
        "command": None,
        "argv": image_command(image.config),
        "cwd": None,
        "env": None,
        "user": None,
        "stdin": True,
        "log_limit": None,
    }


def _secrets_to_store(request: SandboxCreate) -> dict[str, str]:
    """The secrets and, sealed with them, the egress rules that name some of them."""
    return {**request.secrets, **seal_rules(r.model_dump() for r in request.egress_secrets)}


def _exists(sandbox_id: str) -> SandboxExists:
    return SandboxExists(
        f"a sandbox with id {sandbox_id!r} already exists; use PUT /v1/sandboxes/{{id}} "
        "(Sandbox.get_or_create) to reuse it, or choose another id"
    )
