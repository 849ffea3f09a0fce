"""Sandboxes: create, find, destroy, and run commands in them."""

# ruff: noqa: ASYNC109 -- `timeout` is the sandbox's lifetime or the command's own limit,
# enforced by the server; it is not a client-side deadline that asyncio.timeout could replace.

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any

from hutch.sdk._async import ports
from hutch.sdk._async.client import AsyncClient
from hutch.sdk._async.ports import ExposedPort
from hutch.sdk._exceptions import CommandTimeout, SandboxNotFound
from hutch.sdk._exec import ExecStreamDecoder, OutputCallback, OutputCollector, exec_request_body
from hutch.sdk._models import ExecEvent, ExecResult, SandboxInfo
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
        pids_limit: int | None = None,
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
            pids_limit: Maximum number of processes (the server's default when ``None``).
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
        pids_limit: int | None = None,
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
            timeout: See :meth:`create`.
            pids_limit: See :meth:`create`.
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
