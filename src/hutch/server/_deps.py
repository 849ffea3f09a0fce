"""What every route depends on: the app's `Services`, the `Svc` dependency and `require_key`
(which yields the request's `Caller`: key id, team, role).

Routes import this module; it imports no route (the app factory in _app.py includes them).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import Depends, Header, Request

from hutch.node import EgressProxy, LocalHost, SandboxHost, WarmPools
from hutch.proxy import PreviewRoutes
from hutch.runtime import ImageNotFound, ImageStore, Runtime, RuntimeConfig
from hutch.server._ca_certificates import server_ca_certificates
from hutch.server._config import ServerConfig
from hutch.server._metrics import ServerMetrics, UsageHistory
from hutch.server._models import ErrorBody
from hutch.server.services._backups import Backups
from hutch.server.services._caller import CURRENT_CALLER, Caller, require_admin
from hutch.server.services._cluster_host import ClusterHost
from hutch.server.services._cold_starts import ColdStartGate
from hutch.server.services._deaths import DeathWatch
from hutch.server.services._egress_grants import NodeEgress
from hutch.server.services._events import SandboxEvents
from hutch.server.services._fork_leftovers import ForkLeftovers
from hutch.server.services._keys import KeyChecker, key_from_headers
from hutch.server.services._lifecycle import Lifecycle, LifecyclePolicy
from hutch.server.services._moves import Mover
from hutch.server.services._network_names import NetworkNames
from hutch.server.services._node_watch import NodeWatch
from hutch.server.services._quotas import Quotas
from hutch.server.services._ratelimit import RateLimits
from hutch.server.services._reconciler import Reconciler
from hutch.server.services._sandboxes import SandboxManager
from hutch.server.services._secrets import SecretBox
from hutch.server.services._teams import Teams
from hutch.server.store._off_loop import off_loop, point_read
from hutch.server.store._open import open_event_log, open_store
from hutch.server.store._runtime_ids_file import import_runtime_ids_file
from hutch.server.store._sqlite import Store

FRAMES_MEDIA_TYPE = "application/x-hutch-frames"
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (401, 403, 404, 409, 413, 422, 429, 503)
}


class Services:
    """What the routes need; made once per app in the lifespan."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.store: Store = open_store(config.db_path, config.database_url)
        import_runtime_ids_file(config.home / "runtime-ids.json", self.store)
        self.images = ImageStore(config.image_root)
        self.runtime = Runtime(
            RuntimeConfig(
                home=config.home,
                storage_size_gb=config.storage_size_gb,
                network_subnet=config.network_subnet,
                resolv=config.resolv_conf,
                ca_certificates=server_ca_certificates(config.ca_certificates_file),
            )
        )
        self.previews = PreviewRoutes(config.preview_domain)
        self.keys = KeyChecker(self.store, config.api_key)
        self.teams = Teams(self.store)
        # NB: replicas on one database share each key's bucket (a row), so a key's rate holds
        # across them all; one server keeps its buckets in memory (no write per request).
        shared = config.database_url is not None or config.cluster
        if shared:
            # Replicas: a sandbox's row from memory while every change of it is heard
            # (PostgreSQL's LISTEN/NOTIFY; store/_row_watch.py), not a read per request.
            self.store.watch_sandboxes()
        self.rate_limits = RateLimits(
            config.rate_per_second, config.rate_burst, self.store if shared else None
        )
        # Strong references to fire-and-forget tasks (asyncio keeps only weak ones).
        self.background: set[asyncio.Task[None]] = set()
        self.pools = WarmPools(
            self.runtime, self.images, config.warm_pools, agent_timeout=config.agent_connect_timeout
        )
        # The one way the API reaches the host (by sandbox id; routes and services never
        # touch the runtime, nor a runtime id). Late-bound: the manager holds the id map.
        self.cluster: ClusterHost | None = None
        if config.cluster:
            # Several hosts: every sandbox lives on a node daemon (services/_cluster_host.py).
            if not config.node_token:
                raise ValueError("a cluster API replica needs node_token (HUTCH_NODE_TOKEN)")
            self.cluster = ClusterHost(
                self.store,
                config.node_token,
                lambda sid: self.sandboxes.runtime_id(sid),
                pool_sizes=config.warm_pools,
                image_id=self._image_id,
            )
            self.host: SandboxHost = self.cluster
        else:
            self.host = LocalHost(
                self.runtime, lambda sandbox_id: self.sandboxes.runtime_id(sandbox_id), self.pools
            )
        self.sandboxes = SandboxManager(
            self.store,
            self.host,
            self.images,
            agent_timeout=config.agent_connect_timeout,
            # On a cluster the nodes fill the pools; creates claim through the store.
            pools=True,
            secrets=SecretBox.open(config.home),
        )
        self.sandboxes.shared_runtime_ids = config.cluster
        self.sandboxes.spare_connections = config.cluster
        self.sandboxes.other_replicas = shared
        self.events = SandboxEvents(open_event_log(self.store, config.db_path))
        self.sandboxes.events = self.events
        # Set when the server begins to shut down: open streams end (clients resume elsewhere).
        self.draining = asyncio.Event()
        self.egress = EgressProxy(
            self.store,
            SecretBox.open(config.home),
            self.runtime,
            config.home,
            port=config.egress_port,
            upstreams=config.egress_upstreams,
        )
        # On a cluster the proxy runs on each sandbox's node; the replica grants it the keys.
        self.sandboxes.egress = (
            NodeEgress(self.cluster, self.store, SecretBox.open(config.home))
            if self.cluster is not None
            else self.egress
        )
        self.sandboxes.cold_starts = ColdStartGate(
            config.cold_start_slots, wait=config.cold_start_wait
        )
        self.sandboxes.cold_starts.closing = self.draining  # queued creates end at a SIGTERM
        self.sandboxes.default_runtime = config.default_runtime
        self.sandboxes.names = NetworkNames(config.resolv_conf)
        self.quotas = Quotas(
            self.store,
            self.teams.quota,
            host_cpus=None if config.cluster else os.cpu_count() or 1,
        )
        self.sandboxes.admission = self.quotas.admit
        self.sandboxes.row_admission = self.quotas.admit_rows
        self.node_watch = (
            NodeWatch(self.store, self.cluster, self.sandboxes) if self.cluster else None
        )
        self.sandboxes.on_destroy.append(self.egress.forget)
        self.lifecycle = Lifecycle(
            self.sandboxes,
            self.store,
            self.host,
            self.images,
            policy=LifecyclePolicy(
                default_timeout=config.default_timeout,
                # NB: several replicas (PostgreSQL or a cluster's shared database) must agree
                # on when a sandbox was last used.
                shared_activity=config.database_url is not None or config.cluster,
            ),
            agent_timeout=config.agent_connect_timeout,
        )
        self.lifecycle.on_stop.append(self.egress.forget)
        self.lifecycle.lifetime_cap = self.quotas.lifetime_cap
        self.lifecycle.snapshot_quota = self.quotas.admit_snapshot
        self.lifecycle.lifetime_quota = self.quotas.check_lifetime
        self.lifecycle.start_admission = self.quotas.admit_start
        self.reconciler = Reconciler(
            self.lifecycle,
            self.store,
            # NB: a cluster only: one host keeps no snapshot_nodes rows.
            fork_leftovers=ForkLeftovers(self.store, self.cluster) if self.cluster else None,
        )
        self.deaths = DeathWatch(self.sandboxes, self.store, self.host)
        self.backups = Backups(
            self.lifecycle, self.sandboxes, self.store, self.host, self.images, workdir=config.home
        )
        # `drain --move` (a cluster only: one host has nowhere to move to).
        self.mover = (
            Mover(self.cluster, self.sandboxes, self.lifecycle, self.store, self.images)
            if self.cluster
            else None
        )
        self.metrics = ServerMetrics()
        self.metrics.watch_state(self.store, self.host)
        self.usage_history = UsageHistory(self.host, self.sandboxes.running_ids)

    def _image_id(self, name: str) -> str | None:
        try:
            return self.images.get(name).id
        except ImageNotFound:
            return None


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def _services_dependency(request: Request) -> Services:
    # NB: async, though it awaits nothing: FastAPI runs a plain `def` dependency in its
    # thread pool, a thread hop on every request (seen in py-spy on the exec path).
    return services(request)


Svc = Annotated[Services, Depends(_services_dependency)]


def authorize(
    svc: Services, key: str | None, path_params: Mapping[str, str], state: Any = None
) -> Caller:
    """The caller behind `key`, for this request: authenticated (401), within its rate (429),
    kept off other teams' sandbox routes (404); every service sees it from here on. The key's
    id goes on the request's `state` too, for the access and audit logs (_access_log.py)."""
    caller = svc.keys.caller(key)
    if state is not None:
        state.key_id = caller.key_id
    svc.rate_limits.take(caller, svc.teams.quota(caller.team))
    svc.teams.check_sandbox_path(caller, path_params)
    CURRENT_CALLER.set(caller)
    return caller


async def authorize_off_loop(
    svc: Services, key: str | None, path_params: Mapping[str, str], state: Any = None
) -> Caller:
    """`authorize`, with its store reads (the key, the team's quota, the sandbox's team) off
    the event loop on a store that waits on the network."""
    # NB: a team's key from the store's memory where it keeps the row current (replicas on
    # PostgreSQL: store/_row_watch.py), as the quota and the sandbox's team below.
    caller = svc.keys.static_caller(key) or svc.keys.cached_caller(key)
    if caller is None:
        caller = await point_read(svc.store, svc.keys.caller, key)
    if state is not None:
        state.key_id = caller.key_id
    quota = svc.teams.cached_quota(caller.team)
    if quota is None:
        quota = await point_read(svc.store, svc.teams.quota, caller.team)
    if svc.rate_limits.shared:  # the buckets are rows in the database
        await off_loop(svc.store, svc.rate_limits.take, caller, quota)
    else:
        svc.rate_limits.take(caller, quota)
    if svc.teams.path_needs_check(caller, path_params) and not svc.teams.checked_from_memory(
        caller, path_params
    ):
        await point_read(svc.store, svc.teams.check_sandbox_path, caller, path_params)
    CURRENT_CALLER.set(caller)
    return caller


async def require_key(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> Caller:
    svc: Services = request.app.state.services
    request.state.key_id = None
    key = key_from_headers(authorization, x_api_key)
    return await authorize_off_loop(svc, key, request.path_params, request.state)


# The caller of a route (a route that lists or creates uses it; the check is in require_key).
CallerDep = Annotated[Caller, Depends(require_key)]


def admin_caller(caller: CallerDep) -> Caller:
    require_admin(caller, "this route")
    return caller


AdminDep = Annotated[Caller, Depends(admin_caller)]
