"""Interactive terminals: a shell on a pseudo-terminal in the sandbox, over a WebSocket."""

# ruff: noqa: ASYNC109 -- `timeout` bounds one read; the sync twin passes it to websockets.

from __future__ import annotations

import json
from types import TracebackType
from typing import Any, Protocol

from websockets.exceptions import ConnectionClosed

from hutch.sdk import _ws
from hutch.sdk._async.client import AsyncClient
from hutch.sdk._exceptions import HutchConnectionError, InvalidRequest, NotFoundError, api_error
from hutch.sdk._requests import path_segment


class TerminalSandbox(Protocol):
    """What a terminal needs of its `AsyncSandbox` (which opens it: typed here, not imported)."""

    id: str
    client: AsyncClient


MAX_DIMENSION = 1000
_CLOSE_CODES = {
    4401: "unauthorized",
    4404: "terminal_not_found",
    4409: "sandbox_not_running",
    4503: "sandbox_unavailable",
}


def check_size(cols: int, rows: int) -> None:
    for name, value in (("cols", cols), ("rows", rows)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(f"{name} must be an integer", status=422, code="invalid_size")
        if not 1 <= value <= MAX_DIMENSION:
            raise InvalidRequest(
                f"{name} must be between 1 and {MAX_DIMENSION}, not {value}",
                status=422,
                code="invalid_size",
            )


class AsyncTerminal:
    """A shell on a pseudo-terminal (``xterm-256color``) in a sandbox.

    The shell outlives this object's connection: :meth:`detach` (or a dropped network) leaves it
    running, and :meth:`AsyncSandbox.attach_terminal` reconnects and replays recent output.
    :meth:`close` ends the shell.

    Attributes:
        id: The terminal's id in its sandbox.
        exit_code: The shell's exit code once it has exited, else ``None``.
        offset: Bytes of output received so far (counted from the terminal's start).
    """

    def __init__(self, sandbox: TerminalSandbox, terminal_id: str, ws: _ws.AsyncWebSocket) -> None:
        self.sandbox = sandbox
        self.id = terminal_id
        self.exit_code: int | None = None
        self.offset = 0
        self.pid = 0
        self._ws = ws
        self._path = (
            f"/v1/sandboxes/{path_segment(sandbox.id)}/terminals/{path_segment(terminal_id)}"
        )
        self._ended = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, sandbox={self.sandbox.id!r})"

    @classmethod
    async def _open(cls, sandbox: TerminalSandbox, terminal_id: str, since: int) -> AsyncTerminal:
        path = (
            f"/v1/sandboxes/{path_segment(sandbox.id)}/terminals/"
            f"{path_segment(terminal_id)}/ws?since={since}"
        )
        try:
            ws = await _ws.aconnect(sandbox.client.config, path)
        except OSError as e:
            raise HutchConnectionError(f"cannot open the terminal's WebSocket: {e}") from e
        terminal = cls(sandbox, terminal_id, ws)
        try:
            first = await _ws.arecv(ws, 30.0)
        except ConnectionClosed as e:
            raise terminal._closed_error(e) from None
        if isinstance(first, str):
            hello = json.loads(first)
            terminal.offset = int(hello.get("offset") or 0)
            terminal.pid = int(hello.get("pid") or 0)
        return terminal

    def _closed_error(self, e: ConnectionClosed) -> Exception:
        frame = e.rcvd
        code = frame.code if frame is not None else 1006
        wire = _CLOSE_CODES.get(code)
        if wire is None:
            return HutchConnectionError(f"the terminal's WebSocket closed ({code})")
        return api_error(
            wire,
            f"terminal {self.id}: {frame.reason if frame else wire}",
            status=code - 4000,
        )

    async def send(self, data: bytes | str) -> None:
        """Type ``data`` into the terminal (a ``str`` is encoded as UTF-8)."""
        if isinstance(data, str):
            data = data.encode()
        try:
            await self._ws.send(data)
        except ConnectionClosed as e:
            raise self._closed_error(e) from None

    async def recv(self, timeout: float | None = None) -> bytes:
        """The next output bytes; ``b""`` once the shell has exited (see :attr:`exit_code`).

        Raises:
            TimeoutError: nothing arrived within ``timeout`` seconds.
        """
        while not self._ended:
            try:
                message = await _ws.arecv(self._ws, timeout)
            except ConnectionClosed as e:
                self._ended = True
                if e.rcvd is not None and e.rcvd.code in _CLOSE_CODES:
                    raise self._closed_error(e) from None
                return b""
            if isinstance(message, bytes):
                self.offset += len(message)
                return message
            control: dict[str, Any] = json.loads(message)
            if control.get("type") == "exit":
                code = control.get("exit_code")  # null: closed before the shell exited
                self.exit_code = None if code is None else int(code)
                self._ended = True
                await self._ws.close()
            elif control.get("type") == "error":
                raise api_error(str(control.get("code")), str(control.get("message")), status=422)
        return b""

    async def read_until(self, pattern: bytes | str, timeout: float = 30.0) -> bytes:
        """Read output until it contains ``pattern``; returns everything read.

        Raises:
            TimeoutError: no ``pattern`` within ``timeout`` seconds of quiet.
            EOFError: the shell exited first.
        """
        if isinstance(pattern, str):
            pattern = pattern.encode()
        seen = bytearray()
        while pattern not in seen:
            chunk = await self.recv(timeout)
            if not chunk:
                raise EOFError(f"the shell exited before printing {pattern!r}: {bytes(seen)!r}")
            seen += chunk
        return bytes(seen)

    async def wait(self, timeout: float | None = None) -> int:
        """Read (and drop) output until the shell exits; return its exit code."""
        while await self.recv(timeout):
            pass
        return self.exit_code if self.exit_code is not None else -1

    async def resize(self, cols: int, rows: int) -> None:
        """Set the terminal's size; the program in it gets SIGWINCH."""
        check_size(cols, rows)
        await self.sandbox.client.request(
            "POST", f"{self._path}/resize", json={"cols": cols, "rows": rows}
        )

    async def detach(self) -> None:
        """Disconnect and leave the shell running (reattach with ``attach_terminal``)."""
        self._ended = True
        await self._ws.close()

    async def close(self) -> None:
        """End the shell (and what it started) and disconnect. Idempotent."""
        await self._ws.close()
        self._ended = True
        try:
            await self.sandbox.client.request("DELETE", self._path)
        except NotFoundError:
            pass  # already gone: the shell exited and idled out, or another client closed it

    async def __aenter__(self) -> AsyncTerminal:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def open_terminal(
    sandbox: TerminalSandbox,
    cols: int,
    rows: int,
    shell: str | None,
    env: dict[str, str] | None,
    cwd: str | None,
    idle_timeout: float | None,
) -> AsyncTerminal:
    check_size(cols, rows)
    body: dict[str, Any] = {
        "cols": cols,
        "rows": rows,
        "shell": shell,
        "env": env or {},
        "cwd": cwd,
    }
    if idle_timeout is not None:
        body["idle_timeout"] = idle_timeout
    info = await sandbox.client.request(
        "POST", f"/v1/sandboxes/{path_segment(sandbox.id)}/terminals", json=body
    )
    return await AsyncTerminal._open(sandbox, str(info["id"]), 0)


async def attach_terminal(sandbox: TerminalSandbox, terminal_id: str, since: int) -> AsyncTerminal:
    return await AsyncTerminal._open(sandbox, terminal_id, since)
