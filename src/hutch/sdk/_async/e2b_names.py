"""The names an E2B user reaches for, as aliases of Hutch's own calls (no second implementation).

=====================================  ==============================================
E2B                                    Hutch
=====================================  ==============================================
``Sandbox.create(template=...)``       ``Sandbox.create(image=...)``
``Sandbox.create(metadata={...})``     ``Sandbox.create(labels={...})``
``Sandbox.create(envs={...})``         ``Sandbox.create(env={...})``
``sb.sandbox_id``                      ``sb.id``
``sb.kill()``                          ``sb.destroy()``
``sb.is_running()``                    ``sb.info().status == "running"``
``sb.get_host(port)``                  the host part of ``sb.get_preview_url(port)``
``sb.commands.run(cmd)``               ``sb.exec(cmd)``
``sb.commands.run(cmd, background=True)``  ``sb.start_process(cmd)``
``sb.commands.list()`` / ``kill(id)``  ``sb.list_processes()`` / ``sb.kill_process(id)``
``sb.files.read(path)`` (text)         ``sb.read_file(path, text=True)``
=====================================  ==============================================

docs/e2b-names.md has the table with the differences that remain.
"""

# ruff: noqa: ASYNC109 -- `timeout` is the command's own limit, enforced by the server.

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Literal, Protocol, overload

from hutch.sdk._async.processes import AsyncProcess
from hutch.sdk._exec import OutputCallback
from hutch.sdk._models import ExecResult


class _Sandbox(Protocol):
    """What the facade calls (AsyncSandbox has it; typed here so that neither module imports
    the other)."""

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
    ) -> ExecResult: ...

    async def start_process(
        self,
        command: str,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        timeout: float | None = None,
    ) -> AsyncProcess: ...

    async def list_processes(self) -> builtins.list[AsyncProcess]: ...

    async def kill_process(self, process_id: str, signal: str | int = "SIGTERM") -> None: ...


class E2bCommands:
    """``sb.commands``: E2B's command calls, run by :meth:`AsyncSandbox.exec` and
    :meth:`AsyncSandbox.start_process`.

    Unlike E2B's, a failing command does not raise: check ``result.exit_code``.
    """

    def __init__(self, sandbox: _Sandbox) -> None:
        self._sandbox = sandbox

    @overload
    async def run(
        self,
        cmd: str,
        background: Literal[False] = False,
        envs: Mapping[str, str] | None = None,
        user: str | None = None,
        cwd: str | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        stdin: bytes | str | None = None,
        timeout: float | None = None,
    ) -> ExecResult: ...

    @overload
    async def run(
        self,
        cmd: str,
        background: Literal[True],
        envs: Mapping[str, str] | None = None,
        user: str | None = None,
        cwd: str | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        stdin: bytes | str | None = None,
        timeout: float | None = None,
    ) -> AsyncProcess: ...

    async def run(
        self,
        cmd: str,
        background: bool = False,
        envs: Mapping[str, str] | None = None,
        user: str | None = None,
        cwd: str | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        stdin: bytes | str | None = None,
        timeout: float | None = None,
    ) -> ExecResult | AsyncProcess:
        """Run a shell command and wait for it, or start it in the background.

        Args:
            cmd: The shell command line.
            background: Start it as a background process and return at once
                (:meth:`AsyncSandbox.start_process`): ``p.wait()``, ``p.kill()``, ``p.logs()``.
            envs: Environment variables for this command.
            user: User to run as, e.g. ``"user"`` (the image's, root, when ``None``).
            cwd: Working directory.
            on_stdout: Called with each chunk of stdout (foreground only).
            on_stderr: Called with each chunk of stderr (foreground only).
            stdin: Bytes or text fed to its stdin (foreground only).
            timeout: Seconds after which it is killed (in the background too: with its
                children, by the sandbox, and ``p.timed_out`` says so).

        Returns:
            The :class:`ExecResult` (``stdout``, ``stderr``, ``exit_code``), or the started
            :class:`AsyncProcess` with ``background=True``.
        """
        if background:
            if on_stdout or on_stderr or stdin is not None:
                raise TypeError(
                    "commands.run(background=True) takes no on_stdout/on_stderr/stdin: "
                    "read p.logs() or p.stream_logs(), write p.write_stdin(), call p.kill()"
                )
            return await self._sandbox.start_process(
                cmd, cwd=cwd, env=envs, user=user, timeout=timeout
            )
        return await self._sandbox.exec(
            cmd,
            cwd=cwd,
            env=envs,
            user=user,
            timeout=timeout,
            stdin=stdin,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
        )

    async def list(self) -> builtins.list[AsyncProcess]:
        """The sandbox's background processes (:meth:`AsyncSandbox.list_processes`)."""
        return await self._sandbox.list_processes()

    async def kill(self, process_id: str) -> None:
        """Kill a background process's tree with SIGKILL, as E2B's ``commands.kill`` does."""
        await self._sandbox.kill_process(process_id, "SIGKILL")


def e2b_create_names(
    image: str,
    labels: Mapping[str, str] | None,
    env: Mapping[str, str] | None,
    *,
    template: str | None,
    metadata: Mapping[str, str] | None,
    envs: Mapping[str, str] | None,
) -> tuple[str, dict[str, str], dict[str, str]]:
    """``create``'s image, labels and env with E2B's ``template``/``metadata``/``envs`` folded
    in; a TypeError if both spellings of one are given."""
    if template is not None:
        if image != "default":
            raise TypeError("give the image as image= or template=, not both")
        image = template
    merged_labels = dict(labels or {})
    merged_env = dict(env or {})
    for name, extra, into in (
        ("metadata= and labels=", metadata, merged_labels),
        ("envs= and env=", envs, merged_env),
    ):
        for key, value in (extra or {}).items():
            if into.get(key, value) != value:
                raise TypeError(f"{name} give {key!r} different values")
            into[key] = value
    return image, merged_labels, merged_env
