"""Sandboxes: create, find, destroy, and run commands in them."""

# ruff: noqa: ASYNC109 -- `timeout` is the sandbox's lifetime or the command's own limit,
# enforced by the server; it is not a client-side deadline that asyncio.timeout could replace.

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, overload
from urllib.parse import urlsplit

from hutch.sdk._async import buckets as _buckets
from hutch.sdk._async import ports
from hutch.sdk._async import processes as _processes
from hutch.sdk._async.client import AsyncClient
from hutch.sdk._async.code import CodeInterpreter
from hutch.sdk._async.e2b_names import Commands, e2b_create_names
from hutch.sdk._async.files import Files, WriteData
from hutch.sdk._async.ports import ExposedPort
from hutch.sdk._async.processes import AsyncProcess
from hutch.sdk._async.sessions import AsyncSession, create_session
from hutch.sdk._async.terminal import AsyncTerminal, attach_terminal, open_terminal
from hutch.sdk._code import Callback, CodeContext, CodeEvent, Execution
from hutch.sdk._exceptions import CommandTimeout, SandboxNotFound
from hutch.sdk._exec import ExecStreamDecoder, OutputCallback, OutputCollector, exec_request_body
from hutch.sdk._files import FileInfo, GitCheckout, WatchEvent
from hutch.sdk._models import BucketMount, ExecEvent, ExecResult, SandboxInfo
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

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r})"

    @classmethod
    async def create(
        cls,
        image: str = "default",
        env: Mapping[str, str] | None = None,
        cpu: float = 1.0,
        memory_mb: int = 1024,
        disk_mb: int = 4096,
        network: str = "none",
        sleep_after: str | float | None = None,
        keep_alive: bool = False,
        runtime: str = "runc",
        labels: Mapping[str, str] | None = None,
        timeout: float | None = None,
        *,
        secrets: Mapping[str, str] | None = None,
        egress_secrets: Sequence[Mapping[str, str]] | None = None,
        start_entrypoint: bool = False,
        pids_limit: int | None = None,
        network_allow: Sequence[str] = (),
        network_deny: Sequence[str] = (),
        template: str | None = None,
        metadata: Mapping[str, str] | None = None,
        envs: Mapping[str, str] | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        client: AsyncClient | None = None,
    ) -> AsyncSandbox:
        """Create a new sandbox and wait until it runs.

        Args:
            image: The image to run, e.g. ``"default"`` (Debian with Python, Node and git).
            env: Environment variables for every command in the sandbox.
            cpu: CPUs it may use (fractions allowed).
            memory_mb: Memory limit in MiB.
            disk_mb: Limit of what it may write to its filesystem, in MiB.
            network: ``"none"`` (no network) or ``"internet"`` (outbound access).
            sleep_after: Idle time after which it is frozen (e.g. ``"10m"``); ``None`` for never.
            keep_alive: Never freeze it for idleness.
            runtime: ``"runc"``, or ``"gvisor"`` for a hardened kernel boundary.
            labels: Labels to find it by with :meth:`list`.
            timeout: Maximum lifetime in seconds; ``None`` lives until destroyed.
            secrets: Environment variables for every process (e.g. ``{"ANTHROPIC_API_KEY":
                ...}``), stored encrypted by the server and never returned by any API. Any
                process in the sandbox can read them: give only what its code may see.
            egress_secrets: Secrets injected as a header by Hutch's egress proxy instead, e.g.
                ``[{"host": "api.anthropic.com", "header": "x-api-key", "secret":
                "ANTHROPIC_API_KEY"}]`` (the value stays in ``secrets``): the sandbox gets the
                placeholder ``hutch-egress-injected`` and ``ANTHROPIC_BASE_URL`` pointing at the
                proxy, never the key. Optional keys: ``prefix`` (``"Bearer "``),
                ``base_url_env``. See docs/agents.md.
            pids_limit: Maximum number of processes (the server's default when ``None``).
            network_allow: CIDRs the sandbox may reach even with ``network="none"``
                (e.g. ``["10.0.0.0/8"]``); the same as :meth:`set_network`'s ``allow``.
            network_deny: CIDRs it may never reach; wins over ``network_allow``.
            start_entrypoint: Start the image's ENTRYPOINT+CMD (what ``docker run IMAGE``
                runs) as the background process ``"entrypoint"``, with the image's user, env
                and working directory: ``sb.get_process("entrypoint")`` gives its logs. An
                image without one raises ``InvalidRequest`` (``image_has_no_entrypoint``).
            template: E2B's name for ``image``.
            metadata: E2B's name for ``labels`` (merged with them).
            envs: E2B's name for ``env`` (merged with it).
            base_url: The server URL; defaults to ``$HUTCH_URL``, then ``http://127.0.0.1:7070``.
            api_key: The API key; defaults to ``$HUTCH_API_KEY``.
            client: A client to use instead of the shared one for ``base_url``/``api_key``.

        Returns:
            The running sandbox.

        Raises:
            InvalidRequest: An option is out of range; the error's ``fields`` say which.
            ImageNotFound: The image is not in the server's store.
            AuthenticationError: The API key is missing or wrong.
            HutchConnectionError: The server could not be reached.
        """
        client = _client_for(client, base_url, api_key)
        image, labels, env = e2b_create_names(
            image, labels, env, template=template, metadata=metadata, envs=envs
        )
        body = sandbox_create_body(
            image=image,
            env=env,
            cpu=cpu,
            memory_mb=memory_mb,
            disk_mb=disk_mb,
            pids_limit=pids_limit,
            network=network,
            sleep_after=sleep_after,
            keep_alive=keep_alive,
            runtime=runtime,
            labels=labels,
            timeout=timeout,
            secrets=secrets,
            egress_secrets=egress_secrets,
            network_allow=network_allow,
            network_deny=network_deny,
            start_entrypoint=start_entrypoint,
        )
        info = SandboxInfo.from_json(await client.request("POST", "/v1/sandboxes", json=body))
        return cls(info.id, client=client, info=info)

    @classmethod
    async def get_or_create(
        cls,
        id: str,
        image: str = "default",
        env: Mapping[str, str] | None = None,
        cpu: float = 1.0,
        memory_mb: int = 1024,
        disk_mb: int = 4096,
        network: str = "none",
        sleep_after: str | float | None = None,
        keep_alive: bool = False,
        runtime: str = "runc",
        labels: Mapping[str, str] | None = None,
        timeout: float | None = None,
        *,
        secrets: Mapping[str, str] | None = None,
        egress_secrets: Sequence[Mapping[str, str]] | None = None,
        start_entrypoint: bool = False,
        pids_limit: int | None = None,
        network_allow: Sequence[str] = (),
        network_deny: Sequence[str] = (),
        base_url: str | None = None,
        api_key: str | None = None,
        client: AsyncClient | None = None,
    ) -> AsyncSandbox:
        """The sandbox with this id, created with these options if it does not exist yet.

        For one sandbox per user or per task: ``get_or_create(f"user-{user_id}")``. When the
        sandbox exists already, the options are ignored.

        Args:
            id: 1-63 characters of ``[a-z0-9-]``, starting and ending alphanumeric.
            image: As for :meth:`create`; the other options too.
            env: See :meth:`create`.
            cpu: See :meth:`create`.
            memory_mb: See :meth:`create`.
            disk_mb: See :meth:`create`.
            network: See :meth:`create`.
            sleep_after: See :meth:`create`.
            keep_alive: See :meth:`create`.
            runtime: See :meth:`create`.
            labels: See :meth:`create`.
            secrets: See :meth:`create`.
            egress_secrets: See :meth:`create`.
            start_entrypoint: See :meth:`create` (only when the sandbox is created).
            timeout: See :meth:`create`.
            pids_limit: See :meth:`create`.
            network_allow: See :meth:`create`.
            network_deny: See :meth:`create`.
            base_url: See :meth:`create`.
            api_key: See :meth:`create`.
            client: See :meth:`create`.

        Raises:
            InvalidRequest: The id is not valid (``invalid_sandbox_id``) or an option is out
                of range.
            HutchConnectionError: The server could not be reached.
        """
        client = _client_for(client, base_url, api_key)
        body = sandbox_create_body(
            id=id,
            image=image,
            env=env,
            cpu=cpu,
            memory_mb=memory_mb,
            disk_mb=disk_mb,
            pids_limit=pids_limit,
            network=network,
            sleep_after=sleep_after,
            keep_alive=keep_alive,
            runtime=runtime,
            labels=labels,
            timeout=timeout,
            secrets=secrets,
            egress_secrets=egress_secrets,
            network_allow=network_allow,
            network_deny=network_deny,
            start_entrypoint=start_entrypoint,
        )
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
    def commands(self) -> Commands:
        """E2B's ``sb.commands``: ``run(cmd, background=...)``, ``list()``, ``kill(id)``."""
        return Commands(self)

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
        """Mount an S3-compatible bucket at ``mount_path`` inside the running sandbox.

        The mount is made on the host: the credentials never enter the sandbox. A file written
        there is uploaded as soon as it is closed; objects other clients write show up within
        about two seconds.

        Args:
            bucket: The bucket's name.
            mount_path: An absolute directory path in the sandbox (created if missing).
            endpoint: The S3 endpoint URL, e.g. ``"https://s3.us-east-1.amazonaws.com"``.
            credentials: ``{"access_key_id": ..., "secret_access_key": ...}`` (and optionally
                ``"session_token"``; camelCase keys are accepted too).
            read_only: Refuse writes inside the sandbox.
            prefix: Mount only the keys under this prefix (e.g. ``"datasets/2024"``).
            region: The bucket's region, for servers that need it.

        Raises:
            BucketMountFailed: The bucket could not be reached (wrong credentials, unknown
                bucket, unreachable endpoint); nothing was mounted.
            Conflict: Something is already mounted there (``mount_path_busy``), or the sandbox
                is not running.
            InvalidRequest: ``mount_path`` is not absolute, or another value is malformed.
        """
        body = _buckets.mount_body(
            bucket,
            mount_path,
            endpoint=endpoint,
            credentials=credentials,
            read_only=read_only,
            prefix=prefix,
            region=region,
        )
        return await _buckets.mount_bucket(self.client, self._path, body)

    async def unmount_bucket(self, mount_path: str) -> None:
        """Unmount the bucket at ``mount_path``, after uploading what was written to it.

        Raises:
            NotFoundError: No bucket is mounted there (``bucket_not_mounted``).
        """
        await _buckets.unmount_bucket(self.client, self._path, mount_path)

    async def list_bucket_mounts(self) -> builtins.list[BucketMount]:
        """The buckets mounted in this sandbox."""
        return await _buckets.list_mounts(self.client, self._path)

    async def expose_port(self, port: int, name: str | None = None) -> ExposedPort:
        """Make a port of the sandbox reachable at a preview URL.

        The URL is ``http://{port}-{sandbox_id}-{token}.{preview_domain}:{server_port}/``;
        anyone who has it can open it. Exposing a port twice returns the same URL.

        Args:
            port: The TCP port a server in the sandbox listens on (1-65535, any address).
            name: An optional label, returned by `get_exposed_ports`.

        Returns:
            The exposed port with its URL.

        Raises:
            InvalidRequest: The port is out of range or reserved (code ``invalid_port``).
            SandboxNotFound: The sandbox does not exist.
        """
        return await ports.expose_port(self.client, self._path, port, name)

    async def wait_for_port(
        self, port: int, *, mode: str = "tcp", path: str = "/", timeout: float = 60.0
    ) -> int | None:
        """Wait until something listens on ``port`` inside the sandbox, whatever started it
        (``mode="http"``: until ``GET path`` answers 200-399; returns that status).

        Raises:
            ProcessTimeout: Nothing was ready within ``timeout`` seconds.
            InvalidRequest: ``port`` is outside 1-65535 or ``mode`` is unknown.
        """
        return await ports.wait_for_port(
            self.client, self._path, port, mode=mode, http_path=path, timeout=timeout
        )

    async def get_preview_url(self, port: int) -> str:
        """The preview URL of a port, exposing it first if needed (see `expose_port`)."""
        return (await self.expose_port(port)).url

    async def unexpose_port(self, port: int) -> None:
        """Close a port's preview URL: it answers 404 at once, open connections close.

        Raises:
            APIError: The port is not exposed (code ``port_not_exposed``).
        """
        await ports.unexpose_port(self.client, self._path, port)

    async def get_exposed_ports(self) -> builtins.list[ExposedPort]:
        """The sandbox's exposed ports with their preview URLs, by port number."""
        return await ports.get_exposed_ports(self.client, self._path)

    async def get_network(self) -> dict[str, Any]:
        """The sandbox's egress policy and address:
        ``{"network", "network_allow", "network_deny", "address"}``."""
        return await ports.get_network(self.client, self._path)

    async def set_network(
        self, network: str, allow: Sequence[str] = (), deny: Sequence[str] = ()
    ) -> dict[str, Any]:
        """Replace the sandbox's egress policy; effective for its next packet.

        Args:
            network: ``"none"`` (no outbound connections) or ``"internet"``.
            allow: CIDRs reachable even with ``"none"``.
            deny: CIDRs never reachable (wins over `allow`).

        Returns:
            The policy now in force and the sandbox's address:
            ``{"network", "network_allow", "network_deny", "address"}``.
        """
        return await ports.set_network(self.client, self._path, network, allow, deny)

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
        """Run a shell command (bash, or sh where the image has no bash) and wait for it.

        Output is streamed: ``on_stdout``/``on_stderr`` are called with each chunk as it
        arrives.

        Args:
            command: The shell command line, e.g. ``"echo hi | tr a-z A-Z"``.
            cwd: Working directory (the image's when ``None``).
            env: Environment variables added for this command.
            user: User to run as (the image's when ``None``).
            timeout: Seconds after which the command and all its children are killed.
            stdin: Bytes (or text, sent as UTF-8) fed to the command's stdin; ``None`` gives
                it ``/dev/null``.
            on_stdout: Called with each chunk of stdout, decoded as UTF-8.
            on_stderr: Called with each chunk of stderr, decoded as UTF-8.

        Returns:
            How the command ended and what it wrote. A failing command is not an error:
            check ``result.exit_code`` or ``result.success`` (127: command not found).

        Raises:
            CommandTimeout: The command ran past ``timeout``; ``.result`` holds its output.
            SandboxNotFound: The sandbox does not exist.
            HutchConnectionError: The server could not be reached, or the stream broke.
        """
        if not isinstance(command, str):
            raise TypeError("exec() takes a shell command string; use run(program, args) for argv")
        body = exec_request_body(
            command=command, cwd=cwd, env=env, user=user, timeout=timeout, stdin=stdin
        )
        return await self._collect(body, on_stdout, on_stderr)

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
        """Run a program with arguments, no shell in between, and wait for it.

        Args:
            program: The program, looked up on the sandbox's ``PATH``, e.g. ``"python"``.
            args: Its arguments, passed as they are (no quoting needed).
            cwd: See :meth:`exec`.
            env: See :meth:`exec`.
            user: See :meth:`exec`.
            timeout: See :meth:`exec`.
            stdin: See :meth:`exec`.
            on_stdout: See :meth:`exec`.
            on_stderr: See :meth:`exec`.

        Returns:
            How the program ended and what it wrote (exit code 127 if it was not found).

        Raises:
            CommandTimeout: The program ran past ``timeout``; ``.result`` holds its output.
            SandboxNotFound: The sandbox does not exist.
            HutchConnectionError: The server could not be reached, or the stream broke.
        """
        body = exec_request_body(
            argv=_argv(program, args), cwd=cwd, env=env, user=user, timeout=timeout, stdin=stdin
        )
        return await self._collect(body, on_stdout, on_stderr)

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
        """Run a shell command and yield its output as it arrives, then its exit.

        A timeout does not raise here: the last event has ``timed_out`` set (and exit code
        124). Stopping the iteration early closes the stream.

        Args:
            command: The shell command line.
            cwd: See :meth:`exec`.
            env: See :meth:`exec`.
            user: See :meth:`exec`.
            timeout: See :meth:`exec`.
            stdin: See :meth:`exec`.

        Yields:
            ``"stdout"``/``"stderr"`` events with the bytes, then one ``"exit"`` event.

        Raises:
            SandboxNotFound: The sandbox does not exist.
            HutchConnectionError: The server could not be reached, or the stream broke.
        """
        if not isinstance(command, str):
            raise TypeError("exec_stream() takes a shell command string; use run_stream() for argv")
        body = exec_request_body(
            command=command, cwd=cwd, env=env, user=user, timeout=timeout, stdin=stdin
        )
        async for event in self._stream(body):
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
        """Like :meth:`exec_stream` for a program and its arguments, with no shell.

        Args:
            program: See :meth:`run`.
            args: See :meth:`run`.
            cwd: See :meth:`exec`.
            env: See :meth:`exec`.
            user: See :meth:`exec`.
            timeout: See :meth:`exec`.
            stdin: See :meth:`exec`.

        Yields:
            ``"stdout"``/``"stderr"`` events with the bytes, then one ``"exit"`` event.
        """
        body = exec_request_body(
            argv=_argv(program, args), cwd=cwd, env=env, user=user, timeout=timeout, stdin=stdin
        )
        async for event in self._stream(body):
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

    @property
    def _code(self) -> CodeInterpreter:
        return CodeInterpreter(self.client, self._path)

    async def create_code_context(
        self,
        language: str = "python",
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CodeContext:
        """Start an interpreter whose state (variables, imports, functions) lasts between runs.

        Args:
            language: ``"python"`` (a Jupyter kernel), ``"javascript"`` or ``"typescript"``
                (node).
            cwd: Its working directory (relative paths are under ``/workspace``).
            env: Environment variables for it.

        Raises:
            InvalidRequest: Unknown language (``unknown_language``), or the image lacks the
                interpreter (``language_unavailable``).
        """
        return await self._code.create_context(language, cwd=cwd, env=env)

    async def list_code_contexts(self) -> builtins.list[CodeContext]:
        """The sandbox's code contexts (default ones included)."""
        return await self._code.list_contexts()

    async def delete_code_context(self, context: CodeContext | str) -> None:
        """Stop a context's interpreter. Raises ``ContextNotFound`` if there is none."""
        await self._code.delete_context(context)

    async def restart_code_context(self, context: CodeContext | str) -> CodeContext:
        """Start a context's interpreter afresh (its state is lost); same id."""
        return await self._code.restart_context(context)

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
        """Run code in a context and gather what it produced; callbacks fire live.

        Args:
            code: The code (a cell: the last expression's value is a result).
            context: The context; ``None`` uses the default context of ``language``.
            language: For the default context (``"python"`` when ``None``).
            timeout: Seconds after which the run is interrupted (``KeyboardInterrupt`` in
                Python); the context and its state survive. ``status`` is then ``"timeout"``.
            on_stdout: Called with each chunk of stdout (text) as it is printed.
            on_stderr: Called with each chunk of stderr.
            on_result: Called with each :class:`Result` (display, figure, last value).
            on_error: Called with the :class:`ExecutionError` if the code raises.

        Returns:
            The :class:`Execution`: ``results``, ``logs``, ``error``, ``status``. An exception
            in the code is not raised: see ``.error``.

        Raises:
            ContextNotFound: No such context.
            InvalidRequest: Unknown language, or the image lacks the interpreter.
        """
        return await self._code.run(
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
        async for event in self._code.run_stream(
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

    async def _stream(self, body: dict[str, Any]) -> AsyncIterator[ExecEvent]:
        decoder = ExecStreamDecoder()
        path = f"{self._path}/exec/stream"
        async with self.client.stream("POST", path, json=body, limit=body["timeout"]) as chunks:
            async for chunk in chunks:
                # NB: read on to the end of the body after the result, so that the
                # connection goes back to the pool instead of being dropped.
                for event in decoder.feed(chunk):
                    yield event
        decoder.close()

    async def _collect(
        self,
        body: dict[str, Any],
        on_stdout: OutputCallback | None,
        on_stderr: OutputCallback | None,
    ) -> ExecResult:
        collector = OutputCollector(on_stdout, on_stderr)
        async for event in self._stream(body):
            collector.add(event)
        result = collector.result()
        if result.timed_out:
            limit = body["timeout"]
            raise CommandTimeout(
                f"the command ran past its timeout{f' of {limit:g}s' if limit else ''} and was "
                "killed with its process tree; what it wrote is in the exception's .result",
                result=result,
            )
        return result


def _client_for(
    client: AsyncClient | None, base_url: str | None, api_key: str | None
) -> AsyncClient:
    if client is None:
        return AsyncClient.shared(base_url, api_key)
    if base_url is not None or api_key is not None:
        raise TypeError("pass either client or base_url/api_key, not both")
    return client


def _argv(program: str, args: Sequence[str] | None) -> list[str]:
    if isinstance(args, str):
        raise TypeError("args must be a list of strings, e.g. run('python', ['-c', 'print(1)'])")
    return [program, *(args or ())]
