"""Commands: run a shell command or a program in the sandbox, collected or streamed.

``sb.commands.exec(...)`` is ``sb.exec(...)``; the sandbox's methods hand over to these.
"""

# ruff: noqa: ASYNC109 -- `timeout` is the command's own limit, enforced by the server; it is
# not a client-side deadline that asyncio.timeout could replace.

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from hutch.sdk._async.client import AsyncClient
from hutch.sdk._exceptions import CommandTimeout
from hutch.sdk._exec import ExecStreamDecoder, OutputCallback, OutputCollector, exec_request_body
from hutch.sdk._models import ExecEvent, ExecResult


class Commands:
    """Shell commands and programs in one sandbox (``sb.commands``)."""

    def __init__(self, client: AsyncClient, sandbox_path: str) -> None:
        self._client = client
        self._path = sandbox_path

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
        async with self._client.stream("POST", path, json=body, limit=body["timeout"]) as chunks:
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


def _argv(program: str, args: Sequence[str] | None) -> list[str]:
    if isinstance(args, str):
        raise TypeError("args must be a list of strings, e.g. run('python', ['-c', 'print(1)'])")
    return [program, *(args or ())]
