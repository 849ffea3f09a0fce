"""Sandboxes: create, find, destroy them; snapshots, forks and backups.

What runs in a sandbox, its files and its ports are methods of `AsyncSandbox` too, written in
sandbox_run.py, sandbox_files.py and sandbox_ports.py (mixins, so that one object keeps the
whole API).
"""

# ruff: noqa: ASYNC109 -- `timeout` is the sandbox's lifetime or the command's own limit,
# enforced by the server; it is not a client-side deadline that asyncio.timeout could replace.

from __future__ import annotations

import builtins
from collections.abc import Mapping
from types import TracebackType
from typing import Unpack
from urllib.parse import urlsplit

from hutch._wire.sandbox_options import DEFAULTS, SandboxOptions
from hutch.sdk._async.buckets import Buckets, mount_body
from hutch.sdk._async.client import AsyncClient
from hutch.sdk._async.code import CodeInterpreter
from hutch.sdk._async.commands import Commands
from hutch.sdk._async.e2b_names import E2bCommands, e2b_create_names
from hutch.sdk._async.events import sandbox_events
from hutch.sdk._async.files import Files
from hutch.sdk._async.ports import Ports
from hutch.sdk._async.sandbox_files import FileMethods
from hutch.sdk._async.sandbox_ports import PortMethods
from hutch.sdk._async.sandbox_run import RunMethods
from hutch.sdk._exceptions import SandboxNotFound
from hutch.sdk._models import (
    Backup,
    SandboxInfo,
    SandboxMetrics,
    Snapshot,
)
from hutch.sdk._requests import label_params, path_segment, sandbox_create_body


class AsyncSandbox(RunMethods, FileMethods, PortMethods):
    """An isolated Linux sandbox on a Hutch server.

    Make one with :meth:`create`, :meth:`get_or_create` or :meth:`connect`. Used as a context
    manager, the sandbox is destroyed when the block ends::

        async with await AsyncSandbox.create() as sb:
            result = await sb.run("python", ["-c", "print(1)"])
            print(result.stdout)

    Attributes:
        id: The sandbox's id.
        client: The connection it talks through.
    """

    def __init__(self, id: str, *, client: AsyncClient, info: SandboxInfo | None = None) -> None:
        self.id = id
        self.client = client
        self._info = info
        self._path = f"/v1/sandboxes/{path_segment(id)}"
        self.files = Files(client, self._path)
        # Hutch's exec and run (sb.exec, sb.run, the streams); `sb.commands` is E2B's names.
        self._commands = Commands(client, self._path)
        self.code = CodeInterpreter(client, self._path)
        self.buckets = Buckets(client, self._path)
        self.ports = Ports(client, self._path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r})"

    @classmethod
    async def create(
        cls,
        image: str = DEFAULTS.image,
        *,
        template: str | None = None,
        metadata: Mapping[str, str] | None = None,
        envs: Mapping[str, str] | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        client: AsyncClient | None = None,
        **options: Unpack[SandboxOptions],
    ) -> AsyncSandbox:
        """Create a new sandbox and wait until it runs.

        Args:
            image: The image to run, e.g. ``"default"`` (Debian with Python, Node and git).
            template: E2B's name for ``image``.
            metadata: E2B's name for ``labels`` (merged with them).
            envs: E2B's name for ``env`` (merged with it).
            base_url: The server URL; defaults to ``$HUTCH_URL``, then ``http://127.0.0.1:7070``.
            api_key: The API key; defaults to ``$HUTCH_API_KEY``.
            client: A client to use instead of the shared one for ``base_url``/``api_key``.
            **options: The sandbox's options, each described in
                :class:`~hutch._wire.sandbox_options.SandboxOptions`: ``env``, ``cpu`` (1.0),
                ``memory_mb`` (1024), ``disk_mb`` (4096), ``pids_limit`` (512), ``network``
                (``"none"`` or ``"internet"``), ``network_allow``, ``network_deny``,
                ``timeout`` (lifetime, seconds), ``sleep_after``, ``keep_alive``, ``runtime``
                (``"runc"`` or ``"gvisor"``), ``labels``, ``secrets``, ``egress_secrets``,
                ``start_entrypoint``.

        Returns:
            The running sandbox.

        Raises:
            InvalidRequest: An option is out of range; the error's ``fields`` say which.
            ImageNotFound: The image is not in the server's store.
            AuthenticationError: The API key is missing or wrong.
            HutchConnectionError: The server could not be reached.
            TypeError: An option that does not exist.
        """
        client = _client_for(client, base_url, api_key)
        image, labels, env = e2b_create_names(
            image,
            options.get("labels"),
            options.get("env"),
            template=template,
            metadata=metadata,
            envs=envs,
        )
        options = {**options, "labels": labels, "env": env}
        body = sandbox_create_body(image, options, function="create")
        info = SandboxInfo.from_json(await client.request("POST", "/v1/sandboxes", json=body))
        return cls(info.id, client=client, info=info)

    @classmethod
    async def get_or_create(
        cls,
        id: str,
        image: str = DEFAULTS.image,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        client: AsyncClient | None = None,
        **options: Unpack[SandboxOptions],
    ) -> AsyncSandbox:
        """The sandbox with this id, created with these options if it does not exist yet.

        For one sandbox per user or per task: ``get_or_create(f"user-{user_id}")``. When the
        sandbox exists already, the options are ignored.

        Args:
            id: 1-63 characters of ``[a-z0-9-]``, starting and ending alphanumeric.
            image: See :meth:`create`.
            base_url: See :meth:`create`.
            api_key: See :meth:`create`.
            client: See :meth:`create`.
            **options: See :meth:`create` (``start_entrypoint`` only when it is created).

        Raises:
            InvalidRequest: The id is not valid (``invalid_sandbox_id``) or an option is out
                of range.
            HutchConnectionError: The server could not be reached.
        """
        client = _client_for(client, base_url, api_key)
        body = sandbox_create_body(image, options, function="get_or_create", sandbox_id=id)
        sandbox = cls(id, client=client)
        info = SandboxInfo.from_json(await client.request("PUT", sandbox._path, json=body))
        sandbox._info = info
        return sandbox

    @classmethod
    async def connect(
        cls,
        id: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        client: AsyncClient | None = None,
    ) -> AsyncSandbox:
        """Attach to an existing sandbox.

        Args:
            id: The sandbox's id.
            base_url: See :meth:`create`.
            api_key: See :meth:`create`.
            client: See :meth:`create`.

        Raises:
            SandboxNotFound: No sandbox has this id.
            HutchConnectionError: The server could not be reached.
        """
        sandbox = cls(id, client=_client_for(client, base_url, api_key))
        await sandbox.info()
        return sandbox

    @classmethod
    async def list(
        cls,
        labels: Mapping[str, str] | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        client: AsyncClient | None = None,
    ) -> builtins.list[SandboxInfo]:
        """The sandboxes on the server.

        Args:
            labels: Only sandboxes that carry all of these labels.
            base_url: See :meth:`create`.
            api_key: See :meth:`create`.
            client: See :meth:`create`.

        Raises:
            HutchConnectionError: The server could not be reached.
        """
        client = _client_for(client, base_url, api_key)
        body = await client.request("GET", "/v1/sandboxes", params=label_params(labels))
        return [SandboxInfo.from_json(s) for s in body["sandboxes"]]

    async def info(self) -> SandboxInfo:
        """The sandbox's current state and settings.

        Raises:
            SandboxNotFound: The sandbox no longer exists.
        """
        self._info = SandboxInfo.from_json(await self.client.request("GET", self._path))
        return self._info

    async def metrics(self) -> SandboxMetrics:
        """What the sandbox uses now (CPU, memory, disk, network, tasks), with its CPU and
        memory over the last 15 minutes.

        Raises:
            SandboxNotFound: The sandbox no longer exists.
        """
        return SandboxMetrics.from_json(await self.client.request("GET", f"{self._path}/metrics"))

    events = sandbox_events  # sb.events(after=0, follow=True, timeout=None): see there

    async def pause(self) -> SandboxInfo:
        """Freeze every process in the sandbox (memory is kept); paused already: no-op.

        Any later request (or :meth:`resume`) wakes it; the processes continue where they were.
        An explicit pause stops its lifetime clock until it is resumed.

        Raises:
            Conflict: The sandbox is stopped (``invalid_state``): nothing runs to freeze.
        """
        return await self._lifecycle("pause")

    async def resume(self) -> SandboxInfo:
        """Run a paused or stopped sandbox again; running already: no-op.

        Raises:
            SandboxUnavailable: A stopped sandbox could not be started (its disk is kept).
        """
        return await self._lifecycle("resume")

    async def stop(self) -> SandboxInfo:
        """End every process in the sandbox, keeping its disk; :meth:`start` boots it again.

        Memory is not kept across a stop (process checkpointing, CRIU, fails on this kind of
        kernel); use :meth:`pause` to keep it.
        """
        return await self._lifecycle("stop")

    async def start(self) -> SandboxInfo:
        """Boot a stopped sandbox again on its disk (the image's entrypoint too, if it was
        created with ``start_entrypoint``); resumes a paused one.

        Raises:
            SandboxUnavailable: It could not be started (its disk is kept: retry).
        """
        return await self._lifecycle("start")

    async def set_timeout(self, timeout: float | str) -> SandboxInfo:
        """End the sandbox's lifetime ``timeout`` from now (``on_timeout`` says how).

        Args:
            timeout: Seconds or a duration (``"10m"``, ``"1h30m"``); ``0``: no limit.

        Raises:
            InvalidRequest: ``timeout`` is not a duration.
        """
        body = await self.client.request("PUT", f"{self._path}/timeout", json={"timeout": timeout})
        self._info = SandboxInfo.from_json(body)
        return self._info

    async def snapshot(self, name: str | None = None) -> Snapshot:
        """Capture the sandbox's filesystem and settings (a copy-on-write snapshot, in
        milliseconds; memory is not captured). Start sandboxes from it with
        ``create(snapshot=snap.id)``.

        Args:
            name: A name to find it by (unique on the server).

        Raises:
            Conflict: The name is taken (``snapshot_exists``).
        """
        body = {"name": name} if name is not None else {}
        return Snapshot.from_json(
            await self.client.request("POST", f"{self._path}/snapshots", json=body)
        )

    async def fork(self, count: int = 1) -> builtins.list[AsyncSandbox]:
        """``count`` new running sandboxes whose filesystems start as this one's is now.

        Raises:
            InvalidRequest: ``count`` is not 1-50.
        """
        body = await self.client.request("POST", f"{self._path}/fork", json={"count": count})
        return [
            type(self)(info.id, client=self.client, info=info)
            for info in (SandboxInfo.from_json(s) for s in body["sandboxes"])
        ]

    @classmethod
    async def list_snapshots(
        cls,
        sandbox_id: str | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        client: AsyncClient | None = None,
    ) -> builtins.list[Snapshot]:
        """The server's snapshots (of one sandbox if ``sandbox_id`` is given)."""
        client = _client_for(client, base_url, api_key)
        params = (("sandbox_id", sandbox_id),) if sandbox_id is not None else None
        body = await client.request("GET", "/v1/snapshots", params=params)
        return [Snapshot.from_json(s) for s in body["snapshots"]]

    @classmethod
    async def delete_snapshot(
        cls,
        snapshot: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        client: AsyncClient | None = None,
    ) -> None:
        """Delete a snapshot (by id or name); sandboxes started from it are not affected.

        Raises:
            NotFoundError: No such snapshot (``snapshot_not_found``).
        """
        client = _client_for(client, base_url, api_key)
        await client.request("DELETE", f"/v1/snapshots/{path_segment(snapshot)}")

    async def backup(
        self,
        bucket: str,
        endpoint: str,
        credentials: Mapping[str, str],
        prefix: str | None = None,
        *,
        region: str | None = None,
    ) -> Backup:
        """Write the sandbox's filesystem to an S3-compatible bucket (zstd-compressed, and
        incremental against its previous backup to the same place when the server still has
        that one's snapshot). Memory is not included.

        Args:
            bucket: The bucket's name.
            endpoint: The S3 endpoint URL.
            credentials: ``{"access_key_id": ..., "secret_access_key": ...}``.
            prefix: A key prefix for the backup's objects.
            region: The bucket's region, for servers that need it.

        Raises:
            BucketMountFailed: The bucket could not be reached (``backup_target_unreachable``);
                nothing was written.
            ServerError: The upload broke (``backup_failed``).
        """
        body = mount_body(
            bucket, "/", endpoint=endpoint, credentials=credentials, read_only=False,
            prefix=prefix, region=region,
        )  # fmt: skip
        del body["mount_path"], body["read_only"]
        return Backup.from_json(
            await self.client.request("POST", f"{self._path}/backups", json=body)
        )

    async def list_backups(self) -> builtins.list[Backup]:
        """The backups this server made of the sandbox, oldest first."""
        body = await self.client.request("GET", f"{self._path}/backups")
        return [Backup.from_json(b) for b in body["backups"]]

    @classmethod
    async def restore(
        cls,
        backup_id: str,
        bucket: str,
        endpoint: str,
        credentials: Mapping[str, str],
        prefix: str | None = None,
        *,
        region: str | None = None,
        id: str | None = None,
        labels: Mapping[str, str] | None = None,
        timeout: float | str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        client: AsyncClient | None = None,
    ) -> AsyncSandbox:
        """A new running sandbox from a backup, made by this server or another one (which
        must have the backup's image).

        Args:
            backup_id: The backup's id (``Backup.id``).
            bucket: See :meth:`backup`; ``endpoint``, ``credentials``, ``prefix`` and
                ``region`` too.
            endpoint: See :meth:`backup`.
            credentials: See :meth:`backup`.
            prefix: See :meth:`backup`.
            region: See :meth:`backup`.
            id: The new sandbox's id (generated when ``None``).
            labels: The new sandbox's labels.
            timeout: The new sandbox's lifetime (see :meth:`create`).
            base_url: See :meth:`create`.
            api_key: See :meth:`create`.
            client: See :meth:`create`.

        Raises:
            NotFoundError: No such backup there (``backup_not_found``), or the image is
                missing on this server (``image_not_found``).
            BucketMountFailed: The bucket could not be reached.
        """
        client = _client_for(client, base_url, api_key)
        body = mount_body(
            bucket, "/", endpoint=endpoint, credentials=credentials, read_only=False,
            prefix=prefix, region=region,
        )  # fmt: skip
        del body["mount_path"], body["read_only"]
        body["backup_id"] = backup_id
        body["sandbox"] = {"id": id, "labels": dict(labels or {}), "timeout": timeout}
        info = SandboxInfo.from_json(await client.request("POST", "/v1/backups/restore", json=body))
        return cls(info.id, client=client, info=info)

    async def _lifecycle(self, action: str) -> SandboxInfo:
        self._info = SandboxInfo.from_json(
            await self.client.request("POST", f"{self._path}/{action}")
        )
        return self._info

    async def destroy(self) -> None:
        """Stop the sandbox and delete it, with everything written in it.

        Raises:
            SandboxNotFound: The sandbox does not exist (or was destroyed already).
        """
        await self.client.request("DELETE", self._path)

    # -- E2B's names for the calls above (see e2b_names.py and docs/e2b-names.md) ---------------

    @property
    def sandbox_id(self) -> str:
        """The sandbox's id: E2B's name for :attr:`id`."""
        return self.id

    @property
    def commands(self) -> E2bCommands:
        """E2B's ``sb.commands``: ``run(cmd, background=...)``, ``list()``, ``kill(id)``."""
        return E2bCommands(self)

    async def kill(self) -> None:
        """Destroy the sandbox: E2B's name for :meth:`destroy`."""
        await self.destroy()

    async def is_running(self) -> bool:
        """Whether the sandbox exists and runs (``False`` once it is destroyed)."""
        try:
            return (await self.info()).status == "running"
        except SandboxNotFound:
            return False

    async def get_host(self, port: int) -> str:
        """The host (and port) of ``port``'s preview URL without a scheme, as E2B's
        ``get_host`` returns it: ``f"http://{sb.get_host(8080)}/"`` opens it. Exposes the port
        first if needed (see :meth:`expose_port`)."""
        return urlsplit(await self.get_preview_url(port)).netloc

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.destroy()
        except SandboxNotFound:
            pass  # destroyed inside the block, or by its lifetime ending


def _client_for(
    client: AsyncClient | None, base_url: str | None, api_key: str | None
) -> AsyncClient:
    if client is None:
        return AsyncClient.shared(base_url, api_key)
    if base_url is not None or api_key is not None:
        raise TypeError("pass either client or base_url/api_key, not both")
    return client
