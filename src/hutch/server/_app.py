"""The HTTP API: routes, auth, error shapes. Built by `create_app(config)`."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hutch.runtime import ImageStore, Runtime, RuntimeConfig
from hutch.server._agent_client import AgentConnection, AgentDisconnected, AgentError, AgentStream
from hutch.server._auth import KeyChecker, create_key, key_from_headers
from hutch.server._config import ServerConfig
from hutch.server._egress import EgressProxy, running_with_rules
from hutch.server._errors import (
    ApiError,
    BodyTooLarge,
    InvalidRequest,
    KeyNotFound,
    SandboxUnavailable,
    Unauthorized,
)
from hutch.server._models import (
    ErrorBody,
    ExecRequest,
    ExecResult,
    ImageInfo,
    ImageList,
    KeyCreate,
    KeyCreated,
    KeyInfo,
    KeyList,
    SandboxCreate,
    SandboxInfo,
    SandboxList,
)
from hutch.server._pools import WarmPools, import_runtime_ids_file
from hutch.server._proxy import PreviewRoutes
from hutch.server._relay import gather_exec, relay_frames
from hutch.server._routes_buckets import build_buckets_router, mount_info
from hutch.server._routes_files import build_files_router, streams_body
from hutch.server._routes_image_build import build_image_build_router
from hutch.server._routes_images import build_images_router
from hutch.server._routes_pools import build_pools_router
from hutch.server._routes_ports import build_ports_router
from hutch.server._sandboxes import SandboxManager, to_info
from hutch.server._secrets import SecretBox
from hutch.server._store import SqliteStore, Store

log = logging.getLogger("hutch.server")

FRAMES_MEDIA_TYPE = "application/x-hutch-frames"
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (401, 404, 409, 413, 422, 503)
}


# Routes that stream their body to disk themselves (image archives can be GBs).
UNLIMITED_BODY_PATHS = frozenset({"/v1/images/import", "/v1/images/build"})


class BodyLimitMiddleware:
    """Refuse bodies over the limit with 413, whether or not Content-Length tells the truth."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or streams_body(scope):
            await self.app(scope, receive, send)
            return
        if scope.get("path") in UNLIMITED_BODY_PATHS:
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await _send_error(send, BodyTooLarge(self._message()))
                return
        seen = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self._message())
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:
            if not response_started:
                await _send_error(send, exc)

    def _message(self) -> str:
        return (
            f"request body is larger than {self.max_bytes} bytes; send less, or raise "
            "HUTCH_MAX_BODY_BYTES on the server"
        )


async def _send_error(send: Send, error: ApiError) -> None:
    response = JSONResponse(error.body(), status_code=error.status)
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


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
        self.sandboxes.on_destroy.append(self.egress.forget)


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


def _agent_request(body: ExecRequest) -> dict[str, Any]:
    return {
        "op": "exec",
        "command": body.command,
        "argv": body.argv,
        "env": body.env or None,
        "cwd": body.cwd,
        "user": body.user,
        "timeout": body.timeout,
        "stdin": body.stdin is not None,
    }


def _stdin_bytes(body: ExecRequest) -> bytes | None:
    if body.stdin is None:
        return None
    try:
        return base64.b64decode(body.stdin, validate=True)
    except binascii.Error:
        raise InvalidRequest(
            "'stdin' must be base64", fields=[{"loc": ["body", "stdin"], "message": "not base64"}]
        ) from None


async def _open_exec(svc: Services, sandbox_id: str, body: ExecRequest) -> AgentStream:
    stdin = _stdin_bytes(body)
    conn: AgentConnection = await svc.sandboxes.agent(sandbox_id)
    try:
        stream = conn.open_stream(_agent_request(body))
    except AgentDisconnected as exc:
        svc.sandboxes.drop_agent(sandbox_id, conn)
        raise SandboxUnavailable(
            f"lost the connection to sandbox {sandbox_id}'s agent ({exc}); retry"
        ) from exc
    if stdin is not None:
        # NB: feed stdin from its own task: a process that echoes its input (cat) would
        # otherwise fill the output buffers while we are still writing, and both sides stall.
        task = asyncio.create_task(_feed_stdin(stream, stdin))
        svc.background.add(task)
        task.add_done_callback(svc.background.discard)
    return stream


async def _feed_stdin(stream: AgentStream, data: bytes) -> None:
    with contextlib.suppress(AgentError):
        if data:
            await stream.send_stdin(data)
        await stream.close_stdin()


def _raise_agent_error(result: dict[str, Any]) -> None:
    error = result.get("error")
    if isinstance(error, dict):
        raise InvalidRequest(str(error.get("message")), code=str(error.get("code", "invalid")))


def build_router() -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], responses=ERROR_RESPONSES)

    @router.post("/sandboxes", status_code=201, response_model=SandboxInfo)
    async def create_sandbox(svc: Svc, body: SandboxCreate | None = None) -> SandboxInfo:
        record = await svc.sandboxes.create(body or SandboxCreate())
        return to_info(record)

    @router.put("/sandboxes/{sandbox_id}", response_model=SandboxInfo)
    async def get_or_create_sandbox(
        svc: Svc, sandbox_id: str, response: Response, body: SandboxCreate | None = None
    ) -> SandboxInfo:
        record, created = await svc.sandboxes.get_or_create(sandbox_id, body or SandboxCreate())
        response.status_code = 201 if created else 200
        return to_info(record)

    @router.get("/sandboxes", response_model=SandboxList)
    async def list_sandboxes(
        svc: Svc, label: Annotated[list[str] | None, Query()] = None
    ) -> SandboxList:
        labels: dict[str, str] = {}
        for item in label or []:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise InvalidRequest(
                    f"label filter {item!r} must look like key=value",
                    fields=[{"loc": ["query", "label"], "message": "expected key=value"}],
                )
            labels[key] = value
        return SandboxList(sandboxes=[to_info(r) for r in svc.sandboxes.list(labels)])

    @router.get("/sandboxes/{sandbox_id}", response_model=SandboxInfo)
    async def get_sandbox(svc: Svc, sandbox_id: str) -> SandboxInfo:
        info = to_info(svc.sandboxes.get(sandbox_id))
        info.mounts = [
            mount_info(m) for m in svc.runtime.buckets.list(svc.sandboxes.runtime_id(sandbox_id))
        ]
        return info

    @router.delete("/sandboxes/{sandbox_id}", status_code=204)
    async def destroy_sandbox(svc: Svc, sandbox_id: str) -> Response:
        await svc.sandboxes.destroy(sandbox_id)
        return Response(status_code=204)

    @router.post("/sandboxes/{sandbox_id}/exec", response_model=ExecResult)
    async def exec_command(svc: Svc, sandbox_id: str, body: ExecRequest) -> ExecResult:
        stream = await _open_exec(svc, sandbox_id, body)
        try:
            gathered, result = await gather_exec(stream)
        except AgentDisconnected as exc:
            raise SandboxUnavailable(f"sandbox {sandbox_id} stopped answering: {exc}") from exc
        _raise_agent_error(result)
        return gathered

    @router.post(
        "/sandboxes/{sandbox_id}/exec/stream",
        response_class=StreamingResponse,
        responses={200: {"content": {FRAMES_MEDIA_TYPE: {}}, "description": "binary frames"}},
    )
    async def exec_stream(svc: Svc, sandbox_id: str, body: ExecRequest) -> StreamingResponse:
        stream = await _open_exec(svc, sandbox_id, body)
        return StreamingResponse(relay_frames(stream), media_type=FRAMES_MEDIA_TYPE)

    @router.get("/keys", response_model=KeyList)
    async def list_keys(svc: Svc) -> KeyList:
        return KeyList(
            keys=[
                KeyInfo(id=k.id, name=k.name, prefix=k.prefix, created_at=k.created_at)
                for k in svc.store.list_keys()
            ]
        )

    @router.post("/keys", status_code=201, response_model=KeyCreated)
    async def create_api_key(svc: Svc, body: KeyCreate) -> KeyCreated:
        new = create_key(svc.store, body.name)
        r = new.record
        return KeyCreated(
            id=r.id, name=r.name, prefix=r.prefix, created_at=r.created_at, key=new.key
        )

    @router.delete("/keys/{key_id}", status_code=204)
    async def delete_api_key(svc: Svc, key_id: str) -> Response:
        if not svc.store.delete_key(key_id):
            raise KeyNotFound(f"no API key with id {key_id!r}; list them with GET /v1/keys")
        return Response(status_code=204)

    @router.get("/images", response_model=ImageList)
    async def list_images(svc: Svc) -> ImageList:
        return ImageList(
            images=[
                ImageInfo(name=i.name, id=i.id, size_bytes=i.size_bytes, created_at=i.created_at)
                for i in svc.images.list()
            ]
        )

    return router


def _validation_fields(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": list(e.get("loc", ())), "message": str(e.get("msg", "invalid"))}
        for e in exc.errors()
    ]


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return JSONResponse(exc.body(), status_code=exc.status)

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

    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=exc)
        return JSONResponse(
            {"error": {"code": "internal", "message": f"internal error: {exc}"}}, 500
        )

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)


def attach_previews(svc: Services, previews: PreviewRoutes | None) -> None:
    """Route preview hosts to the exposed ports of the store (and forget destroyed sandboxes)."""
    if previews is not None:
        svc.previews = previews
    svc.previews.address_of = lambda sid: svc.runtime.sandbox_address(svc.sandboxes.runtime_id(sid))
    for port in svc.store.list_ports():
        svc.previews.add(port.sandbox_id, port.port, port.token)
    svc.sandboxes.on_destroy.append(svc.previews.forget_sandbox)
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
        await svc.runtime.setup()
        await svc.sandboxes.start()
        await svc.egress.start(running_with_rules(svc.store, svc.sandboxes.runtime_id))
        app.state.services = svc
        attach_previews(svc, previews)
        try:
            yield
        finally:
            await svc.previews.close()
            await svc.egress.stop()
            await svc.sandboxes.stop()
            svc.store.close()

    app = FastAPI(
        title="Hutch",
        version="0.1.0",
        description="Self-hosted isolated Linux sandboxes. Auth: `Authorization: Bearer <key>`.",
        lifespan=lifespan,
    )
    install_error_handlers(app)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    app.include_router(build_router())
    app.include_router(build_image_build_router(require_key))
    app.include_router(build_images_router(require_key))
    app.include_router(build_pools_router(require_key))
    from hutch.server._routes_terminals import build_terminals_router  # imports this module

    app.include_router(build_terminals_router())
    from hutch.server._console import mount_console

    mount_console(app)
    from hutch.server._routes_code import build_code_router  # noqa: PLC0415 (imports this module)

    app.include_router(build_code_router())
    from hutch.server._routes_procs import build_procs_router  # NB: it imports this module

    app.include_router(build_procs_router())
    from hutch.server._routes_port_wait import build_port_wait_router  # imports _routes_procs

    app.include_router(build_port_wait_router())
    app.include_router(build_files_router(require_key))
    app.include_router(build_buckets_router())
    app.include_router(build_ports_router())
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    return app
