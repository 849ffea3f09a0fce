"""Sessions: persistent shells in a sandbox (``cd``, ``export``, functions persist)."""

# ruff: noqa: ASYNC109 -- `timeout` is the command's own limit, enforced in the sandbox.

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from hutch.sdk._exceptions import CommandTimeout
from hutch.sdk._exec import ExecStreamDecoder, OutputCallback, OutputCollector
from hutch.sdk._models import ExecEvent, ExecResult
from hutch.sdk._requests import path_segment

if TYPE_CHECKING:
    from hutch.sdk._async.client import AsyncClient


class AsyncSession:
    """A persistent shell in a sandbox (see :meth:`AsyncSandbox.create_session`).

    Commands run one at a time in the same shell, so ``cd``, ``export``, shell functions and
    aliases carry over to the next :meth:`exec`. A command that times out is interrupted and
    the session stays usable.

    Attributes:
        id: The session's id.
    """

    def __init__(self, client: AsyncClient, sandbox_path: str, session_id: str) -> None:
        self.client = client
        self.id = session_id
        self._sandbox_path = sandbox_path
        self._path = f"{sandbox_path}/sessions/{path_segment(session_id)}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r})"

    async def exec(
        self,
        command: str,
        *,
        timeout: float | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> ExecResult:
        """Run a shell command in the session and wait for it.

        Args:
            command: The command line; it may change the session's directory and variables.
            timeout: Seconds after which the command (not the session) is interrupted.
            on_stdout: Called with each chunk of stdout, decoded as UTF-8.
            on_stderr: Called with each chunk of stderr, decoded as UTF-8.

        Raises:
            CommandTimeout: The command ran past ``timeout``; ``.result`` holds its output.
            SessionNotFound: The session does not exist (any more).
        """
        collector = OutputCollector(on_stdout, on_stderr)
        async for event in self.exec_stream(command, timeout=timeout):
            collector.add(event)
        result = collector.result()
        if result.timed_out:
            raise CommandTimeout(
                f"the command ran past its timeout of {timeout:g}s and was interrupted; the "
                "session is still usable; what it wrote is in the exception's .result",
                result=result,
            )
        return result

    async def exec_stream(
        self, command: str, *, timeout: float | None = None
    ) -> AsyncIterator[ExecEvent]:
        """Run a command in the session, yielding its output as it arrives, then its exit."""
        body = {"command": command, "timeout": timeout}
        decoder = ExecStreamDecoder()
        async with self.client.stream(
            "POST", f"{self._path}/exec/stream", json=body, limit=timeout
        ) as chunks:
            async for chunk in chunks:
                for event in decoder.feed(chunk):
                    yield event
        decoder.close()

    async def delete(self) -> None:
        """End the session's shell (processes started elsewhere keep running)."""
        await self.client.request("DELETE", self._path)


async def create_session(
    client: AsyncClient,
    sandbox_path: str,
    session_id: str | None,
    cwd: str | None,
    env: Mapping[str, str] | None,
) -> AsyncSession:
    body: dict[str, Any] = {"id": session_id, "cwd": cwd, "env": dict(env or {})}
    info = await client.request("POST", f"{sandbox_path}/sessions", json=body)
    return AsyncSession(client, sandbox_path, str(info["id"]))
