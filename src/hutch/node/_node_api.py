"""The node API: one host's `LocalHost` served over HTTP/JSON to the API servers of a cluster.

Every request carries the cluster's node token (`Authorization: Bearer`), compared in constant
time; a request without it gets 401 and a log line. Containers are named by runtime id here
(the API keeps the sandbox id -> runtime id map). Byte streams (agent connections, a sandbox's
ports) go through the tunnel listener (node/_tunnel.py), not through this app.

    GET  /node/v1/info                          capacity and use of this host
    POST /node/v1/states            {ids}        runtime id -> runc status of those that exist
    POST /node/v1/sweep             {keep}       remove every other container
    POST /node/v1/c/{rid}/create    {spec, defer_network, network_answer}
                                    network_answer: lines {created}, then {address, gateway}
                                    or {error} once the network is attached
    POST /node/v1/c/{rid}/start     {spec}               -> {address, gateway}
    POST /node/v1/c/{rid}/network_ready                  -> {address, gateway}
    POST /node/v1/c/{rid}/{stop|destroy|pause|resume|restore_buckets}
    GET  /node/v1/c/{rid}/address   {address, gateway}
    PUT  /node/v1/c/{rid}/network   {internet, allow, deny}
    GET  /node/v1/c/{rid}/usage?disk=1
    POST /node/v1/c/{rid}/snapshot  {snapshot, spare}  a disk snapshot, here
    POST /node/v1/c/{rid}/fork_disks  {copies}  copies of its disk for a fork's creates
    PUT|DELETE /node/v1/c/{rid}/egress  {secrets}  this node's egress proxy injects them
                                    (node/_egress_grants.py): {port} / no more
    GET|POST|DELETE /node/v1/c/{rid}/mounts  list / mount {bucket, mount_path, endpoint,
                                    credentials, ...} / unmount ?mount_path=  (rclone here)
    GET  /node/v1/c/{rid}/mounts/requests  {requests}  each mount's request, credentials
                                    included (another node pulls them: node/_bucket_moves.py)
    POST /node/v1/c/{rid}/mounts/pull {source}  keep the mounts node `source` has, for the
                                    stopped sandbox's next start (a move)
    GET|DELETE /node/v1/snapshots/{snapshot}     {exists} / remove it
    GET  /node/v1/snapshots/{snapshot}/stream    its btrfs send stream (node/_disk_moves.py)
    POST /node/v1/snapshots/{snapshot}/pull {source}  receive it from another node
    POST /node/v1/snapshots/{snapshot}/backup  {target, name, parent}  stream it to S3
    POST /node/v1/snapshots/{snapshot}/receive {target, names, last}   receive it from S3
    POST /node/v1/pool/{rid}/claim  {limits, env}  hand out a pooled sandbox a replica claimed
    POST /node/v1/deaths            {ids}        runtime id -> why, of those whose init ended
    POST /node/v1/oom_kills         {ids}        [{runtime_id, count, host_pid, command}]
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from hutch.node._bucket_moves import pull_mounts
from hutch.node._disk_backups import target_from_json
from hutch.node._disk_moves import pull, send_stream
from hutch.node._egress import EgressProxy
from hutch.node._egress_grants import EgressGrants
from hutch.node._host import LocalHost
from hutch.node._node_wire import (
    NETWORK_ANSWER_TYPE,
    bucket_mount_to_json,
    bucket_request_from_json,
    bucket_request_to_json,
    network_from_json,
    spec_from_json,
    usage_to_json,
)
from hutch.node._tunnel import TunnelServer
from hutch.runtime import (
    BackupFailed,
    BucketError,
    BucketMountFailed,
    BucketNotMounted,
    BucketPathBusy,
    Image,
    ImageNotFound,
    Limits,
    SandboxRuntimeError,
)

log = logging.getLogger("hutch.node")

_RID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

Capacity = Callable[[], dict[str, Any]]

# A node receives a backup where the API placed it (the limits were the API's concern).
_NO_LIMITS = Limits()
# The API's codes for what a bucket mount can refuse (RemoteHost raises the same errors again).
BUCKET_CODES: dict[type[BucketError], str] = {
    BucketMountFailed: "bucket_mount_failed",
    BucketPathBusy: "mount_path_busy",
    BucketNotMounted: "bucket_not_mounted",
}


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


class NodeTokenMiddleware:
    """401 for any request without the node token (constant-time compare), logged."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self._app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = b""
            for name, value in scope["headers"]:
                if name == b"authorization" and value[:7].lower() == b"bearer ":
                    given = value[7:].strip()
            if not hmac.compare_digest(given, self._token):
                client = scope.get("client")
                log.warning(
                    "node API: refused %s %s from %s: missing or wrong node token",
                    scope["method"],
                    scope["path"],
                    client[0] if client else "?",
                )
                response = _error(
                    401,
                    "node_unauthorized",
                    "missing or wrong node token: send 'Authorization: Bearer <node_token>' "
                    "(the cluster's shared node_token)",
                )
                await response(scope, receive, send)
                return
        await self._app(scope, receive, send)


def node_app(
    host: LocalHost,
    image: Callable[[str], Image],
    capacity: Capacity,
    token: str,
    egress: tuple[EgressProxy, EgressGrants] | None = None,
    tunnels: TunnelServer | None = None,
) -> ASGIApp:
    """The node API over `host` (its runtime-id map: identity), behind the token check.
    `egress`: this node's egress proxy and the secrets replicas granted it. `tunnels`: this
    node's tunnel listener, which refuses a paused sandbox's agent tunnels (node/_tunnel.py)."""

    def checked(value: object, what: str) -> str:
        """A runtime or snapshot id as a path segment takes it (ValueError: a 400)."""
        text = str(value)
        if not _RID.fullmatch(text):
            raise ValueError(f"invalid {what} {text!r}")
        return text

    def rid_of(request: Request) -> str:
        return checked(request.path_params["rid"], "runtime id")

    def snapshot_of(request: Request) -> str:
        return checked(request.path_params["snapshot"], "snapshot id")

    async def ids_of(request: Request) -> list[str]:
        return [checked(i, "runtime id") for i in (await request.json())["ids"]]

    Handler = Callable[[Request], Awaitable[Response]]

    def guarded(handler: Handler) -> Handler:
        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except ImageNotFound as exc:
                return _error(404, "image_not_found", f"{exc}: import or pull it on every node")
            except BackupFailed as exc:
                return _error(502, "backup_stream_failed", str(exc))
            except BucketError as exc:  # BucketPathInvalid: invalid_request
                return _error(400, BUCKET_CODES.get(type(exc), "invalid_request"), str(exc))
            except SandboxRuntimeError as exc:
                return _error(409, "node_runtime_error", str(exc))
            except (KeyError, TypeError, ValueError) as exc:
                return _error(400, "invalid_request", f"malformed node request: {exc}")

        return run

    async def info(request: Request) -> Response:
        return JSONResponse(capacity())

    async def states(request: Request) -> Response:
        body = await request.json()
        return JSONResponse(await host.states([str(i) for i in body["ids"]]))

    async def deaths(request: Request) -> Response:
        return JSONResponse(await host.dead(await ids_of(request)))

    async def oom_kills(request: Request) -> Response:
        kills = await host.oom_kills(await ids_of(request))
        return JSONResponse([dataclasses.asdict(k) for _, k in kills])

    async def sweep(request: Request) -> Response:
        body = await request.json()
        return JSONResponse({"removed": await host.sweep([str(i) for i in body["keep"]])})

    async def create(request: Request) -> Response:
        rid = rid_of(request)
        body = await request.json()
        spec = spec_from_json(body["spec"], image)
        if spec.id != rid:
            raise ValueError("spec id and path differ")
        snapshot = body.get("snapshot")
        defer_network = bool(body.get("defer_network"))
        await host.create(
            rid,
            spec,
            defer_network=defer_network,
            snapshot=None if snapshot is None else checked(snapshot, "snapshot id"),
        )
        if defer_network and body.get("network_answer") is True:
            # The network's answer follows in this response once the veth is attached: the
            # replica asks no `network_ready` (a request, while the agent starts).
            return StreamingResponse(network_lines(rid), media_type=NETWORK_ANSWER_TYPE)
        return JSONResponse({})

    async def network_lines(rid: str) -> AsyncIterator[bytes]:
        yield b'{"created": true}\n'
        try:
            # NB: shielded: a replica that goes away does not cancel the attach half-way
            # (its destroy, or the node's sweep, removes the sandbox).
            await asyncio.shield(host.network_ready(rid))
        except SandboxRuntimeError as exc:
            answer: dict[str, Any] = {"error": {"code": "node_runtime_error", "message": str(exc)}}
        except Exception as exc:  # NB: said in the stream: its 200 is sent already
            log.exception("network of %s", rid)
            answer = {"error": {"code": "node_error", "message": f"network attach: {exc}"}}
        else:
            answer = addresses(rid)
        yield json.dumps(answer).encode() + b"\n"

    def addresses(rid: str) -> dict[str, str | None]:
        return {"address": host.address(rid), "gateway": host.gateway_address(rid)}

    async def start(request: Request) -> Response:
        rid = rid_of(request)
        spec = spec_from_json((await request.json())["spec"], image)
        await host.start_existing(rid, spec)
        # Its addresses with the answer: the replica needs them next (one round trip less).
        return JSONResponse(addresses(rid))

    simple: dict[str, Callable[[str], Awaitable[None]]] = {
        "network_ready": host.network_ready,
        "stop": host.stop,
        "destroy": host.destroy,
        "pause": host.pause,
        "resume": host.resume,
        "restore_buckets": host.restore_buckets,
    }

    def forget_egress(rid: str) -> None:
        if egress is not None:
            egress[0].forget(rid)
            egress[1].drop(rid)

    async def action(request: Request) -> Response:
        rid = rid_of(request)
        name = str(request.path_params["op"])
        op = simple.get(name)
        if op is None:
            return _error(404, "not_found", "no such node operation")
        if name in ("stop", "destroy"):
            forget_egress(rid)  # as on one host; the next start grants them again
        if tunnels is not None and name == "pause":
            tunnels.hold(rid)
            try:
                await op(rid)
            except BaseException:
                tunnels.release(rid)  # NB: not frozen after all (or in doubt: it runs)
                raise
            return JSONResponse({})
        await op(rid)
        if tunnels is not None and name in ("resume", "stop", "destroy"):
            tunnels.release(rid)
        if name == "network_ready":
            return JSONResponse(addresses(rid))  # as `start`'s answer
        return JSONResponse({})

    async def egress_grant(request: Request) -> Response:
        rid = rid_of(request)
        if request.method == "DELETE":
            forget_egress(rid)
            return JSONResponse({})
        if egress is None:
            return _error(501, "not_on_nodes", "this node runs no egress proxy")
        proxy, grants = egress
        grants.put(rid, dict((await request.json())["secrets"]))
        try:
            if not await proxy.register(rid, rid):
                raise ValueError("the egress proxy did not take the grant")
        except BaseException as exc:
            forget_egress(rid)
            if isinstance(exc, OSError):  # no veth (not running), cannot listen
                raise SandboxRuntimeError(f"egress for {rid}: {exc}") from exc
            raise
        return JSONResponse({"port": proxy.port})

    async def address(request: Request) -> Response:
        return JSONResponse(addresses(rid_of(request)))

    async def network(request: Request) -> Response:
        rid = rid_of(request)
        await host.set_network_policy(rid, network_from_json(await request.json()))
        return JSONResponse({})

    async def usage(request: Request) -> Response:
        rid = rid_of(request)
        disk = request.query_params.get("disk", "1") == "1"
        return JSONResponse(usage_to_json(await host.usage(rid, disk=disk)))

    async def take_snapshot(request: Request) -> Response:
        rid = rid_of(request)
        body = await request.json()
        snapshot = checked(body["snapshot"], "snapshot id")
        await host.take_snapshot(rid, snapshot, spare=body.get("spare") is True)
        return JSONResponse({})

    async def fork_disks(request: Request) -> Response:
        rid = rid_of(request)
        copies = [checked(c, "snapshot id") for c in (await request.json())["copies"]]
        await host.fork_disks(rid, copies)
        return JSONResponse({})

    async def snapshot(request: Request) -> Response:
        snapshot = snapshot_of(request)
        if request.method == "DELETE":
            await host.delete_snapshot(snapshot)
            return JSONResponse({})
        return JSONResponse({"exists": await host.has_snapshot(snapshot)})

    async def snapshot_stream(request: Request) -> Response:
        chunks = await send_stream(host.runtime.snapshots, snapshot_of(request))
        return StreamingResponse(chunks, media_type="application/octet-stream")

    async def snapshot_pull(request: Request) -> Response:
        source = str((await request.json())["source"])
        if not source.startswith(("http://", "https://")):
            raise ValueError("source must be a node API URL")
        await pull(host.runtime.snapshots, snapshot_of(request), source, token)
        return JSONResponse({})

    async def snapshot_backup(request: Request) -> Response:
        body = await request.json()
        parent = body.get("parent")
        incremental = await host.send_backup(
            snapshot_of(request),
            target_from_json(body["target"]),
            checked(body["name"], "object name"),
            parent=None if parent is None else checked(parent, "snapshot id"),
        )
        return JSONResponse({"incremental": incremental})

    async def snapshot_receive(request: Request) -> Response:
        body = await request.json()
        await host.receive_backup(
            target_from_json(body["target"]),
            [checked(n, "object name") for n in body["names"]],
            checked(body["last"], "subvolume name"),
            snapshot_of(request),
            limits=_NO_LIMITS,
        )
        return JSONResponse({})

    async def mounts(request: Request) -> Response:
        rid = rid_of(request)
        if request.method == "POST":
            wanted = bucket_request_from_json(await request.json())
            return JSONResponse(bucket_mount_to_json(await host.mount_bucket(rid, wanted)))
        if request.method == "DELETE":
            await host.unmount_bucket(rid, str(request.query_params["mount_path"]))
            return JSONResponse({})
        return JSONResponse([bucket_mount_to_json(m) for m in await host.bucket_mounts(rid)])

    async def mount_requests(request: Request) -> Response:
        # NB: credentials in the answer: for the node this sandbox moves to (node token only).
        requests = host.runtime.buckets.requests(rid_of(request))
        return JSONResponse({"requests": [bucket_request_to_json(r) for r in requests]})

    async def mounts_pull(request: Request) -> Response:
        source = str((await request.json())["source"])
        if not source.startswith(("http://", "https://")):
            raise ValueError("source must be a node API URL")
        count = await pull_mounts(host.runtime, rid_of(request), source, token)
        return JSONResponse({"mounts": count})

    async def pool_claim(request: Request) -> Response:
        rid = rid_of(request)
        body = await request.json()
        limits = Limits(**body["limits"])
        env = {str(k): str(v) for k, v in dict(body["env"]).items()}
        done = host.pools is not None and await host.pools.hand_out(rid, limits, env)
        return JSONResponse({"handed_out": done})

    routes = [
        Route("/node/v1/info", guarded(info), methods=["GET"]),
        Route("/node/v1/states", guarded(states), methods=["POST"]),
        Route("/node/v1/sweep", guarded(sweep), methods=["POST"]),
        Route("/node/v1/deaths", guarded(deaths), methods=["POST"]),
        Route("/node/v1/oom_kills", guarded(oom_kills), methods=["POST"]),
        Route("/node/v1/c/{rid}/create", guarded(create), methods=["POST"]),
        Route("/node/v1/c/{rid}/start", guarded(start), methods=["POST"]),
        Route("/node/v1/c/{rid}/address", guarded(address), methods=["GET"]),
        Route("/node/v1/c/{rid}/network", guarded(network), methods=["PUT"]),
        Route("/node/v1/c/{rid}/usage", guarded(usage), methods=["GET"]),
        Route("/node/v1/c/{rid}/snapshot", guarded(take_snapshot), methods=["POST"]),
        Route("/node/v1/c/{rid}/fork_disks", guarded(fork_disks), methods=["POST"]),
        Route("/node/v1/c/{rid}/mounts", guarded(mounts), methods=["GET", "POST", "DELETE"]),
        Route("/node/v1/c/{rid}/mounts/requests", guarded(mount_requests), methods=["GET"]),
        Route("/node/v1/c/{rid}/mounts/pull", guarded(mounts_pull), methods=["POST"]),
        Route("/node/v1/c/{rid}/egress", guarded(egress_grant), methods=["PUT", "DELETE"]),
        Route("/node/v1/snapshots/{snapshot}", guarded(snapshot), methods=["GET", "DELETE"]),
        Route("/node/v1/snapshots/{snapshot}/stream", guarded(snapshot_stream), methods=["GET"]),
        Route("/node/v1/snapshots/{snapshot}/pull", guarded(snapshot_pull), methods=["POST"]),
        Route("/node/v1/snapshots/{snapshot}/backup", guarded(snapshot_backup), methods=["POST"]),
        Route("/node/v1/snapshots/{snapshot}/receive", guarded(snapshot_receive), methods=["POST"]),
        Route("/node/v1/pool/{rid}/claim", guarded(pool_claim), methods=["POST"]),
        Route("/node/v1/c/{rid}/{op}", guarded(action), methods=["POST"]),
    ]
    return NodeTokenMiddleware(Starlette(routes=routes), token)
