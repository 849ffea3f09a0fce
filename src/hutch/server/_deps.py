"""What every route depends on: the app's `Services`, the `Svc` dependency and `require_key`.

Routes import this module; it imports no route (the app factory in _app.py includes them).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import Depends, Header, Request

from hutch.node import EgressProxy, LocalHost, SandboxHost, WarmPools
from hutch.proxy import PreviewRoutes
from hutch.runtime import ImageStore, Runtime, RuntimeConfig
from hutch.server._config import ServerConfig
from hutch.server._errors import Unauthorized
from hutch.server._metrics import ServerMetrics, UsageHistory
from hutch.server._models import ErrorBody
from hutch.server.services._backups import Backups
from hutch.server.services._deaths import DeathWatch
from hutch.server.services._keys import KeyChecker, key_from_headers
from hutch.server.services._lifecycle import Lifecycle, LifecyclePolicy
from hutch.server.services._reconciler import Reconciler
from hutch.server.services._sandboxes import SandboxManager
from hutch.server.services._secrets import SecretBox
from hutch.server.store._runtime_ids_file import import_runtime_ids_file
from hutch.server.store._sqlite import SqliteStore, Store

FRAMES_MEDIA_TYPE = "application/x-hutch-frames"
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (401, 404, 409, 413, 422, 503)
}


class Services:
    """What the routes need; made once per app in the lifespan."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.store: Store = SqliteStore(config.db_path)
        import_runtime_ids_file(config.home / "runtime-ids.json", self.store)
        self.images = ImageStore(config.image_root)
        self.runtime = Runtime(
            RuntimeConfig(
                home=config.home,
                storage_size_gb=config.storage_size_gb,
                network_subnet=config.network_subnet,
            )
        )
        self.previews = PreviewRoutes(config.preview_domain)
        self.keys = KeyChecker(self.store, config.api_key)
        # Strong references to fire-and-forget tasks (asyncio keeps only weak ones).
        self.background: set[asyncio.Task[None]] = set()
        self.pools = WarmPools(
            self.runtime, self.images, config.warm_pools, agent_timeout=config.agent_connect_timeout
        )
        self.sandboxes = SandboxManager(
            self.store,
            self.runtime,
            self.images,
            agent_timeout=config.agent_connect_timeout,
            pools=self.pools,
            secrets=SecretBox.open(config.home),
        )
        self.egress = EgressProxy(
            self.store,
            SecretBox.open(config.home),
            self.runtime,
            config.home,
            port=config.egress_port,
            upstreams=config.egress_upstreams,
        )
        self.sandboxes.egress = self.egress
        # The one way routes reach the host (by sandbox id; never the runtime, never a
        # runtime id).
        self.host: SandboxHost = LocalHost(self.runtime, self.sandboxes.runtime_id)
        self.sandboxes.on_destroy.append(self.egress.forget)
        self.lifecycle = Lifecycle(
            self.sandboxes,
            self.store,
            self.runtime,
            self.images,
            policy=LifecyclePolicy(default_timeout=config.default_timeout),
            agent_timeout=config.agent_connect_timeout,
        )
        self.lifecycle.on_stop.append(self.egress.forget)
        self.reconciler = Reconciler(self.lifecycle, self.store)
        self.deaths = DeathWatch(self.sandboxes, self.store, self.runtime)
        self.backups = Backups(
            self.lifecycle, self.sandboxes, self.store, self.runtime, self.images
        )
        self.metrics = ServerMetrics()
        self.metrics.watch_state(self.store, self.pools, self.host)
        self.usage_history = UsageHistory(self.host, self.sandboxes.running_ids)


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


Svc = Annotated[Services, Depends(services)]


async def require_key(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> None:
    svc: Services = request.app.state.services
    if not svc.keys.is_valid(key_from_headers(authorization, x_api_key)):
        raise Unauthorized(
            "missing or invalid API key: send 'Authorization: Bearer <key>' "
            "(the SDK and CLI read HUTCH_API_KEY)"
        )
