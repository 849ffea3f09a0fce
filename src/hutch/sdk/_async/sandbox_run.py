"""A sandbox's methods that run things in it: commands, terminals, code, background processes,
sessions. `AsyncSandbox` inherits them; kept apart so that sandbox.py holds the sandbox's own
lifecycle. The work is done by commands.py, terminal.py, code.py, processes.py, sessions.py.
"""

# ruff: noqa: ASYNC109 -- `timeout` is the command's own limit, enforced by the server.

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from hutch.sdk._async import processes as _processes
from hutch.sdk._async.client import AsyncClient
from hutch.sdk._async.code import CodeInterpreter
from hutch.sdk._async.commands import Commands
from hutch.sdk._async.processes import AsyncProcess
from hutch.sdk._async.sessions import AsyncSession, create_session
from hutch.sdk._async.terminal import AsyncTerminal, attach_terminal, open_terminal
from hutch.sdk._code import Callback, CodeContext, CodeEvent, Execution
from hutch.sdk._exec import OutputCallback
from hutch.sdk._models import ExecEvent, ExecResult
from hutch.sdk._requests import path_segment


class RunMethods:
    """Running things in the sandbox (mixed into `AsyncSandbox`, which sets these fields)."""

    id: str
    client: AsyncClient
    code: CodeInterpreter
    _path: str
    _commands: Commands

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

    async def restart_code_context(self, context: CodeContext | str = "default") -> CodeContext:
        """Start a context's interpreter afresh (its state is lost); same id. Without one:
        the default python context (which also restarts by itself when its kernel died)."""
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
        timeout: float | None = None,
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
            timeout: Seconds it may run: then it and its children are killed (SIGKILL) by
                the sandbox itself, whether or not anyone is connected, and
                ``p.timed_out`` says so. ``None``: no limit.

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
            timeout=timeout,
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
