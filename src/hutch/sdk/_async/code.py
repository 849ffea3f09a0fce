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
    """Code contexts and runs of one sandbox (``sb.code``; the sandbox's ``*_code*`` methods)."""

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
        body = {"language": language, "cwd": cwd, "env": dict(env or {})}
        data = await self._client.request("POST", f"{self._path}/contexts", json=body)
        return CodeContext.from_json(data)

    async def list_contexts(self) -> builtins.list[CodeContext]:
        """The sandbox's code contexts (default ones included)."""
        data = await self._client.request("GET", f"{self._path}/contexts")
        return [CodeContext.from_json(c) for c in data["contexts"]]

    async def delete_context(self, context: CodeContext | str) -> None:
        """Stop a context's interpreter. Raises ``ContextNotFound`` if there is none."""
        path = f"{self._path}/contexts/{path_segment(_context_id(context))}"
        await self._client.request("DELETE", path)

    async def restart_context(self, context: CodeContext | str = "default") -> CodeContext:
        """Start a context's interpreter afresh (its state is lost); same id. ``"default"``:
        the default python context."""
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
        """Like :meth:`run_code`, yielding each output as it arrives, then an ``"end"``."""
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
        execution = Execution()
        async for event in self.run_stream(
            code, context=context, language=language, timeout=timeout
        ):
            dispatch(event, on_stdout, on_stderr, on_result, on_error)
            if event.execution is not None:
                execution = event.execution
        return execution
