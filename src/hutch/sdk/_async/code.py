"""The code interpreter, as reached through a sandbox: contexts and runs."""

# ruff: noqa: ASYNC109 -- `timeout` is the run's own limit, enforced inside the sandbox.

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Mapping
from typing import Any

from hutch.sdk._async.client import AsyncClient
from hutch.sdk._code import Callback, CodeContext, CodeEvent, CodeRunDecoder, Execution, dispatch
from hutch.sdk._requests import path_segment

ContextRef = CodeContext | str | None


def _context_id(context: CodeContext | str) -> str:
    return context.id if isinstance(context, CodeContext) else context


class CodeInterpreter:
    """Code contexts and runs of one sandbox; reached as the sandbox's methods."""

    def __init__(self, client: AsyncClient, sandbox_path: str) -> None:
        self._client = client
        self._path = f"{sandbox_path}/code"

    async def create_context(
        self,
        language: str = "python",
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CodeContext:
        body = {"language": language, "cwd": cwd, "env": dict(env or {})}
        data = await self._client.request("POST", f"{self._path}/contexts", json=body)
        return CodeContext.from_json(data)

    async def list_contexts(self) -> builtins.list[CodeContext]:
        data = await self._client.request("GET", f"{self._path}/contexts")
        return [CodeContext.from_json(c) for c in data["contexts"]]

    async def delete_context(self, context: CodeContext | str) -> None:
        path = f"{self._path}/contexts/{path_segment(_context_id(context))}"
        await self._client.request("DELETE", path)

    async def restart_context(self, context: CodeContext | str) -> CodeContext:
        path = f"{self._path}/contexts/{path_segment(_context_id(context))}/restart"
        return CodeContext.from_json(await self._client.request("POST", path))

    async def run_stream(
        self,
        code: str,
        *,
        context: ContextRef = None,
        language: str | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[CodeEvent]:
        if not isinstance(code, str):
            raise TypeError("code must be a string")
        body: dict[str, Any] = {
            "code": code,
            "context_id": None if context is None else _context_id(context),
            "language": language,
            "timeout": timeout,
        }
        decoder = CodeRunDecoder()
        path = f"{self._path}/run/stream"
        limit = None if timeout is None else timeout + 30.0
        async with self._client.stream("POST", path, json=body, limit=limit) as chunks:
            async for chunk in chunks:
                for event in decoder.feed(chunk):
                    yield event
        decoder.close()

    async def run(
        self,
        code: str,
        *,
        context: ContextRef = None,
        language: str | None = None,
        timeout: float | None = None,
        on_stdout: Callback | None = None,
        on_stderr: Callback | None = None,
        on_result: Callback | None = None,
        on_error: Callback | None = None,
    ) -> Execution:
        execution = Execution()
        async for event in self.run_stream(
            code, context=context, language=language, timeout=timeout
        ):
            dispatch(event, on_stdout, on_stderr, on_result, on_error)
            if event.execution is not None:
                execution = event.execution
        return execution
