"""`RemoteHost`: `SandboxHost` over a node daemon's API (node/_node_api.py) and its tunnels.

Every call has a bounded timeout: a node that is gone makes calls fail with `NodeUnavailable`
(naming the node) within seconds, never hang. The agent connection is the tunnel's byte
stream, so the gateway and the agent protocol are the same as on one host.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from hutch.node._agent_client import AgentConnection, AgentDisconnected
from hutch.node._disk_backups import target_to_json
from hutch.node._gateway import AgentPaused
from hutch.node._node_wire import (
    NETWORK_ANSWER_TYPE,
    bucket_mount_from_json,
    bucket_request_to_json,
    network_to_json,
    spec_to_json,
    usage_from_json,
)
from hutch.node._tunnel import TunnelRefused, connect_protocol, open_tunnel
from hutch.runtime import (
    BackupFailed,
    BackupTarget,
    BucketError,
    BucketMount,
    BucketMountFailed,
    BucketNotMounted,
    BucketPathBusy,
    BucketPathInvalid,
    BucketRequest,
    Limits,
    NetworkPolicy,
    OomKill,
    SandboxRuntimeError,
    SandboxSpec,
    SandboxUsage,
)

# Seconds. A create runs runc and starts an agent (~0.1 s here); stop/destroy may wait for a
# process tree to die. Reads are quick or the node is in trouble.
CALL_TIMEOUT = 30.0
CONNECT_TIMEOUT = 2.0
# A disk moved between nodes: bounded, but by its size (the receiving node gives up on a stall).
MOVE_TIMEOUT = 600.0


class NodeUnavailable(ConnectionError):
    """The node did not answer (down, unreachable, or timed out)."""

    def __init__(self, node: str, detail: str) -> None:
        super().__init__(f"node {node} is unavailable ({detail})")
        self.node = node


class NodeRefused(SandboxRuntimeError):
    """The node answered with an error (its code and message are the node's)."""

    def __init__(self, node: str, status: int, code: str, message: str) -> None:
        super().__init__(f"node {node}: {message}")
        self.node = node
        self.status = status
        self.code = code


# The node API's codes of a refused bucket mount (node/_node_api.py) -> the runtime's errors,
# which the API's bucket routes answer as on one host.
_BUCKET_ERRORS: dict[str, type[BucketError]] = {
    "bucket_mount_failed": BucketMountFailed,
    "mount_path_busy": BucketPathBusy,
    "bucket_not_mounted": BucketNotMounted,
    "invalid_request": BucketPathInvalid,
}


class RemoteHost:
    """One node's sandboxes, by sandbox id (mapped to the runtime ids the node knows)."""

    def __init__(
        self,
        name: str,
        address: str,
        token: str,
        runtime_id: Callable[[str], str],
        *,
        tunnel_port: int | None = None,
    ) -> None:
        self.name = name
        self.api_url = address.rstrip("/")
        parts = urlsplit(self.api_url)
        self._tunnel_host = parts.hostname or "127.0.0.1"
        # The tunnel listens next to the API (port + 1) unless told otherwise.
        self._tunnel_port = tunnel_port or (parts.port or 80) + 1
        self._token = token
        self._rid = runtime_id
        self._client = httpx.AsyncClient(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(CALL_TIMEOUT, connect=CONNECT_TIMEOUT),
        )
        # Cached addresses: the preview proxy asks synchronously for every request.
        self._addresses: dict[str, tuple[str | None, str | None]] = {}
        # The create responses whose network line is still to come (`network_ready`).
        self._network_answers: dict[str, tuple[httpx.Response, AsyncIterator[str]]] = {}
        self._runtimes = {"runc"}

    async def aclose(self) -> None:
        for sandbox_id in list(self._network_answers):
            await self._drop_answer(sandbox_id)
        await self._client.aclose()

    async def _call(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        try:
            response = await self._client.request(method, path, json=body, **kw)
        except (httpx.TransportError, OSError) as exc:
            raise NodeUnavailable(self.name, f"{type(exc).__name__}: {exc}") from exc
        self._check(response)
        return response.json()

    async def _send(self, method: str, path: str, body: Any) -> httpx.Response:
        """The call's response, its body not read yet (the caller closes it)."""
        request = self._client.build_request(method, path, json=body)
        try:
            response = await self._client.send(request, stream=True)
            if response.status_code >= 400:
                try:
                    await response.aread()
                finally:
                    await response.aclose()
        except (httpx.TransportError, OSError) as exc:
            raise NodeUnavailable(self.name, f"{type(exc).__name__}: {exc}") from exc
        self._check(response)
        return response

    def _check(self, response: httpx.Response) -> None:
        if response.status_code >= 400:
            try:
                err = response.json()["error"]
                code, message = str(err["code"]), str(err["message"])
            except (ValueError, KeyError, TypeError):
                code, message = "node_error", response.text[:200]
            raise NodeRefused(self.name, response.status_code, code, message)

    async def info(self) -> dict[str, Any]:
        # Short: also the "is the node there at all" probe.
        info: dict[str, Any] = await self._call("GET", "/node/v1/info", timeout=CONNECT_TIMEOUT)
        self._runtimes = set(info.get("runtimes", ["runc"]))
        return info

    def _c(self, sandbox_id: str, what: str) -> str:
        return f"/node/v1/c/{self._rid(sandbox_id)}/{what}"

    def supports(self, runtime: str) -> bool:
        return runtime in self._runtimes

    async def create(
        self,
        sandbox_id: str,
        spec: SandboxSpec,
        *,
        defer_network: bool,
        snapshot: str | None = None,
    ) -> None:
        body = {"spec": spec_to_json(spec), "defer_network": defer_network, "snapshot": snapshot}
        path = f"/node/v1/c/{spec.id}/create"
        if not defer_network:
            await self._call("POST", path, body)
            return
        # The node answers the network's readiness in the same response, a line after the
        # create's own (node/_node_api.py): `network_ready` reads it, no second request. A
        # node of an older Hutch answers `{}` and is asked, as before.
        body["network_answer"] = True
        response = await self._send("POST", path, body)
        try:
            if response.headers.get("content-type", "").startswith(NETWORK_ANSWER_TYPE):
                lines = response.aiter_lines()
                first = json.loads(await anext(lines))
                if first.get("created") is not True:
                    raise NodeUnavailable(self.name, f"unexpected create answer {first!r}")
                self._network_answers[sandbox_id] = (response, lines)
            else:
                await response.aread()
                await response.aclose()
        except BaseException as exc:
            await response.aclose()
            if isinstance(exc, (httpx.TransportError, OSError, StopAsyncIteration, ValueError)):
                raise NodeUnavailable(self.name, f"create: {type(exc).__name__}: {exc}") from exc
            raise
        # NB: no network yet; its addresses come with network_ready's answer, so the
        # agent connection the create makes meanwhile need not ask the node for them.
        self._addresses[sandbox_id] = (None, None)

    async def network_ready(self, sandbox_id: str) -> None:
        pending = self._network_answers.pop(sandbox_id, None)
        if pending is None:
            got = await self._call("POST", self._c(sandbox_id, "network_ready"))
        else:
            response, lines = pending
            try:
                got = json.loads(await anext(lines))
            except (httpx.TransportError, OSError, StopAsyncIteration, ValueError) as exc:
                raise NodeUnavailable(self.name, f"network: {type(exc).__name__}: {exc}") from exc
            finally:
                await response.aclose()
            error = got.get("error") if isinstance(got, dict) else None
            if isinstance(error, dict):
                raise NodeRefused(self.name, 409, str(error["code"]), str(error["message"]))
        await self._learn_address(sandbox_id, got)

    async def _drop_answer(self, sandbox_id: str) -> None:
        """A create's network answer no one will read (the sandbox goes): its connection."""
        pending = self._network_answers.pop(sandbox_id, None)
        if pending is not None:
            await pending[0].aclose()

    async def start_existing(self, sandbox_id: str, spec: SandboxSpec) -> None:
        got = await self._call("POST", f"/node/v1/c/{spec.id}/start", {"spec": spec_to_json(spec)})
        await self._learn_address(sandbox_id, got)

    async def _learn_address(self, sandbox_id: str, answer: Any) -> None:
        """The addresses a node gives with its answer; a node of an older Hutch gives none:
        asked for them then."""
        if isinstance(answer, dict) and "address" in answer and "gateway" in answer:
            self._addresses[sandbox_id] = (answer["address"], answer["gateway"])
        else:
            await self._refresh_address(sandbox_id)

    async def stop(self, sandbox_id: str) -> None:
        self._addresses.pop(sandbox_id, None)
        await self._drop_answer(sandbox_id)
        await self._call("POST", self._c(sandbox_id, "stop"))

    async def destroy(self, sandbox_id: str) -> None:
        self._addresses.pop(sandbox_id, None)
        await self._drop_answer(sandbox_id)
        await self._call("POST", self._c(sandbox_id, "destroy"))

    async def pause(self, sandbox_id: str) -> None:
        await self._call("POST", self._c(sandbox_id, "pause"))

    async def resume(self, sandbox_id: str) -> None:
        await self._call("POST", self._c(sandbox_id, "resume"))

    async def states(self, sandbox_ids: Collection[str]) -> dict[str, str]:
        by_rid = {self._rid(sid): sid for sid in sandbox_ids}
        found: dict[str, str] = await self._call("POST", "/node/v1/states", {"ids": list(by_rid)})
        return {by_rid[rid]: state for rid, state in found.items() if rid in by_rid}

    async def sweep(self, keep: Collection[str]) -> list[str]:
        body = {"keep": [self._rid(sid) for sid in keep]}
        removed: list[str] = (await self._call("POST", "/node/v1/sweep", body))["removed"]
        return removed

    async def restore_buckets(self, sandbox_id: str) -> None:
        await self._call("POST", self._c(sandbox_id, "restore_buckets"))

    async def connect_agent(self, sandbox_id: str, *, timeout: float) -> AgentConnection:  # noqa: ASYNC109
        if sandbox_id not in self._addresses:
            # NB: a sandbox another replica started: its gateway goes into the secrets each
            # new connection hands the agent (the egress proxy's URL), so learn it first.
            with contextlib.suppress(NodeRefused):
                await self._refresh_address(sandbox_id)
        return await self._open_agent(self._rid(sandbox_id), timeout)

    async def _open_agent(self, runtime_id: str, timeout: float) -> AgentConnection:  # noqa: ASYNC109
        target = f"agent/{runtime_id}"
        try:
            reader, writer = await open_tunnel(
                self._tunnel_host, self._tunnel_port, target, self._token, timeout=timeout
            )
        except TunnelRefused as exc:
            if exc.status == 409:
                raise AgentPaused(f"node {self.name}: the sandbox is paused") from exc
            raise AgentDisconnected(f"node {self.name}: {exc}") from exc
        except (OSError, TimeoutError) as exc:
            raise NodeUnavailable(self.name, f"tunnel: {type(exc).__name__}: {exc}") from exc
        return AgentConnection(reader, writer)

    async def connect_port(
        self,
        sandbox_id: str,
        port: int,
        factory: Callable[[], asyncio.Protocol],
        *,
        timeout: float,  # noqa: ASYNC109
    ) -> asyncio.Protocol:
        """Connect `factory()`'s protocol to the sandbox's `port` through the node (the
        preview proxy's connector)."""
        target = f"port/{self._rid(sandbox_id)}/{port}"
        return await connect_protocol(
            self._tunnel_host, self._tunnel_port, target, self._token, factory, timeout=timeout
        )

    async def claim_pooled(
        self, runtime_id: str, limits: Limits, env: Mapping[str, str]
    ) -> AgentConnection | None:
        """Have the node hand out its pooled sandbox `runtime_id` (claimed in the store) set up
        with `limits` and `env`, and connect to its agent; None: the node no longer has it."""
        body = {"limits": dataclasses.asdict(limits), "env": dict(env)}
        got = await self._call("POST", f"/node/v1/pool/{runtime_id}/claim", body)
        if not got.get("handed_out"):
            return None
        return await self._open_agent(runtime_id, CALL_TIMEOUT)

    async def _refresh_address(self, sandbox_id: str) -> None:
        got = await self._call("GET", self._c(sandbox_id, "address"))
        self._addresses[sandbox_id] = (got["address"], got["gateway"])

    def gateway_address(self, sandbox_id: str) -> str | None:
        return self._addresses.get(sandbox_id, (None, None))[1]

    def address(self, sandbox_id: str) -> str | None:
        # NB: the address is on the node's bridge, reachable from that node only: previews go
        # through `open_port` instead.
        return self._addresses.get(sandbox_id, (None, None))[0]

    async def set_network_policy(self, sandbox_id: str, policy: NetworkPolicy) -> None:
        await self._call("PUT", self._c(sandbox_id, "network"), network_to_json(policy))

    @property
    def egress_port(self) -> int:
        """The port of the node's egress proxy on each sandbox's gateway (tunnels' + 1)."""
        return self._tunnel_port + 1

    async def grant_egress(self, sandbox_id: str, secrets: Mapping[str, str]) -> None:
        """Have the node's egress proxy inject these (the sandbox's rules and the secrets they
        name) for the sandbox (node/_egress_grants.py)."""
        await self._call("PUT", self._c(sandbox_id, "egress"), {"secrets": dict(secrets)})

    async def mount_bucket(self, sandbox_id: str, request: BucketRequest) -> BucketMount:
        """rclone runs on the node (with the credentials of this call's body)."""
        got = await self._bucket_call(
            "POST", self._c(sandbox_id, "mounts"), bucket_request_to_json(request)
        )
        return bucket_mount_from_json(got)

    async def unmount_bucket(self, sandbox_id: str, mount_path: str) -> None:
        path = self._c(sandbox_id, "mounts")
        await self._bucket_call("DELETE", path, params={"mount_path": mount_path})

    async def bucket_mounts(self, sandbox_id: str) -> list[BucketMount]:
        got = await self._call("GET", self._c(sandbox_id, "mounts"))
        return [bucket_mount_from_json(m) for m in got]

    async def pull_mounts(self, sandbox_id: str, source: RemoteHost) -> int:
        """This node keeps the sandbox's bucket mounts that node `source` has (node to node:
        the credentials do not pass through the API replica); the next start mounts them."""
        path = self._c(sandbox_id, "mounts/pull")
        got = await self._bucket_call("POST", path, {"source": source.api_url})
        return int(got["mounts"])

    async def _bucket_call(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        # A mount waits for rclone to reach the bucket (BucketMounts bounds that itself).
        try:
            return await self._call(method, path, body, **kw)
        except NodeRefused as exc:
            error = _BUCKET_ERRORS.get(exc.code)
            if error is None:
                raise
            raise error(str(exc)) from exc

    async def usage(self, sandbox_id: str, *, disk: bool = True) -> SandboxUsage:
        got = await self._call(
            "GET", self._c(sandbox_id, "usage"), params={"disk": "1" if disk else "0"}
        )
        return usage_from_json(got)

    def storage_usage(self) -> tuple[int, int]:
        return (0, 0)

    async def take_snapshot(
        self, sandbox_id: str, snapshot_id: str, *, spare: bool = False
    ) -> None:
        body = {"snapshot": snapshot_id, "spare": spare}
        await self._call("POST", self._c(sandbox_id, "snapshot"), body)

    async def fork_disks(self, sandbox_id: str, copy_ids: Sequence[str]) -> None:
        await self._call("POST", self._c(sandbox_id, "fork_disks"), {"copies": list(copy_ids)})

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await self._call("DELETE", f"/node/v1/snapshots/{snapshot_id}")

    async def has_snapshot(self, snapshot_id: str) -> bool:
        got = await self._call("GET", f"/node/v1/snapshots/{snapshot_id}")
        return bool(got["exists"])

    async def pull_snapshot(self, snapshot_id: str, source: RemoteHost) -> None:
        """This node receives the snapshot from node `source` (node to node, over the node
        API: the bytes do not pass through the API replica)."""
        await self._call(
            "POST",
            f"/node/v1/snapshots/{snapshot_id}/pull",
            {"source": source.api_url},
            timeout=httpx.Timeout(MOVE_TIMEOUT, connect=CONNECT_TIMEOUT),
        )

    async def send_backup(
        self, snapshot_id: str, target: BackupTarget, name: str, *, parent: str | None
    ) -> bool:
        body = {"target": target_to_json(target), "name": name, "parent": parent}
        got = await self._backup_call(f"/node/v1/snapshots/{snapshot_id}/backup", body)
        return bool(got["incremental"])

    async def receive_backup(
        self,
        target: BackupTarget,
        names: Sequence[str],
        last: str,
        snapshot_id: str,
        *,
        limits: Limits,
    ) -> None:
        body = {"target": target_to_json(target), "names": list(names), "last": last}
        await self._backup_call(f"/node/v1/snapshots/{snapshot_id}/receive", body)

    async def _backup_call(self, path: str, body: dict[str, Any]) -> Any:
        # A stream to or from S3: bounded by its size, as a disk move.
        try:
            return await self._call(
                "POST", path, body, timeout=httpx.Timeout(MOVE_TIMEOUT, connect=CONNECT_TIMEOUT)
            )
        except NodeRefused as exc:
            if exc.code == "backup_stream_failed":
                raise BackupFailed(str(exc)) from exc
            raise

    def _by_rid(
        self, sandbox_ids: Collection[str], rids: Mapping[str, str] | None
    ) -> dict[str, str]:
        known = rids or {}
        return {known.get(sid) or self._rid(sid): sid for sid in sandbox_ids}

    async def dead(
        self, sandbox_ids: Collection[str], *, rids: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """`rids`: the runtime ids of these sandboxes, read in one go by the caller."""
        by_rid = self._by_rid(sandbox_ids, rids)
        # Short: asked every half second; a slow node is the node watch's business.
        found: dict[str, str] = await self._call(
            "POST", "/node/v1/deaths", {"ids": list(by_rid)}, timeout=CONNECT_TIMEOUT
        )
        return {by_rid[rid]: why for rid, why in found.items() if rid in by_rid}

    async def oom_kills(
        self, sandbox_ids: Collection[str], *, rids: Mapping[str, str] | None = None
    ) -> list[tuple[str, OomKill]]:
        by_rid = self._by_rid(sandbox_ids, rids)
        found = await self._call(
            "POST", "/node/v1/oom_kills", {"ids": list(by_rid)}, timeout=CONNECT_TIMEOUT
        )
        kills = [OomKill(**k) for k in found]
        return [(by_rid[k.runtime_id], k) for k in kills if k.runtime_id in by_rid]

    def close_watch(self) -> None:
        pass  # the node holds the watch
