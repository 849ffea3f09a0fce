"""Sandboxes: create, find, destroy, and run commands in them."""

# ruff: noqa: ASYNC109 -- `timeout` is the sandbox's lifetime or the command's own limit,
# enforced by the server; it is not a client-side deadline that asyncio.timeout could replace.

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Unpack, overload
from urllib.parse import urlsplit

from hutch._wire.sandbox_options import DEFAULTS, SandboxOptions
from hutch.sdk._async import processes as _processes
from hutch.sdk._async.buckets import Buckets, mount_body
from hutch.sdk._async.client import AsyncClient
from hutch.sdk._async.code import CodeInterpreter
from hutch.sdk._async.commands import Commands
from hutch.sdk._async.e2b_names import E2bCommands, e2b_create_names
from hutch.sdk._async.files import Files, WriteData
from hutch.sdk._async.ports import ExposedPort, Ports
from hutch.sdk._async.processes import AsyncProcess
from hutch.sdk._async.sessions import AsyncSession, create_session
from hutch.sdk._async.terminal import AsyncTerminal, attach_terminal, open_terminal
from hutch.sdk._code import Callback, CodeContext, CodeEvent, Execution
from hutch.sdk._exceptions import SandboxNotFound
from hutch.sdk._exec import OutputCallback
from hutch.sdk._files import FileInfo, GitCheckout, WatchEvent
from hutch.sdk._models import (
    Backup,
    BucketMount,
    ExecEvent,
    ExecResult,
    SandboxInfo,
    SandboxMetrics,
    Snapshot,
)
from hutch.sdk._requests import label_params, path_segment, sandbox_create_body


class AsyncSandbox:
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

    async def mount_bucket(
        self,
        bucket: str,
        mount_path: str,
        endpoint: str,
        credentials: Mapping[str, str],
        read_only: bool = False,
        prefix: str | None = None,
        *,
        region: str | None = None,
    ) -> BucketMount:
        """Mount an S3-compatible bucket inside the running sandbox; see :meth:`Buckets.mount`."""
        return await self.buckets.mount(
            bucket,
            mount_path,
            endpoint,
            credentials,
            read_only,
            prefix,
            region=region,
        )

    async def unmount_bucket(self, mount_path: str) -> None:
        """Unmount the bucket at ``mount_path``; see :meth:`Buckets.unmount`."""
        await self.buckets.unmount(mount_path)

    async def list_bucket_mounts(self) -> builtins.list[BucketMount]:
        """The buckets mounted in this sandbox."""
        return await self.buckets.list()

    async def expose_port(self, port: int, name: str | None = None) -> ExposedPort:
        """Make a port reachable at a preview URL; see :meth:`Ports.expose`."""
        return await self.ports.expose(port, name)

    async def wait_for_port(
        self, port: int, *, mode: str = "tcp", path: str = "/", timeout: float = 60.0
    ) -> int | None:
        """Wait until something listens on ``port`` inside the sandbox, whatever started it
        (``mode="http"``: until ``GET path`` answers 200-399; returns that status).

        Raises:
            ProcessTimeout: Nothing was ready within ``timeout`` seconds.
            InvalidRequest: ``port`` is outside 1-65535 or ``mode`` is unknown.
        """
        return await self.ports.wait_for_port(port, mode=mode, http_path=path, timeout=timeout)

    async def get_preview_url(self, port: int) -> str:
        """The preview URL of a port, exposing it first if needed (see `expose_port`)."""
        return (await self.expose_port(port)).url

    async def unexpose_port(self, port: int) -> None:
        """Close a port's preview URL; see :meth:`Ports.unexpose`."""
        await self.ports.unexpose(port)

    async def get_exposed_ports(self) -> builtins.list[ExposedPort]:
        """The sandbox's exposed ports with their preview URLs, by port number."""
        return await self.ports.list()

    async def get_network(self) -> dict[str, Any]:
        """The sandbox's egress policy and address; see :meth:`Ports.get_network`."""
        return await self.ports.get_network()

    async def set_network(
        self, network: str, allow: Sequence[str] = (), deny: Sequence[str] = ()
    ) -> dict[str, Any]:
        """Replace the sandbox's egress policy; see :meth:`Ports.set_network`."""
        return await self.ports.set_network(network, allow, deny)

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

    async def exec(
        self,
        command: str,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        timeout: float | None = None,
        stdin: bytes | str | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> ExecResult:
        """Run a shell command and wait for it; see :meth:`Commands.exec`."""
        return await self._commands.exec(
            command,
            cwd=cwd,
            env=env,
            user=user,
            timeout=timeout,
            stdin=stdin,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
        )

    async def run(
        self,
        program: str,
        args: Sequence[str] | None = None,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        timeout: float | None = None,
        stdin: bytes | str | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> ExecResult:
        """Run a program with arguments, no shell, and wait; see :meth:`Commands.run`."""
        return await self._commands.run(
            program,
            args,
            cwd=cwd,
            env=env,
            user=user,
            timeout=timeout,
            stdin=stdin,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
        )

    async def exec_stream(
        self,
        command: str,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        timeout: float | None = None,
        stdin: bytes | str | None = None,
    ) -> AsyncIterator[ExecEvent]:
        """Yield a shell command's output as it arrives; see :meth:`Commands.exec_stream`."""
        async for event in self._commands.exec_stream(
            command, cwd=cwd, env=env, user=user, timeout=timeout, stdin=stdin
        ):
            yield event

    async def run_stream(
        self,
        program: str,
        args: Sequence[str] | None = None,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        timeout: float | None = None,
        stdin: bytes | str | None = None,
    ) -> AsyncIterator[ExecEvent]:
        """Like :meth:`exec_stream` for a program and its arguments; see
        :meth:`Commands.run_stream`."""
        async for event in self._commands.run_stream(
            program, args, cwd=cwd, env=env, user=user, timeout=timeout, stdin=stdin
        ):
            yield event

    async def terminal(
        self,
        cols: int = 80,
        rows: int = 24,
        shell: str | None = None,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        idle_timeout: float | None = None,
    ) -> AsyncTerminal:
        """Open an interactive shell on a pseudo-terminal (see :class:`AsyncTerminal`).

        Args:
            cols: Width in columns (1-1000).
            rows: Height in rows (1-1000).
            shell: The shell, e.g. ``"bash"`` or ``"/bin/sh"``; ``None`` for the image's: its
                CMD when that is a shell (``CMD ["bash", "-l"]``), else bash, else sh.
            env: Extra environment variables (``TERM`` is ``xterm-256color``).
            cwd: Working directory (relative to the sandbox's workspace).
            idle_timeout: Seconds with no client attached after which it is closed.

        Raises:
            InvalidRequest: A bad size, or a shell the image does not have.
        """
        return await open_terminal(self, cols, rows, shell, dict(env or {}), cwd, idle_timeout)

    async def attach_terminal(self, terminal_id: str, since: int = 0) -> AsyncTerminal:
        """Reattach to a running terminal; output from byte ``since`` (what is kept) replays."""
        return await attach_terminal(self, terminal_id, since)

    async def list_terminals(self) -> builtins.list[dict[str, Any]]:
        """The sandbox's terminals (id, pid, size, exit_code, attached clients)."""
        body = await self.client.request("GET", f"{self._path}/terminals")
        return list(body["terminals"])

    # -- code interpreter (see sdk/_async/code.py) --------------------------------------------

    async def create_code_context(
        self,
        language: str = "python",
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CodeContext:
        """Start an interpreter whose state lasts between runs; see
        :meth:`CodeInterpreter.create_context`."""
        return await self.code.create_context(language, cwd=cwd, env=env)

    async def list_code_contexts(self) -> builtins.list[CodeContext]:
        """The sandbox's code contexts (default ones included)."""
        return await self.code.list_contexts()

    async def delete_code_context(self, context: CodeContext | str) -> None:
        """Stop a context's interpreter. Raises ``ContextNotFound`` if there is none."""
        await self.code.delete_context(context)

    async def restart_code_context(self, context: CodeContext | str) -> CodeContext:
        """Start a context's interpreter afresh (its state is lost); same id."""
        return await self.code.restart_context(context)

    async def run_code(
        self,
        code: str,
        *,
        context: CodeContext | str | None = None,
        language: str | None = None,
        timeout: float | None = None,
        on_stdout: Callback | None = None,
        on_stderr: Callback | None = None,
        on_result: Callback | None = None,
        on_error: Callback | None = None,
    ) -> Execution:
        """Run code in a context and gather what it produced; see :meth:`CodeInterpreter.run`."""
        return await self.code.run(
            code,
            context=context,
            language=language,
            timeout=timeout,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
            on_result=on_result,
            on_error=on_error,
        )

    async def run_code_stream(
        self,
        code: str,
        *,
        context: CodeContext | str | None = None,
        language: str | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[CodeEvent]:
        """Like :meth:`run_code`, yielding each output as it arrives, then an ``"end"``."""
        async for event in self.code.run_stream(
            code, context=context, language=language, timeout=timeout
        ):
            yield event

    # -- background processes (the bulk is in _async/processes.py) ---------------------------

    async def start_process(
        self,
        command: str | Sequence[str],
        process_id: str | None = None,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        stdin: bool = True,
        log_limit: int | None = None,
    ) -> AsyncProcess:
        """Start a background process; it outlives this program and the server's restarts.

        Args:
            command: A shell command string, or an argv list (no shell).
            process_id: Its id (letters, digits, ``-_.``); generated when ``None``.
            cwd: See :meth:`exec`.
            env: See :meth:`exec`.
            user: See :meth:`exec`.
            stdin: Give it a stdin pipe for :meth:`AsyncProcess.write_stdin` (else /dev/null).
            log_limit: Bytes of output kept (default 64 MiB); older output is dropped and
                reported as truncated.

        Raises:
            Conflict: A running process already has ``process_id``.
        """
        return await _processes.start_process(
            self.client,
            self._path,
            command,
            process_id=process_id,
            cwd=cwd,
            env=env,
            user=user,
            stdin=stdin,
            log_limit=log_limit,
        )

    async def list_processes(self) -> builtins.list[AsyncProcess]:
        """Every background process started in this sandbox (finished ones too)."""
        return await _processes.list_processes(self.client, self._path)

    async def get_process(self, process_id: str) -> AsyncProcess:
        """A background process by id. Raises ProcessNotFound if there is none."""
        return await _processes.get_process(self.client, self._path, process_id)

    async def kill_process(self, process_id: str, signal: str | int = "SIGTERM") -> None:
        """Send ``signal`` to a background process's whole tree."""
        process = await self.get_process(process_id)
        await process.kill(signal)

    async def kill_all_processes(self, signal: str | int = "SIGTERM") -> builtins.list[str]:
        """Send ``signal`` to every running background process; returns their ids."""
        return await _processes.kill_all_processes(self.client, self._path, signal)

    async def create_session(
        self,
        id: str | None = None,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> AsyncSession:
        """Start a persistent shell: state (``cd``, ``export``, functions) carries over
        between its :meth:`AsyncSession.exec` calls, which run one at a time.

        Raises:
            Conflict: A session with ``id`` exists.
        """
        return await create_session(self.client, self._path, id, cwd, env)

    async def delete_session(self, id: str) -> None:
        """End a session's shell. Raises SessionNotFound if there is none."""
        await self.client.request("DELETE", f"{self._path}/sessions/{path_segment(id)}")

    async def set_env_vars(self, env: Mapping[str, str | None]) -> None:
        """Set environment variables (``None`` unsets) for every new command and process."""
        await self.client.request("PUT", f"{self._path}/env", json={"env": dict(env)})

    # -- files (see Files for the documentation) ------------------------------------------------

    async def write_file(
        self, path: str, data: WriteData, *, mode: int | None = None, make_parents: bool = True
    ) -> int:
        """Write a file (streamed for file objects and iterators); see :meth:`Files.write`."""
        return await self.files.write(path, data, mode=mode, make_parents=make_parents)

    @overload
    async def read_file(
        self, path: str, *, text: Literal[False] = False, offset: int = 0, length: int | None = None
    ) -> bytes: ...

    @overload
    async def read_file(
        self, path: str, *, text: Literal[True], offset: int = 0, length: int | None = None
    ) -> str: ...

    async def read_file(
        self, path: str, *, text: bool = False, offset: int = 0, length: int | None = None
    ) -> bytes | str:
        """A file's bytes (or text with ``text=True``); see :meth:`Files.read`."""
        if text:
            return await self.files.read(path, text=True, offset=offset, length=length)
        return await self.files.read(path, text=False, offset=offset, length=length)

    async def read_file_stream(
        self, path: str, *, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """Yield a file's bytes as they arrive; see :meth:`Files.read_stream`."""
        async for chunk in self.files.read_stream(path, offset=offset, length=length):
            yield chunk

    async def mkdir(self, path: str, *, recursive: bool = False, mode: int | None = None) -> str:
        """Create a directory; see :meth:`Files.mkdir`."""
        return await self.files.mkdir(path, recursive=recursive, mode=mode)

    async def delete_file(self, path: str) -> None:
        """Delete a file; see :meth:`Files.delete`."""
        await self.files.delete(path)

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        """Delete a file or directory; see :meth:`Files.remove`."""
        await self.files.remove(path, recursive=recursive)

    async def rename_file(self, source: str, destination: str, *, overwrite: bool = True) -> str:
        """Rename a path; see :meth:`Files.rename`."""
        return await self.files.rename(source, destination, overwrite=overwrite)

    async def move_file(self, source: str, destination: str, *, overwrite: bool = True) -> str:
        """Move a path (into a directory when ``destination`` ends with ``/``)."""
        return await self.files.move(source, destination, overwrite=overwrite)

    async def list_files(
        self, path: str = ".", *, recursive: bool = False, include_hidden: bool = False
    ) -> builtins.list[FileInfo]:
        """A directory's entries; see :meth:`Files.list`."""
        return await self.files.list(path, recursive=recursive, include_hidden=include_hidden)

    async def exists(self, path: str) -> bool:
        """Whether anything is at ``path``."""
        return await self.files.exists(path)

    async def stat(self, path: str) -> FileInfo:
        """What is at ``path``; see :meth:`Files.stat`."""
        return await self.files.stat(path)

    async def watch(
        self,
        path: str = ".",
        *,
        recursive: bool = True,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> AsyncIterator[WatchEvent]:
        """Yield changes under a directory until you stop iterating; see :meth:`Files.watch`."""
        async for event in self.files.watch(
            path, recursive=recursive, include=include, exclude=exclude
        ):
            yield event

    async def git_checkout(
        self,
        url: str,
        *,
        branch: str | None = None,
        target_dir: str | None = None,
        depth: int | None = None,
    ) -> GitCheckout:
        """Clone a git repository into the sandbox; see :meth:`Files.git_checkout`."""
        return await self.files.git_checkout(url, branch=branch, target_dir=target_dir, depth=depth)


def _client_for(
    client: AsyncClient | None, base_url: str | None, api_key: str | None
) -> AsyncClient:
    if client is None:
        return AsyncClient.shared(base_url, api_key)
    if base_url is not None or api_key is not None:
        raise TypeError("pass either client or base_url/api_key, not both")
    return client
