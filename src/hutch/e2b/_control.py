"""E2B's control plane (REST, JSON): create, connect, get, list, kill, pause, resume and
timeouts of sandboxes.

Everything goes through Hutch's services (SandboxManager, Lifecycle): one implementation
behind two APIs; this module only translates shapes.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from hutch.e2b._errors import E2bError, from_api_error
from hutch.e2b._templates import DEFAULT_TEMPLATE, image_for_template
from hutch.e2b._tokens import AccessTokens
from hutch.node import AgentError
from hutch.server.routes import ApiError, SandboxCreate, as_api_error, key_from_headers
from hutch.server.store import SandboxRecord

ENVD_VERSION = "0.6.4"  # the features the SDKs gate on it: entry info and mounts in watches
CLIENT_ID = "hutch"
TEMPLATE_LABEL = "e2b.template"
E2B_LABEL_PREFIX = "e2b."
DEFAULT_TIMEOUT = 300  # seconds; E2B's API default when the body has none
MAX_TIMEOUT = 24 * 3600
LIST_LIMIT = 100


class NewSandbox(BaseModel):
    """POST /sandboxes and /v2/sandboxes. Unknown fields (mcp, iam, volumeMounts...) are
    ignored as E2B's API does for fields an older server does not know."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    template_id: str = Field(default=DEFAULT_TEMPLATE, alias="templateID")
    timeout: int = Field(default=DEFAULT_TIMEOUT, ge=0, le=MAX_TIMEOUT)
    metadata: dict[str, str] | None = None
    env_vars: dict[str, str] | None = Field(default=None, alias="envVars")
    allow_internet_access: bool | None = None
    auto_pause: bool = Field(default=False, alias="autoPause")
    # NB: no `secure`: envd access tokens are checked on every call whatever a client asks
    # (E2B's secure=True); a request for an unauthenticated sandbox is not honoured.


class ConnectBody(BaseModel):
    """POST /sandboxes/{id}/connect and (older SDKs) /resume."""

    model_config = ConfigDict(extra="ignore")

    timeout: int = Field(default=DEFAULT_TIMEOUT, ge=0, le=MAX_TIMEOUT)


class PauseBody(BaseModel):
    """POST /sandboxes/{id}/pause. ``memory: false`` (keep_memory=False) keeps the disk only:
    Hutch's stop, which the next connect starts again."""

    model_config = ConfigDict(extra="ignore")

    memory: bool | None = None


class TimeoutBody(BaseModel):
    """POST /sandboxes/{id}/timeout. NB: 0 would mean "no limit" to Hutch, nothing to E2B."""

    model_config = ConfigDict(extra="ignore")

    timeout: int = Field(ge=1, le=MAX_TIMEOUT)


class RefreshBody(BaseModel):
    """POST /sandboxes/{id}/refreshes: live `duration` seconds from now."""

    model_config = ConfigDict(extra="ignore")

    duration: int = Field(default=DEFAULT_TIMEOUT, ge=1, le=3600)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _started(record: SandboxRecord) -> float:
    return (
        datetime.strptime(record.created_at, "%Y-%m-%dT%H:%M:%S.%fZ")
        .replace(tzinfo=UTC)
        .timestamp()
    )


def metadata_of(record: SandboxRecord) -> dict[str, str]:
    return {k: v for k, v in record.labels.items() if not k.startswith(E2B_LABEL_PREFIX)}


def _template_of(record: SandboxRecord) -> str:
    return record.labels.get(TEMPLATE_LABEL, record.image)


def _state(record: SandboxRecord) -> str:
    return "paused" if record.status in ("paused", "stopped") else "running"


def sandbox_body(record: SandboxRecord, tokens: AccessTokens) -> dict[str, Any]:
    return {
        "templateID": _template_of(record),
        "sandboxID": record.id,
        "clientID": CLIENT_ID,
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": tokens.token_for(record.id),
        # NB: the same secret as envd's: e2b-code-interpreter sends only this one on its
        # /contexts calls, and a sandbox reachable by id alone would run anyone's code.
        "trafficAccessToken": tokens.token_for(record.id),
        "domain": None,
        "alias": _template_of(record),
    }


def listed_body(record: SandboxRecord) -> dict[str, Any]:
    started = _started(record)
    end = record.expires_at if record.expires_at is not None else started + MAX_TIMEOUT
    return {
        "templateID": _template_of(record),
        "alias": _template_of(record),
        "sandboxID": record.id,
        "clientID": CLIENT_ID,
        "startedAt": _iso(started),
        "endAt": _iso(end),
        "cpuCount": max(1, round(record.cpu)),
        "memoryMB": record.memory_mb,
        "diskSizeMB": record.disk_mb,
        "state": _state(record),
        "envdVersion": ENVD_VERSION,
        "metadata": metadata_of(record),
    }


def detail_body(record: SandboxRecord, tokens: AccessTokens) -> dict[str, Any]:
    return {
        **listed_body(record),
        "envdAccessToken": tokens.token_for(record.id),
        "allowInternetAccess": record.network == "internet",
        "domain": None,
    }


def parse_metadata_filter(raw: str | None) -> dict[str, str]:
    """``metadata=k1%3Dv1%26k2%3Dv2`` (a url-encoded query string, as the SDKs send it)."""
    if not raw:
        return {}
    return dict(urllib.parse.parse_qsl(raw, keep_blank_values=True))


def _started_after(raw: str | None) -> float | None:
    if not raw:
        return None
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise E2bError(400, f"startedAfter {raw!r} must be an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _decode_token(token: str | None) -> int:
    if not token:
        return 0
    try:
        return max(0, int(base64.urlsafe_b64decode(token.encode()).decode()))
    except (ValueError, UnicodeDecodeError):
        raise E2bError(400, f"nextToken {token!r} is not one this server gave out") from None


def _encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(str(offset).encode()).decode()


async def _body(request: Request, model: type[BaseModel]) -> Any:
    raw = await request.body()
    try:
        data = json.loads(raw) if raw.strip() else {}
        return model.model_validate(data)
    except (ValueError, ValidationError) as exc:
        raise E2bError(400, f"invalid request body: {exc}") from None


async def _resume(svc: Any, sandbox_id: str, seconds: int) -> SandboxRecord:
    """Resume a paused (or stopped) sandbox with E2B's timeout from now on."""
    await svc.lifecycle.resume(sandbox_id)
    record: SandboxRecord = await svc.lifecycle.set_timeout(sandbox_id, seconds or DEFAULT_TIMEOUT)
    return record


def build_control_app() -> FastAPI:
    """E2B's REST API as its own app, so its errors keep E2B's shape; mounted by the front
    door (hutch.e2b._front) under the paths E2B's SDKs use."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    def services(request: Request) -> Any:
        svc = request.scope["hutch.services"]
        if not svc.keys.is_valid(
            key_from_headers(request.headers.get("authorization"), request.headers.get("x-api-key"))
        ):
            raise E2bError(
                401,
                "Invalid API key: send a Hutch API key in X-API-Key (E2B_API_KEY); "
                "make one with `hutch keys create NAME --e2b`",
            )
        return svc

    def tokens(request: Request) -> AccessTokens:
        tok: AccessTokens = request.scope["hutch.e2b.tokens"]
        return tok

    def record_or_404(svc: Any, sandbox_id: str) -> SandboxRecord:
        record: SandboxRecord | None = svc.store.get_sandbox(sandbox_id)
        if record is None:
            raise E2bError(404, f"sandbox {sandbox_id!r} not found")
        return record

    async def create(request: Request) -> JSONResponse:
        svc = services(request)
        body: NewSandbox = await _body(request, NewSandbox)
        image = image_for_template(body.template_id)
        if image not in {i.name for i in svc.images.list()}:
            raise E2bError(
                404,
                f"template '{body.template_id}' not found; use 'base', "
                "'code-interpreter-v1' or the name of a Hutch image (hutch images list)",
            )
        labels = dict(body.metadata or {})
        labels[TEMPLATE_LABEL] = body.template_id
        try:
            spec = SandboxCreate(
                image=image,
                env=body.env_vars or {},
                network="none" if body.allow_internet_access is False else "internet",
                timeout=body.timeout or None,
                # E2B's autoPause: pause (memory kept) instead of killing at the timeout.
                on_timeout="pause" if body.auto_pause else "destroy",
                labels=labels,
            )
        except ValidationError as exc:
            msgs = "; ".join(str(e.get("msg")) for e in exc.errors())
            raise E2bError(400, f"invalid sandbox request: {msgs}") from None
        record = await svc.lifecycle.create(spec)
        return JSONResponse(sandbox_body(record, tokens(request)), 201)

    async def connect(request: Request) -> JSONResponse:
        """Running: its timeout is only ever extended (200). Paused: resumed with the
        timeout (201), as E2B's API does."""
        svc = services(request)
        body: ConnectBody = await _body(request, ConnectBody)
        sandbox_id = request.path_params["sandbox_id"]
        record = record_or_404(svc, sandbox_id)
        if record.status != "running":
            record = await _resume(svc, sandbox_id, body.timeout)
            return JSONResponse(sandbox_body(record, tokens(request)), 201)
        if body.timeout and (
            record.expires_at is not None and record.expires_at < time.time() + body.timeout
        ):
            record = await svc.lifecycle.set_timeout(sandbox_id, body.timeout)
        return JSONResponse(sandbox_body(record, tokens(request)), 200)

    async def resume(request: Request) -> JSONResponse:
        """The older SDKs' resume: 409 when it runs already."""
        svc = services(request)
        body: ConnectBody = await _body(request, ConnectBody)
        sandbox_id = request.path_params["sandbox_id"]
        if record_or_404(svc, sandbox_id).status == "running":
            raise E2bError(409, f"sandbox {sandbox_id} is already running")
        record = await _resume(svc, sandbox_id, body.timeout)
        return JSONResponse(sandbox_body(record, tokens(request)), 201)

    async def pause(request: Request) -> Response:
        """204; 409 when it is paused already (the SDKs' pause() then answers False)."""
        svc = services(request)
        body: PauseBody = await _body(request, PauseBody)
        sandbox_id = request.path_params["sandbox_id"]
        if _state(record_or_404(svc, sandbox_id)) == "paused":
            raise E2bError(409, f"sandbox {sandbox_id} is already paused")
        if body.memory is False:
            await svc.lifecycle.stop(sandbox_id, reason="paused without memory (E2B API)")
        else:
            await svc.lifecycle.pause(sandbox_id, reason="paused by request (E2B API)")
        return Response(status_code=204)

    async def set_timeout(request: Request) -> Response:
        svc = services(request)
        body: TimeoutBody = await _body(request, TimeoutBody)
        sandbox_id = request.path_params["sandbox_id"]
        record_or_404(svc, sandbox_id)
        await svc.lifecycle.set_timeout(sandbox_id, body.timeout)
        return Response(status_code=204)

    async def refresh(request: Request) -> Response:
        svc = services(request)
        body: RefreshBody = await _body(request, RefreshBody)
        sandbox_id = request.path_params["sandbox_id"]
        record_or_404(svc, sandbox_id)
        await svc.lifecycle.set_timeout(sandbox_id, body.duration)
        return Response(status_code=204)

    async def get(request: Request) -> JSONResponse:
        svc = services(request)
        record = record_or_404(svc, request.path_params["sandbox_id"])
        return JSONResponse(detail_body(record, tokens(request)))

    async def kill(request: Request) -> Response:
        svc = services(request)
        record_or_404(svc, request.path_params["sandbox_id"])
        await svc.sandboxes.destroy(request.path_params["sandbox_id"])
        return Response(status_code=204)

    def filtered(request: Request) -> list[SandboxRecord]:
        svc = services(request)
        wanted = parse_metadata_filter(request.query_params.get("metadata"))
        states = {s for raw in request.query_params.getlist("state") for s in raw.split(",") if s}
        bad = states - {"running", "paused"}
        if bad:
            raise E2bError(400, f"state {sorted(bad)} is not one of: running, paused")
        template = request.query_params.get("template")
        order = request.query_params.get("order") or "desc"
        if order not in ("asc", "desc"):
            raise E2bError(400, f"order {order!r} must be 'asc' or 'desc'")
        after = _started_after(request.query_params.get("startedAfter"))
        records = [
            r
            for r in svc.store.list_sandboxes()
            if all(metadata_of(r).get(k) == v for k, v in wanted.items())
            and (not states or _state(r) in states)
            and (template is None or _template_of(r) == template)
            and (after is None or _started(r) > after)
        ]
        # E2B lists the newest first unless asked otherwise.
        records.sort(key=lambda r: (r.created_at, r.id), reverse=order == "desc")
        return records

    async def list_v2(request: Request) -> JSONResponse:
        records = filtered(request)
        raw_limit = request.query_params.get("limit")
        try:
            limit = int(raw_limit) if raw_limit else LIST_LIMIT
        except ValueError:
            raise E2bError(400, f"limit {raw_limit!r} must be a number from 1 to 100") from None
        if not 1 <= limit <= LIST_LIMIT:
            raise E2bError(400, f"limit {limit} must be from 1 to 100")
        offset = _decode_token(request.query_params.get("nextToken"))
        page = records[offset : offset + limit]
        headers = {}
        if offset + limit < len(records):
            headers["x-next-token"] = _encode_token(offset + limit)
        return JSONResponse([listed_body(r) for r in page], headers=headers)

    async def list_v1(request: Request) -> JSONResponse:
        return JSONResponse([listed_body(r) for r in filtered(request)])

    async def not_here(request: Request) -> JSONResponse:
        services(request)
        record_or_404(services(request), request.path_params["sandbox_id"])
        what = request.url.path.rsplit("/", 1)[-1]
        raise E2bError(
            501,
            f"E2B's '{what}' is not available on Hutch's E2B API yet; use Hutch's own API "
            f"(POST /v1/sandboxes/{{id}}/{what}, or the hutch SDK's snapshot() and fork())",
        )

    async def metrics(request: Request) -> JSONResponse:
        record_or_404(services(request), request.path_params["sandbox_id"])
        return JSONResponse([])

    sid = "/sandboxes/{sandbox_id}"
    app.add_api_route("/sandboxes", create, methods=["POST"])
    app.add_api_route("/v2/sandboxes", create, methods=["POST"])
    app.add_api_route("/sandboxes", list_v1, methods=["GET"])
    app.add_api_route("/v2/sandboxes", list_v2, methods=["GET"])
    app.add_api_route(sid, get, methods=["GET"])
    app.add_api_route(sid, kill, methods=["DELETE"])
    app.add_api_route(sid + "/connect", connect, methods=["POST"])
    app.add_api_route("/v2" + sid + "/connect", connect, methods=["POST"])
    app.add_api_route(sid + "/metrics", metrics, methods=["GET"])
    app.add_api_route(sid + "/pause", pause, methods=["POST"])
    app.add_api_route(sid + "/resume", resume, methods=["POST"])
    app.add_api_route(sid + "/timeout", set_timeout, methods=["POST"])
    app.add_api_route(sid + "/refreshes", refresh, methods=["POST"])
    for action in ("snapshots", "fork"):
        app.add_api_route(f"{sid}/{action}", not_here, methods=["POST"])

    async def on_e2b(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, E2bError)
        return exc.response()

    async def on_api(_: Request, exc: Exception) -> JSONResponse:
        error = as_api_error(exc)
        assert error is not None
        return from_api_error(error).response()

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return E2bError(exc.status_code, f"{exc.detail}: no such E2B API route").response()

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        return E2bError(400, f"invalid request: {exc}").response()

    app.add_exception_handler(E2bError, on_e2b)
    app.add_exception_handler(ApiError, on_api)
    app.add_exception_handler(AgentError, on_api)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    return app
