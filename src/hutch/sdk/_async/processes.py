"""Background processes: start, list, kill, stdin, logs that replay from any offset and then
follow live, and waits. A dropped connection (a server restart included) is resumed from the
last offset seen: every byte arrives exactly once, in order."""

# ruff: noqa: ASYNC109 -- the timeouts are sent to the server, which ends the wait itself.

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hutch.sdk._exceptions import (
    HutchConnectionError,
    ProcessExited,
    ProcessTimeout,
    SandboxUnavailable,
)
from hutch.sdk._procs import (
    RECONNECT_FOR,
    LogCursor,
    LogEvent,
    LogMatcher,
    LogStreamDecoder,
    ProcessInfo,
    ProcessLogs,
    logs_params,
    monotonic,
)
from hutch.sdk._requests import path_segment

if TYPE_CHECKING:
    from hutch.sdk._async.client import AsyncClient


class AsyncProcess:
    """A background process in a sandbox (see :meth:`AsyncSandbox.start_process`).

    It belongs to the sandbox, not to this object: it keeps running when this program ends,
    and :meth:`AsyncSandbox.get_process` finds it again.

    Attributes:
        id: Its id in the sandbox.
        info: Its state when last fetched (refresh with :meth:`refresh`).
    """

    def __init__(self, client: AsyncClient, sandbox_path: str, info: ProcessInfo) -> None:
        self.client = client
        self.info = info
        self.id = info.id
        self._path = f"{sandbox_path}/processes/{path_segment(info.id)}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, status={self.info.status!r})"

    @property
    def pid(self) -> int:
        return self.info.pid

    @property
    def status(self) -> str:
        """The status when last fetched; :meth:`refresh` fetches it again."""
        return self.info.status

    @property
    def exit_code(self) -> int | None:
        return self.info.exit_code

    @property
    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer ended it (the sandbox's memory limit)."""
        return self.info.oom_killed

    @property
    def timed_out(self) -> bool:
        """Whether it was killed at the ``timeout`` it was started with."""
        return self.info.timed_out

    async def refresh(self) -> ProcessInfo:
        """Fetch the process's current state."""
        self.info = ProcessInfo.from_json(await self.client.request("GET", self._path))
        return self.info

    async def kill(self, signal: str | int = "SIGTERM") -> ProcessInfo:
        """Send ``signal`` (a name like ``"SIGINT"``/``"INT"`` or a number) to the whole tree.

        Raises:
            InvalidRequest: Not a signal (the message lists the valid names).
        """
        body = await self.client.request("POST", f"{self._path}/kill", json={"signal": signal})
        self.info = ProcessInfo.from_json(body)
        return self.info

    async def write_stdin(self, data: bytes | str) -> None:
        """Send bytes (text as UTF-8) to the process's stdin.

        Raises:
            ProcessNotRunning: It has ended, or its stdin was closed.
        """
        raw = data.encode() if isinstance(data, str) else bytes(data)
        await self.client.request("POST", f"{self._path}/stdin", content=raw)

    async def close_stdin(self) -> None:
        """Close the process's stdin (it reads end-of-file once it has read what was sent)."""
        await self.client.request("POST", f"{self._path}/stdin/close")

    async def logs(self) -> ProcessLogs:
        """Everything kept of its output so far, as text (``process.truncated`` tells whether
        older output was dropped to stay under the log limit)."""
        body = await self.client.request("GET", f"{self._path}/logs")
        return ProcessLogs(
            stdout=str(body["stdout"]),
            stderr=str(body["stderr"]),
            process=ProcessInfo.from_json(body["process"]),
        )

    async def stream_logs(
        self,
        since: int = 0,
        *,
        since_stderr: int | None = None,
        follow: bool = True,
        timeout: float | None = None,
    ) -> AsyncIterator[LogEvent]:
        """Replay output from byte offsets, then follow it live until the process ends.

        If the connection drops (the server restarting included) the stream reconnects and
        resumes from the last offset it yielded: no byte is lost or repeated.

        Args:
            since: The stdout offset to start from (0: everything kept).
            since_stderr: The stderr offset (defaults to ``since``).
            follow: Keep following until the process ends; ``False`` stops at what is there.
            timeout: Stop after this many seconds even if the process still runs.

        Yields:
            :class:`LogEvent` chunks with their offsets.
        """
        cursor = LogCursor(since, since if since_stderr is None else since_stderr)
        async for event in self._follow(cursor, follow=follow, timeout=timeout):
            yield event

    async def _follow(
        self, cursor: LogCursor, *, follow: bool, timeout: float | None, data: bool = True
    ) -> AsyncIterator[LogEvent]:
        deadline = None if timeout is None else monotonic() + timeout
        gave_up_at: float | None = None
        while True:
            remaining = None if deadline is None else deadline - monotonic()
            params = logs_params(
                cursor.offsets[1], cursor.offsets[2], follow=follow, timeout=remaining
            )
            if not data:
                params["data"] = "false"
            decoder = LogStreamDecoder(cursor)
            try:
                async with self.client.stream(
                    "GET", f"{self._path}/logs/stream", params=params
                ) as chunks:
                    async for chunk in chunks:
                        for event in decoder.feed(chunk):
                            gave_up_at = None
                            yield event
            except (HutchConnectionError, SandboxUnavailable):
                # The server went away (a restart?): resume from the offsets seen so far.
                now = monotonic()
                gave_up_at = gave_up_at or now + RECONNECT_FOR
                if now > gave_up_at or (deadline is not None and now > deadline):
                    raise
                await asyncio.sleep(0.2)
                continue
            if decoder.result is not None:
                self.info = decoder.result
                return
            # The body ended without a RESULT: the connection was cut. Resume.
            await asyncio.sleep(0.05)

    async def wait(self, timeout: float | None = None) -> ProcessInfo:
        """Wait until the process ends.

        Returns:
            Its final state (check ``status`` and ``exit_code``).

        Raises:
            ProcessTimeout: It still runs after ``timeout`` seconds (it is not killed).
        """
        cursor = LogCursor(0, 0)
        async for _ in self._follow(cursor, follow=True, timeout=timeout, data=False):
            pass
        if self.info.running:
            raise ProcessTimeout(
                f"process {self.id!r} still runs after {timeout:g}s; it was not stopped "
                "(kill it with p.kill())",
                self.info,
            )
        return self.info

    async def wait_for_log(
        self, pattern: str | re.Pattern[str], timeout: float | None = None
    ) -> str:
        """Wait until stdout or stderr contains ``pattern`` (a substring, or a compiled
        regex); output printed before the call counts too.

        Returns:
            The matched text.

        Raises:
            ProcessExited: The process ended without printing it.
            ProcessTimeout: ``timeout`` seconds passed first.
        """
        matcher = LogMatcher(pattern)
        shown = pattern.pattern if isinstance(pattern, re.Pattern) else pattern
        async for event in self._follow(LogCursor(0, 0), follow=True, timeout=timeout):
            found = matcher.feed(event)
            if found is not None:
                return found
        if self.info.running:
            raise ProcessTimeout(
                f"process {self.id!r} did not print {shown!r} within {timeout:g}s", self.info
            )
        raise ProcessExited(
            f"process {self.id!r} ended ({self.info.status}, exit code {self.info.exit_code}) "
            f"without printing {shown!r}; see p.logs()",
            self.info,
        )

    async def wait_for_port(
        self,
        port: int,
        *,
        mode: str = "tcp",
        path: str = "/",
        status: tuple[int, int] = (200, 399),
        timeout: float | None = 60.0,
    ) -> None:
        """Wait until something listens on ``port`` inside the sandbox (``mode="http"``: until
        ``GET path`` answers with a status in the ``status`` range, inclusive).

        Raises:
            InvalidRequest: ``port`` is outside 1-65535 or ``mode`` is unknown.
            ProcessExited: The process ended first.
            ProcessTimeout: ``timeout`` seconds passed first.
        """
        body = {
            "port": port,
            "mode": mode,
            "path": path,
            "status_min": status[0],
            "status_max": status[1],
            "timeout": timeout,
        }
        result = await self.client.request("POST", f"{self._path}/wait-for-port", json=body)
        self.info = ProcessInfo.from_json(result["process"])
        if result.get("ready"):
            return
        if not self.info.running:
            raise ProcessExited(
                f"process {self.id!r} ended ({self.info.status}, exit code "
                f"{self.info.exit_code}) before port {port} was ready; see p.logs()",
                self.info,
            )
        raise ProcessTimeout(
            f"port {port} of process {self.id!r} was not ready within {timeout:g}s", self.info
        )


async def start_process(
    client: AsyncClient,
    sandbox_path: str,
    command: str | Sequence[str],
    *,
    process_id: str | None,
    cwd: str | None,
    env: Mapping[str, str] | None,
    user: str | None,
    stdin: bool,
    log_limit: int | None,
    timeout: float | None = None,
) -> AsyncProcess:
    body: dict[str, Any] = {
        "id": process_id,
        "cwd": cwd,
        "env": dict(env or {}),
        "user": user,
        "stdin": stdin,
        "log_limit": log_limit,
    }
    if timeout is not None:  # left out otherwise: a server without timeouts still answers
        body["timeout"] = timeout
    if isinstance(command, str):
        body["command"] = command
    else:
        body["argv"] = list(command)
    info = await client.request("POST", f"{sandbox_path}/processes", json=body)
    return AsyncProcess(client, sandbox_path, ProcessInfo.from_json(info))


async def list_processes(client: AsyncClient, sandbox_path: str) -> list[AsyncProcess]:
    body = await client.request("GET", f"{sandbox_path}/processes")
    return [AsyncProcess(client, sandbox_path, ProcessInfo.from_json(p)) for p in body["processes"]]


async def get_process(client: AsyncClient, sandbox_path: str, process_id: str) -> AsyncProcess:
    path = f"{sandbox_path}/processes/{path_segment(process_id)}"
    info = await client.request("GET", path)
    return AsyncProcess(client, sandbox_path, ProcessInfo.from_json(info))


async def kill_all_processes(
    client: AsyncClient, sandbox_path: str, signal: str | int
) -> list[str]:
    body = await client.request("POST", f"{sandbox_path}/processes/kill", json={"signal": signal})
    return list(body["killed"])
