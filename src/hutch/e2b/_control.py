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
from typing import Any, Literal

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from hutch._wire.json_text import check_unicode_text
from hutch.e2b._errors import E2bError, from_api_error
from hutch.e2b._templates import DEFAULT_TEMPLATE, image_for_template
from hutch.e2b._tokens import AccessTokens
from hutch.node import AgentError
from hutch.server.routes import (
    ApiError,
    SandboxCreate,
    SandboxMetrics,
    Services,
    as_api_error,
    authorize,
    key_from_headers,
    read_sandbox_metrics,
    visible,
)
from hutch.server.store import SandboxRecord, SnapshotRecord

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
    # False: the timeout's pause keeps the disk only (Hutch's stop; the next connect boots).
    auto_pause_memory: bool = Field(default=True, alias="autoPauseMemory")
    auto_resume: AutoResume | None = Field(default=None, alias="autoResume")
    network: NetworkConfig | None = None
    # NB: no `secure`: envd access tokens are checked on every call whatever a client asks
    # (E2B's secure=True); a request for an unauthenticated sandbox is not honoured.


class AutoResume(BaseModel):
    model_config = ConfigDict(extra="ignore")

    enabled: bool = False


ALL_TRAFFIC = ("0.0.0.0/0", "::/0")


class NetworkConfig(BaseModel):
    """E2B's egress rules, mapped onto Hutch's network policy. The fields Hutch cannot honour
    are refused rather than dropped: a sandbox must never be more open than its creator asked."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    allow_out: list[str] | None = Field(default=None, alias="allowOut")
    deny_out: list[str] | None = Field(default=None, alias="denyOut")
    allow_public_traffic: bool | None = Field(default=None, alias="allowPublicTraffic")

    def hutch_policy(self) -> dict[str, Any]:
        """``network``/``network_allow``/``network_deny`` of a SandboxCreate. In E2B an allowed
        destination wins over a denied one (deny all + allow X = only X); in Hutch the deny
        list wins, so "deny all" becomes network="none" with the allowed ones listed."""
        extra = self.model_extra or {}
        given = [k for k in _UNSUPPORTED_NETWORK if extra.get(k) not in (None, [], {})]
        if given:
            raise E2bError(400, f"network settings {given} are not available on Hutch")
        deny = list(self.deny_out or [])
        allow = list(self.allow_out or [])
        if any(d in ALL_TRAFFIC for d in deny):
            return {"network": "none", "network_allow": allow, "network_deny": []}
        return {"network": "internet", "network_allow": allow, "network_deny": deny}


_UNSUPPORTED_NETWORK = ("egressProxy", "rules", "maskRequestHost", "dnsServers", "httpsPorts")


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
    """POST /sandboxes/{id}/timeout. 0 is E2B's "time is up now" (Hutch's 0 would mean no
    limit, so it ends the lifetime at once instead)."""

    model_config = ConfigDict(extra="ignore")

    timeout: int = Field(ge=0, le=MAX_TIMEOUT)


AUTO_RESUME_LABEL = "e2b.auto_resume"  # "true": the data plane wakes it (E2B's autoResume)
# "true": its ports (get_host, the interpreter's) need no traffic token (allowPublicTraffic).
PUBLIC_TRAFFIC_LABEL = "e2b.public_traffic"


def is_public(record: SandboxRecord) -> bool:
    return record.labels.get(PUBLIC_TRAFFIC_LABEL) == "true"


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


def sandbox_body(
    record: SandboxRecord, tokens: AccessTokens, domain: str | None = None
) -> dict[str, Any]:
    return {
        "templateID": _template_of(record),
        "sandboxID": record.id,
        "clientID": CLIENT_ID,
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": tokens.token_for(record.id),
        # Opens the sandbox's ports (`get_host`, the interpreter's 49999), not envd: a page
        # given it cannot run commands or read files through envd. None (as E2B's) when its
        # ports are public.
        "trafficAccessToken": None if is_public(record) else tokens.traffic_token_for(record.id),
        # `get_host(port)` is `{port}-{sandboxID}.{domain}`: Hutch's preview proxy.
        "domain": domain,
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


def detail_body(
    record: SandboxRecord, tokens: AccessTokens, domain: str | None = None
) -> dict[str, Any]:
    return {
        **listed_body(record),
        "envdAccessToken": tokens.token_for(record.id),
        "allowInternetAccess": record.network == "internet",
        "domain": domain,
    }


METRICS_BUCKET = 5  # seconds: E2B aligns metric timestamps to its collection buckets


def e2b_metrics(now: SandboxMetrics) -> list[dict[str, Any]]:
    """Hutch's usage history and current reading as E2B's SandboxMetric list, oldest first."""
    cpus = max(1, round(now.cpu_count))
    disk_used = now.disk_used_bytes or 0
    disk_total = now.disk_limit_bytes or 0
    readings = [(p.timestamp, p.cpu_percent, p.memory_used_bytes) for p in now.history]
    readings.append((now.timestamp, now.cpu_percent, now.memory_used_bytes))
    points = []
    for at, cpu, memory in readings:
        aligned = int(at) // METRICS_BUCKET * METRICS_BUCKET
        points.append(
            {
                "timestamp": _iso(aligned),
                "timestampUnix": aligned,
                "cpuCount": cpus,
                "cpuUsedPct": round(cpu, 2),
                "memUsed": memory,
                "memTotal": now.memory_limit_bytes,
                "memCache": 0,
                "diskUsed": disk_used,
                "diskTotal": disk_total,
            }
        )
    return points


def _unix_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise E2bError(400, f"{name} must be a unix time in seconds, not {raw!r}") from None


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


async def body_of(request: Request, model: type[BaseModel]) -> Any:
    raw = await request.body()
    try:
        check_unicode_text(raw)
        data = json.loads(raw) if raw.strip() else {}
        return model.model_validate(data)
    except (ValueError, ValidationError) as exc:
        raise E2bError(400, f"invalid request body: {exc}") from None


async def _resume(svc: Services, sandbox_id: str, seconds: int) -> SandboxRecord:
    """Resume a paused (or stopped) sandbox with E2B's timeout from now on."""
    await svc.lifecycle.resume(sandbox_id)
    record: SandboxRecord = await svc.lifecycle.set_timeout(sandbox_id, seconds or DEFAULT_TIMEOUT)
    return record


def services(request: Request) -> Any:
    """Hutch's services, for a caller with a valid API key (else E2B's 401); the key's team
    scopes every id and list from here on (hutch.server's `authorize`)."""
    svc = request.scope["hutch.services"]
    key = key_from_headers(request.headers.get("authorization"), request.headers.get("x-api-key"))
    try:
        # NB: no path check here: record_or_404 answers for another team's sandbox, with
        # E2B's own 404 body.
        authorize(svc, key, {})
    except ApiError as exc:
        if exc.status != 401:
            raise
        raise E2bError(
            401,
            "Invalid API key: send a Hutch API key in X-API-Key (E2B_API_KEY); "
            "make one with `hutch keys create NAME --e2b`",
        ) from None
    return svc


def tokens(request: Request) -> AccessTokens:
    tok: AccessTokens = request.scope["hutch.e2b.tokens"]
    return tok


def domain(request: Request) -> str:
    """E2B's sandbox domain: Hutch's preview domain and the port previews are served on."""
    svc = request.scope["hutch.services"]
    return f"{svc.previews.domain}:{svc.previews.url_port or svc.config.port}"


def visible_snapshot(svc: Services, template_id: str) -> SnapshotRecord | None:
    """A snapshot's id or name is a template id too (E2B: Sandbox.create(snapshot_id));
    another team's snapshot is as if unknown."""
    snapshot = svc.store.get_snapshot(template_id)
    return snapshot if snapshot is not None and visible(snapshot.team) else None


def is_template(svc: Services, template_id: str) -> bool:
    """Whether the caller may create a sandbox from `template_id`: a snapshot it sees, one of
    E2B's template names, or a Hutch image it sees."""
    if visible_snapshot(svc, template_id) is not None:
        return True
    images = svc.sandboxes.image_owners.visible_names(svc.images.list())
    return image_for_template(template_id) in {i.name for i in images}


def record_or_404(svc: Services, sandbox_id: str) -> SandboxRecord:
    record: SandboxRecord | None = svc.store.get_sandbox(sandbox_id)
    if record is None or not visible(record.team):  # another team's: as if unknown
        raise E2bError(404, f"sandbox {sandbox_id!r} not found")
    return record


def build_control_app() -> FastAPI:
    """E2B's REST API as its own app, so its errors keep E2B's shape; mounted by the front
    door (hutch.e2b._front) under the paths E2B's SDKs use."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    async def create(request: Request) -> JSONResponse:
        svc = services(request)
        body: NewSandbox = await body_of(request, NewSandbox)
        snapshot = visible_snapshot(svc, body.template_id)
        image = image_for_template(body.template_id)
        if snapshot is None and not is_template(svc, body.template_id):
            raise E2bError(
                404,
                f"template '{body.template_id}' not found; use 'base', "
                "'code-interpreter-v1', a snapshot id or the name of a Hutch image "
                "(hutch images list)",
            )
        labels = dict(body.metadata or {})
        labels[TEMPLATE_LABEL] = body.template_id
        auto_resume = body.auto_resume is not None and body.auto_resume.enabled
        if auto_resume and not (body.auto_pause and body.auto_pause_memory):
            raise E2bError(400, "autoResume needs autoPause with memory (autoPauseMemory)")
        if auto_resume:
            labels[AUTO_RESUME_LABEL] = "true"
        if body.network is not None and body.network.allow_public_traffic:
            labels[PUBLIC_TRAFFIC_LABEL] = "true"
        network: dict[str, Any] = {
            "network": "none" if body.allow_internet_access is False else "internet"
        }
        if body.network is not None:
            network = body.network.hutch_policy()
            if body.allow_internet_access is False:
                network["network"] = "none"
        # E2B's autoPause: pause (memory kept) at the timeout instead of killing; without
        # memory, keep the disk only (Hutch's stop, booted again by the next connect).
        on_timeout: Literal["destroy", "stop", "pause"] = "destroy"
        if body.auto_pause:
            on_timeout = "pause" if body.auto_pause_memory else "stop"
        try:
            spec = SandboxCreate(
                image="default" if snapshot is not None else image,
                snapshot=snapshot.id if snapshot is not None else None,
                env=body.env_vars or {},
                timeout=body.timeout or None,
                on_timeout=on_timeout,
                labels=labels,
                **network,
            )
        except ValidationError as exc:
            msgs = "; ".join(str(e.get("msg")) for e in exc.errors())
            raise E2bError(400, f"invalid sandbox request: {msgs}") from None
        record = await svc.lifecycle.create(spec)
        return JSONResponse(sandbox_body(record, tokens(request), domain(request)), 201)

    async def connect(request: Request) -> JSONResponse:
        """Running: its timeout is only ever extended (200). Paused: resumed with the
        timeout (201), as E2B's API does."""
        svc = services(request)
        body: ConnectBody = await body_of(request, ConnectBody)
        sandbox_id = request.path_params["sandbox_id"]
        record = record_or_404(svc, sandbox_id)
        if record.status != "running":
            record = await _resume(svc, sandbox_id, body.timeout)
            return JSONResponse(sandbox_body(record, tokens(request), domain(request)), 201)
        if body.timeout and (
            record.expires_at is not None and record.expires_at < time.time() + body.timeout
        ):
            record = await svc.lifecycle.set_timeout(sandbox_id, body.timeout)
        return JSONResponse(sandbox_body(record, tokens(request), domain(request)), 200)

    async def resume(request: Request) -> JSONResponse:
        """The older SDKs' resume: 409 when it runs already."""
        svc = services(request)
        body: ConnectBody = await body_of(request, ConnectBody)
        sandbox_id = request.path_params["sandbox_id"]
        if record_or_404(svc, sandbox_id).status == "running":
            raise E2bError(409, f"sandbox {sandbox_id} is already running")
        record = await _resume(svc, sandbox_id, body.timeout)
        return JSONResponse(sandbox_body(record, tokens(request), domain(request)), 201)

    async def pause(request: Request) -> Response:
        """204; 409 when it is paused already (the SDKs' pause() then answers False)."""
        svc = services(request)
        body: PauseBody = await body_of(request, PauseBody)
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
        body: TimeoutBody = await body_of(request, TimeoutBody)
        sandbox_id = request.path_params["sandbox_id"]
        record_or_404(svc, sandbox_id)
        if body.timeout:
            await svc.lifecycle.set_timeout(sandbox_id, body.timeout)
        else:
            await svc.lifecycle.end_lifetime_now(sandbox_id)
        return Response(status_code=204)

    async def refresh(request: Request) -> Response:
        svc = services(request)
        body: RefreshBody = await body_of(request, RefreshBody)
        sandbox_id = request.path_params["sandbox_id"]
        record_or_404(svc, sandbox_id)
        await svc.lifecycle.set_timeout(sandbox_id, body.duration)
        return Response(status_code=204)

    async def get(request: Request) -> JSONResponse:
        svc = services(request)
        record = record_or_404(svc, request.path_params["sandbox_id"])
        return JSONResponse(detail_body(record, tokens(request), domain(request)))

    async def kill(request: Request) -> Response:
        svc = services(request)
        sandbox_id = request.path_params["sandbox_id"]
        record_or_404(svc, sandbox_id)
        killing: set[str] = request.scope["hutch.e2b.killing"]
        killing.add(sandbox_id)
        try:
            await svc.sandboxes.destroy(sandbox_id)
        finally:
            killing.discard(sandbox_id)
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
            if visible(r.team)
            and all(metadata_of(r).get(k) == v for k, v in wanted.items())
            and (not states or _state(r) in states)
            and (template is None or _template_of(r) == template)
            and (after is None or _started(r) >= after)  # E2B: a sandbox started then counts
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

    async def metrics(request: Request) -> JSONResponse:
        svc = services(request)
        sandbox_id = request.path_params["sandbox_id"]
        if record_or_404(svc, sandbox_id).status != "running":
            return JSONResponse([])  # nothing runs, nothing to measure
        start = _unix_param(request, "start")
        end = _unix_param(request, "end")
        points = e2b_metrics(await read_sandbox_metrics(svc, sandbox_id))
        return JSONResponse(
            [
                p
                for p in points
                if (start is None or p["timestampUnix"] >= start)
                and (end is None or p["timestampUnix"] <= end)
            ]
        )

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
