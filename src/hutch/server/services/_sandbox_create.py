"""Creating a sandbox (the create path of `SandboxManager`): admission, the record, then a
sandbox claimed from a warm pool and adopted, or a cold start (from an image or a disk
snapshot), then egress and the image's entrypoint. Lifecycle, bookkeeping, spec building and
the agent connections are in _sandboxes.py, whose `SandboxManager` takes these methods in.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from datetime import datetime
from typing import Any

from hutch._wire.agent_calls import ProcessStartArgs
from hutch._wire.sandbox_events import SandboxEventType
from hutch.node import (
    AgentConnection,
    AgentError,
    AgentGateway,
    EgressRegistry,
    SandboxHost,
    agent_env,
    seal_rules,
)
from hutch.runtime import (
    Image,
    ImageNotFound,
    ImageStore,
    NetworkPolicy,
    SandboxSpec,
    image_command,
)
from hutch.server._ca_certificates import parse_ca_certificates
from hutch.server._errors import (
    ImageNotFoundError,
    InvalidRequest,
    NoCapacity,
    NodeUnavailableError,
    QuotaExceeded,
    SandboxExists,
    SandboxNotFound,
    SandboxStartFailed,
)
from hutch.server._models import SANDBOX_ID_RE, SANDBOX_ID_RULE, SandboxCreate
from hutch.server.services._caller import current_team, visible
from hutch.server.services._cold_starts import ColdStartGate
from hutch.server.services._events import EventSink
from hutch.server.services._image_owners import ImageOwners
from hutch.server.services._keys import now_iso
from hutch.server.services._network_names import NetworkNames, split_allow
from hutch.server.services._secrets import SecretBox
from hutch.server.services._starts import PendingStarts
from hutch.server.store._off_loop import off_loop, point_read
from hutch.server.store._records import TeamAdmission
from hutch.server.store._sqlite import SandboxRecord, Store

TYPE_CHECKING = False

log = logging.getLogger("hutch.server")

# The process id of the image's ENTRYPOINT+CMD when a create asks to start it.
ENTRYPOINT_PROCESS_ID = "entrypoint"

# What admits a create (the team's quotas), reserving what it asks for until it ends.
Admission = Callable[[str, SandboxCreate], AbstractAsyncContextManager[None]]


def check_sandbox_id(sandbox_id: str) -> str:
    if not SANDBOX_ID_RE.match(sandbox_id):
        raise InvalidRequest(
            f"invalid sandbox id {sandbox_id!r}: use {SANDBOX_ID_RULE}", code="invalid_sandbox_id"
        )
    return sandbox_id


# A create older than this has nobody finishing it (its API replica died mid-create): a cold
# start, even queued behind others (services/_cold_starts.py), ends within minutes.
ABANDONED_CREATE_AFTER = 600.0


def create_abandoned(record: SandboxRecord, now: float) -> bool:
    """Whether a `creating` sandbox is a create that no replica is finishing any more."""
    try:
        made = datetime.fromisoformat(record.created_at).timestamp()
    except ValueError:
        return True
    return now - made > ABANDONED_CREATE_AFTER


def new_sandbox_id() -> str:
    return "sb-" + secrets.token_hex(6)


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


class SandboxCreation:
    """The create path; `SandboxManager` (services/_sandboxes.py) is the class that has it."""

    # Set by SandboxManager.__init__ (and by the app, for the hooks).
    _pools: bool
    spare_connections: bool
    _runtime_ids: dict[str, str]
    _store: Store
    _secrets: SecretBox | None
    _host: SandboxHost
    _images: ImageStore
    _agent_timeout: float
    gateway: AgentGateway
    egress: EgressRegistry | None
    default_runtime: str
    admission: Admission | None
    row_admission: Callable[[SandboxRecord], TeamAdmission | None] | None
    image_owners: ImageOwners
    names: NetworkNames
    events: EventSink
    cold_starts: ColdStartGate
    # Sandboxes whose create connects to the agent and sealed no secrets (`_connect_new`).
    _fresh: set[str]
    # Starts that settle after their create answered (services/_starts.py).
    starts: PendingStarts
    other_replicas: bool

    if TYPE_CHECKING:
        # SandboxManager's own (lifecycle, spec building, agent connections).
        def _lock_for(self, sandbox_id: str) -> asyncio.Lock: ...
        def _rid(self, sandbox_id: str) -> str: ...
        def _spec(
            self, record: SandboxRecord, image: Image, *, runtime_id: str | None = None
        ) -> SandboxSpec: ...
        def _policy(self, record: SandboxRecord) -> NetworkPolicy: ...
        async def _destroy_locked(self, sandbox_id: str) -> None: ...
        async def _send_secrets(self, sandbox_id: str, conn: AgentConnection) -> None: ...

    def _image(self, name: str) -> Image:
        try:
            image = self._images.get(name)
        except ImageNotFound as exc:
            raise ImageNotFoundError(str(exc)) from None
        if not self.image_owners.visible(name, image):  # another team's: as if unknown
            raise ImageNotFoundError(str(ImageNotFound(name)))
        return image

    async def create(
        self,
        request: SandboxCreate,
        sandbox_id: str | None = None,
        *,
        snapshot: str | None = None,
    ) -> SandboxRecord:
        """`snapshot`: the id of a disk snapshot (`SandboxHost.take_snapshot`) to start from."""
        chosen = sandbox_id or request.id
        sandbox_id = check_sandbox_id(chosen or new_sandbox_id())
        async with self._lock_for(sandbox_id), self._admit(sandbox_id, request):
            # NB: an id made here (48 random bits) is not looked up first: the row's insert
            # still refuses one that exists (409), and the look-up is a database round trip
            # before anything starts, on every create through a replica.
            return await self._create_locked(request, sandbox_id, snapshot, looked_up=not chosen)

    def _admit(self, sandbox_id: str, request: SandboxCreate) -> AbstractAsyncContextManager[None]:
        if self.admission is None:
            return contextlib.nullcontext()
        return self.admission(sandbox_id, request)

    def _admit_row(self, record: SandboxRecord) -> TeamAdmission | None:
        return None if self.row_admission is None else self.row_admission(record)

    async def get_or_create(
        self, sandbox_id: str, request: SandboxCreate, *, snapshot: str | None = None
    ) -> tuple[SandboxRecord, bool]:
        check_sandbox_id(sandbox_id)
        async with self._lock_for(sandbox_id):
            existing = await point_read(self._store, self._store.get_sandbox, sandbox_id)
            if existing is not None:
                if not visible(existing.team):
                    raise SandboxNotFound(sandbox_id)
                return existing, False
            async with self._admit(sandbox_id, request):
                created = await self._create_locked(request, sandbox_id, snapshot, looked_up=True)
                return created, True

    async def _create_locked(
        self,
        request: SandboxCreate,
        sandbox_id: str,
        snapshot: str | None = None,
        *,
        looked_up: bool = False,
    ) -> SandboxRecord:
        """`looked_up`: no need to look for an existing sandbox of this id first (the
        caller did, or made the id); the insert refuses one all the same."""
        steps = _Steps()
        if "runtime" not in request.model_fields_set:
            request = request.model_copy(update={"runtime": self.default_runtime})
        image = self._image(request.image)
        steps.mark("image")
        if request.start_entrypoint and not image_command(image.config):
            raise InvalidRequest(
                f"image {request.image!r} has neither ENTRYPOINT nor CMD to start; create the "
                "sandbox without start_entrypoint and start a process yourself",
                code="image_has_no_entrypoint",
            )
        own_cas = _own_cas(request)
        await self.names.resolve(split_allow(request.network_allow)[1], strict=True)
        if request.runtime == "gvisor" and not self._host.supports("gvisor"):
            raise InvalidRequest(
                "runtime 'gvisor' is not available here (runsc is not installed on this host, "
                "or on any node of this cluster); use runtime='runc'"
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
            team=current_team(),
        )
        if request.secrets and self._secrets is None:
            raise InvalidRequest("this server has no secret store; start it with a HUTCH_HOME")
        if request.egress_secrets and self.egress is None:
            raise InvalidRequest("this server runs no egress proxy; egress_secrets cannot be used")
        steps.mark("record")
        if not looked_up:
            if await point_read(self._store, self._store.get_sandbox, sandbox_id) is not None:
                raise _exists(sandbox_id)
        if self._pools and snapshot is None and not own_cas:
            spec = self._spec(record, image, runtime_id=sandbox_id)  # for its limits and env
            claimed = await self._host.claim_pooled(
                sandbox_id, image, spec.limits, spec.env, spec.runtime
            )
            steps.mark("claim")
            if claimed is not None:
                await self._adopt_pooled(record, request, *claimed, steps=steps)
        emitted = False
        if record.status != "running":
            async with contextlib.AsyncExitStack() as slot:
                await slot.enter_async_context(self.cold_starts.slot())
                steps.mark("queued")
                # The agent's start may settle after this create answers (`_answers_early`):
                # the slot is then held until it does, as an overloaded host needs.
                early = slot if self._answers_early(request) else None
                emitted = await self._create_cold(
                    record, request, image, snapshot, own_cas, steps, early=early
                )
        if request.egress_secrets:
            await self._open_egress(record)
            steps.mark("egress")
        if request.start_entrypoint:
            await self._start_entrypoint(record, image)
            steps.mark("entrypoint")
        log.debug("created sandbox %s: %s", sandbox_id, steps, extra={"timings": steps.timings})
        if not emitted:
            self.events.emit_many(sandbox_id, *_created_events(record))
        return record

    def _answers_early(self, request: SandboxCreate) -> bool:
        """Whether a cold create may answer before its agent does (services/_starts.py).
        Not when it still talks to the agent itself (egress secrets, the entrypoint), and
        not where another API replica may take the next request: only this server's
        requests wait for the start (a replica's create answers once the agent did)."""
        return not (
            request.egress_secrets
            or request.start_entrypoint
            or self._store.remote
            or self.other_replicas
        )

    async def _connect_new(
        self, sandbox_id: str, *, secrets: bool, steps: _Steps, spare: bool = False
    ) -> None:
        """The new sandbox's shared agent connection, its agent's answer, and the first
        exec's spare connection. `secrets`: whether the create sealed any; if not, the new
        connection does not read them (none can be there yet: a round trip in a cluster)."""
        if not secrets:
            self._fresh.add(sandbox_id)
        try:
            conn = await self.gateway.connect(sandbox_id)
        finally:
            self._fresh.discard(sandbox_id)
        steps.mark("connect")
        await asyncio.gather(conn.call("ping"), self._open_spare(sandbox_id, spare))

    async def _open_spare(self, sandbox_id: str, spare: bool) -> None:
        # NB: a cold create only, where it overlaps the agent's start; a pooled sandbox's
        # agent answers at once, so there it would only move the cost from exec to create.
        # `spare`: a create that answered early, whose first exec waits for this start.
        if self.spare_connections or spare:
            await self.gateway.open_spare(sandbox_id)

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
                raise SandboxStartFailed(
                    f"sandbox {record.id} failed to start: {_why(exc)}"
                ) from exc
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
        # Known before anything reaches the host: the host finds the container by it.
        previous = self._runtime_ids.get(record.id)
        self._runtime_ids[record.id] = runtime_id
        try:
            # Pooled sandboxes start with no egress; give this one what was asked for
            # (an nft transaction costs ~15 ms, so only when it differs).
            policy = self._policy(record)
            if policy != NetworkPolicy():
                await self._host.set_network_policy(record.id, policy)
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
            admit = self._admit_row(record)
            if not await off_loop(self._store, self._store.insert_sandbox, record, sealed, admit):
                raise _exists(record.id)
            steps.mark("insert")
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await conn.close()
            with contextlib.suppress(Exception):
                await asyncio.shield(self._host.destroy(record.id))
            if previous is None:
                self._runtime_ids.pop(record.id, None)
            else:
                self._runtime_ids[record.id] = previous
            if isinstance(exc, Exception) and not isinstance(exc, SandboxExists | QuotaExceeded):
                raise SandboxStartFailed(
                    f"sandbox {record.id} failed to start: {_why(exc)}"
                ) from exc
            raise
        self.gateway.adopt(record.id, conn)

    async def _create_cold(
        self,
        record: SandboxRecord,
        request: SandboxCreate,
        image: Image,
        snapshot: str | None = None,
        own_cas: tuple[str, ...] = (),
        steps: _Steps | None = None,
        *,
        early: contextlib.AsyncExitStack | None = None,
    ) -> bool:
        """Whether it emitted the create's events (with its `running` update).

        `early`: answer once the container runs, and let the agent's answer and the network
        settle in the background (`self.starts`), holding what `early` holds until then."""
        steps = steps or _Steps()
        sandbox_id = record.id
        sealed = None
        if request.secrets and self._secrets is not None:
            sealed = self._secrets.seal(_secrets_to_store(request))
        admit = self._admit_row(record)
        # NB: a cold start's container is named by the sandbox's id: no look-up of it.
        spec = self._spec(record, image, runtime_id=sandbox_id)
        spec = replace(spec, ca_certificates=own_cas)
        insert = off_loop(self._store, self._store.insert_sandbox, record, sealed, admit)
        if self._store.remote:
            # Placement's read (a cluster) beside the insert: it leaves this sandbox out.
            inserted, _ = await asyncio.gather(insert, self._host.prepare_create(sandbox_id, spec))
        else:
            inserted = await insert
        if not inserted:
            raise _exists(sandbox_id)
        steps.mark("insert")
        ready: asyncio.Future[Any] | None = None
        try:
            await self._host.create(sandbox_id, spec, defer_network=True, snapshot=snapshot)
            steps.mark("host_create")
            # The veth is attached while the agent starts; both before anyone gets it. Asked
            # for at once, not after the agent connection: in a cluster each is a round trip
            # to the node, and they overlap.
            ready = asyncio.ensure_future(
                asyncio.wait_for(
                    asyncio.gather(
                        self._connect_new(
                            sandbox_id,
                            secrets=sealed is not None,
                            steps=steps,
                            spare=early is not None,
                        ),
                        self._host.network_ready(sandbox_id),
                    ),
                    self._agent_timeout,
                )
            )
            if early is None:
                await ready
                steps.mark("ping_network")
        except BaseException as exc:
            if ready is not None:
                ready.cancel()
            await self._undo_start(sandbox_id)
            if isinstance(exc, (NoCapacity, NodeUnavailableError)):
                raise  # placement's own answer (several hosts), with what each node said
            if isinstance(exc, Exception):
                raise SandboxStartFailed(
                    f"sandbox {sandbox_id} failed to start: {_why(exc)}"
                ) from exc
            raise
        running = functools.partial(
            self._store.transition,
            sandbox_id,
            ("creating",),
            "running",
            None,
            record.expires_at,
        )
        # NB: on a remote store the events are written right after the update, in the same
        # call off the event loop (they were a round trip on the loop after it); on one host
        # at the create's end, as every other emit.
        emitted = self._store.remote
        try:
            if emitted:
                events = _created_events(record)
                ran = await self.events.emit_many_after(self._store, sandbox_id, running, *events)
            else:
                ran = await off_loop(self._store, running)
        except BaseException:
            ready.cancel()  # NB: done already unless this create answers early
            raise
        if not ran:
            # Its row went meanwhile (destroyed through another API replica): so does it.
            ready.cancel()
            await self.gateway.forget(sandbox_id)
            with contextlib.suppress(Exception):
                await self._host.destroy(sandbox_id)
            raise SandboxStartFailed(f"sandbox {sandbox_id} was destroyed while it started")
        steps.mark("running")
        record.status = "running"
        if early is not None:
            # NB: the slot (and whatever else `early` holds) goes with the start.
            self.starts.begin(sandbox_id, self._settle_start(sandbox_id, ready, early.pop_all()))
        return emitted

    async def _settle_start(
        self, sandbox_id: str, ready: asyncio.Future[Any], held: contextlib.AsyncExitStack
    ) -> None:
        """The rest of a start whose create has answered: the agent's answer and the
        network. If they fail the sandbox goes, as a failed create's does."""
        started = time.perf_counter()
        async with held:
            try:
                await ready
            except Exception as exc:
                log.warning(
                    "sandbox %s: its agent or network did not come up after its create "
                    "answered (%s); removing it",
                    sandbox_id,
                    _why(exc),
                )
                with contextlib.suppress(Exception):
                    await self._destroy_locked(sandbox_id)
                raise SandboxStartFailed(
                    f"sandbox {sandbox_id} failed to start: {_why(exc)}; it was removed, "
                    "create another"
                ) from exc
        waited = time.perf_counter() - started
        # NB: a `created sandbox` line, as the create's own (the stages benches read both).
        log.debug(
            "created sandbox %s: ping_network=%.2fms (settled after the create answered)",
            sandbox_id,
            waited * 1e3,
            extra={"timings": {"ping_network": waited}},
        )

    async def _undo_start(self, sandbox_id: str) -> None:
        """Remove what a cold start that failed before its `running` update made."""
        await self.gateway.forget(sandbox_id)
        if self.egress is not None:
            self.egress.forget(sandbox_id)
        with contextlib.suppress(Exception):
            await self._host.destroy(sandbox_id)
        await off_loop(self._store, self._store.delete_sandbox, sandbox_id)


def _created_events(record: SandboxRecord) -> tuple[tuple[SandboxEventType, dict[str, Any]], ...]:
    return (("created", {"image": record.image}), ("started", {}))


def entrypoint_request(image: Image) -> ProcessStartArgs:
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


def _why(exc: BaseException) -> str:
    """An exception's text, or what it means when it has none (a TimeoutError has none)."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return "its agent did not answer in time (the host may be overloaded); retry"
    return str(exc) or type(exc).__name__


def _exists(sandbox_id: str) -> SandboxExists:
    return SandboxExists(
        f"a sandbox with id {sandbox_id!r} already exists; use PUT /v1/sandboxes/{{id}} "
        "(Sandbox.get_or_create) to reuse it, or choose another id"
    )


def _own_cas(request: SandboxCreate) -> tuple[str, ...]:
    try:
        return parse_ca_certificates(request.ca_certificates)
    except ValueError as exc:
        raise InvalidRequest(str(exc), code="invalid_ca_certificate") from None
