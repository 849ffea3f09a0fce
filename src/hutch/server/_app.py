"""The app factory: `create_app(config)` builds the services, includes every router and
installs the error handlers."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from hutch.node import AgentDisconnected, AgentError
from hutch.proxy import PreviewRoutes
from hutch.server._access_log import AccessLogMiddleware, request_id_of
from hutch.server._agent_errors import api_error_for
from hutch.server._config import DEFAULT_HOME, ServerConfig
from hutch.server._console import mount_console
from hutch.server._deps import Services, require_key
from hutch.server._errors import ApiError, InvalidRequest
from hutch.server._exec_front import ExecFront
from hutch.server._json_text import JsonTextMiddleware
from hutch.server._metrics import RequestMetricsMiddleware, build_metrics_router
from hutch.server._middleware import BodyLimitMiddleware
from hutch.server._native_previews import NativePreviews
from hutch.server._route_state import build_routes_now
from hutch.server._storage_guard import StorageGuard, full_disk_error, storage_full
from hutch.server.routes._buckets import build_buckets_router
from hutch.server.routes._code import build_code_router
from hutch.server.routes._events import build_events_router
from hutch.server.routes._exec import build_exec_router
from hutch.server.routes._files import build_files_router
from hutch.server.routes._image_build import build_image_build_router
from hutch.server.routes._images import build_images_router
from hutch.server.routes._keys import build_keys_router
from hutch.server.routes._lifecycle import build_lifecycle_router
from hutch.server.routes._nodes import build_nodes_router
from hutch.server.routes._pools import build_pools_router
from hutch.server.routes._port_wait import build_port_wait_router
from hutch.server.routes._ports import build_ports_router
from hutch.server.routes._procs import build_procs_router
from hutch.server.routes._sandboxes import build_sandboxes_router
from hutch.server.routes._teams import build_teams_router
from hutch.server.routes._terminals import build_terminals_router
from hutch.server.services._keys import create_key

log = logging.getLogger("hutch.server")


def _validation_fields(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": list(e.get("loc", ())), "message": str(e.get("msg", "invalid"))}
        for e in exc.errors()
    ]


def install_error_handlers(app: FastAPI, home: Path = DEFAULT_HOME) -> None:
    async def on_api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        if exc.status >= 500 and storage_full(exc):
            exc = full_disk_error(home)  # e.g. a start that failed for want of space
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        fields = _validation_fields(exc)
        summary = "; ".join(f"{'.'.join(map(str, f['loc']))}: {f['message']}" for f in fields)
        error = InvalidRequest(f"invalid request: {summary}", fields=fields)
        return JSONResponse(error.body(), status_code=error.status)

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = {
            404: "no such route; see /openapi.json for the API",
            405: "method not allowed on this route; see /openapi.json",
        }.get(exc.status_code, str(exc.detail))
        return JSONResponse({"error": {"code": code, "message": message}}, exc.status_code)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        if storage_full(exc):
            log.error("%s %s: the disk is full: %s", request.method, request.url.path, exc)
            error = full_disk_error(home)
            return JSONResponse(error.body(), status_code=error.status)
        # NB: an exception's text can hold host paths, ids and state: it goes to the log,
        # under an id the client gets to quote, never into the response.
        request_id = request_id_of(request.scope) or secrets.token_hex(8)
        log.error(
            "unexpected error, request id %s (%s %s)",
            request_id,
            request.method,
            request.url.path,
            exc_info=exc,
        )
        message = f"internal error (request id {request_id}); the server's log has the details"
        return JSONResponse(
            {"error": {"code": "internal", "message": message, "request_id": request_id}},
            500,
            headers={"X-Request-Id": request_id},
        )

    async def on_agent_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AgentError)
        error = api_error_for(exc)
        cluster = getattr(getattr(request.app.state, "services", None), "cluster", None)
        if cluster is not None and isinstance(exc, AgentDisconnected) and exc.sandbox_id:
            # Several hosts: an agent cut off because its node died is the node's failure.
            error = await cluster.node_down(exc.sandbox_id) or error
        return JSONResponse(error.body(), status_code=error.status)

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(AgentError, on_agent_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)


def attach_previews(svc: Services, previews: PreviewRoutes | None) -> None:
    """Route preview hosts to the exposed ports of the store (and forget destroyed sandboxes)."""
    if previews is not None:
        svc.previews = previews
    svc.previews.address_of = svc.host.address
    if svc.cluster is not None:
        svc.previews.address_of = svc.cluster.preview_key
        svc.previews.connect = svc.cluster.connect_port
        svc.previews.token_of = svc.cluster.port_token
    elif svc.config.database_url:
        svc.previews.token_of = lambda sandbox_id, port: next(
            (p.token for p in svc.store.list_ports(sandbox_id) if p.port == port), None
        )
    for port in svc.store.list_ports():
        svc.previews.add(port.sandbox_id, port.port, port.token)
    svc.sandboxes.on_destroy.append(svc.previews.forget_sandbox)
    svc.previews.on_hit = svc.lifecycle.preview_hit
    svc.previews.start()


def create_app(
    config: ServerConfig,
    *,
    on_new_key: Callable[[str], None] | None = None,
    previews: PreviewRoutes | None = None,
) -> FastAPI:
    """Build the ASGI app. Sandboxes are recovered when the app starts (its lifespan)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = Services(config)
        if config.api_key is None and not svc.store.list_keys():
            new = create_key(svc.store, "admin")
            if on_new_key is not None:
                on_new_key(new.key)
        if svc.node_watch is not None:
            # A cluster replica: no runtime here; the nodes recover their own containers and
            # the node watch re-adopts (services/_node_watch.py).
            await svc.sandboxes.start(recover=False)
            svc.node_watch.start()
            svc.reconciler.start()
            svc.deaths.start()  # through the nodes (each watches its own containers)
        else:
            await svc.runtime.setup()
            await svc.sandboxes.start()
            await svc.lifecycle.recover()
            svc.reconciler.start()
            svc.deaths.start()
            await svc.egress.start(svc.sandboxes.running_with_egress_rules())
        app.state.services = svc
        attach_previews(svc, previews)
        from hutch.e2b import attach_preview_hosts  # NB: not at the top (see create_app)

        attach_preview_hosts(svc)
        native = await NativePreviews.start(svc)
        svc.usage_history.start()
        svc.events.prune()
        try:
            yield
        finally:
            svc.draining.set()
            if native is not None:
                await native.stop()
            await svc.usage_history.stop()
            await svc.reconciler.stop()
            await svc.deaths.stop()
            if svc.node_watch is not None:
                await svc.node_watch.stop()
            await svc.previews.close()
            await svc.egress.stop()
            await svc.sandboxes.stop()
            if svc.cluster is not None:
                await svc.cluster.aclose()
            svc.store.close()
            svc.events.close()

    app = FastAPI(
        title="Hutch",
        version="0.1.0",
        description="Self-hosted isolated Linux sandboxes. Auth: `Authorization: Bearer <key>`.",
        lifespan=lifespan,
    )
    install_error_handlers(app, config.home)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    app.include_router(build_sandboxes_router())
    exec_router = build_exec_router()
    app.include_router(exec_router)
    app.include_router(build_keys_router())
    app.include_router(build_teams_router())
    app.include_router(build_image_build_router(require_key))
    app.include_router(build_images_router(require_key))
    app.include_router(build_pools_router(require_key))
    app.include_router(build_terminals_router())
    mount_console(app)
    app.include_router(build_code_router())
    app.include_router(build_procs_router())
    app.include_router(build_port_wait_router())
    app.include_router(build_files_router(require_key))
    app.include_router(build_buckets_router())
    app.include_router(build_ports_router())
    app.include_router(build_lifecycle_router())
    app.include_router(build_nodes_router())
    app.include_router(build_metrics_router(require_key))
    app.include_router(build_events_router())
    # Innermost: every middleware below still sees the exec requests it answers.
    app.add_middleware(ExecFront, routes=exec_router.routes)
    # Inside the body limit: it reads a JSON body whole only within that limit.
    app.add_middleware(JsonTextMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    # NB: imported here, not at the top: hutch.e2b builds on hutch.server.routes, and importing
    # any of hutch.server runs this package's __init__, which imports this module (a program
    # that imports hutch.e2b first would meet a half-made hutch.e2b).
    from hutch.e2b import E2bFrontDoor

    app.add_middleware(E2bFrontDoor)
    app.add_middleware(
        RequestMetricsMiddleware,
        metrics=lambda: getattr(getattr(app.state, "services", None), "metrics", None),
    )
    app.add_middleware(StorageGuard, home=config.home, min_free_bytes=config.min_free_bytes)
    app.add_middleware(AccessLogMiddleware)
    build_routes_now(app)  # else the first call to each router pays for building it
    return app
