"""Sans-I/O core of exec: the request body, the stream decoder and the output collector."""

from __future__ import annotations

import base64
import codecs
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hutch._wire.frames import Channel, Frame, FrameDecoder, FrameError, Kind
from hutch.sdk._exceptions import HutchConnectionError, api_error
from hutch.sdk._models import ExecEvent, ExecResult

OutputCallback = Callable[[str], object]
"""Called with each chunk of output as it arrives, decoded as UTF-8."""

EXEC_STREAM_ID = 0


def exec_request_body(
    *,
    command: str | None = None,
    argv: Sequence[str] | None = None,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    user: str | None = None,
    timeout: float | None = None,
    stdin: bytes | str | None = None,
) -> dict[str, Any]:
    """The JSON body of ``POST /v1/sandboxes/{id}/exec[/stream]``: exactly one of command/argv."""
    if (command is None) == (argv is None):
        raise ValueError("give exactly one of command (a shell string) or argv (a list)")
    if isinstance(argv, str | bytes):
        raise TypeError("argv must be a list of strings, not a single string")
    if isinstance(stdin, str):
        stdin = stdin.encode()
    return {
        "command": command,
        "argv": list(argv) if argv is not None else None,
        "cwd": cwd,
        "env": dict(env or {}),
        "user": user,
        "timeout": timeout,
        "stdin": base64.b64encode(stdin).decode("ascii") if stdin is not None else None,
    }


class ExecStreamDecoder:
    """Turns the body of ``exec/stream`` into :class:`ExecEvent` values, fed in any chunking.

    Raises the mapped :class:`~hutch.sdk.APIError` when the stream ends with an error result,
    and :class:`~hutch.sdk.HutchConnectionError` from :meth:`close` when it ended without one.
    """

    __slots__ = ("_frames", "pid", "finished")

    def __init__(self) -> None:
        self._frames = FrameDecoder()
        self.pid: int | None = None
        self.finished = False

    def feed(self, data: bytes) -> list[ExecEvent]:
        if self.finished:
            return []
        try:
            frames = self._frames.feed(data)
        except FrameError as exc:
            raise HutchConnectionError(f"the server sent a malformed exec stream: {exc}") from exc
        events: list[ExecEvent] = []
        for frame in frames:
            if frame.stream != EXEC_STREAM_ID:
                continue
            if frame.kind is Kind.DATA:
                if frame.channel == Channel.STDOUT:
                    events.append(ExecEvent("stdout", frame.payload, frame.offset))
                elif frame.channel == Channel.STDERR:
                    events.append(ExecEvent("stderr", frame.payload, frame.offset))
            elif frame.kind is Kind.EVENT:
                payload = _frame_json(frame)
                if payload.get("event") == "started" and isinstance(payload.get("pid"), int):
                    self.pid = payload["pid"]
            elif frame.kind is Kind.RESULT:
                self.finished = True
                events.append(_exit_event(_frame_json(frame)))
                break
        return events

    def close(self) -> None:
        """Call when the body has ended: checks that the command's result arrived."""
        if not self.finished:
            raise HutchConnectionError(
                "the exec stream ended before the command's result arrived "
                "(the server or its connection went away); the command may still be running"
            )


def _frame_json(frame: Frame) -> dict[str, Any]:
    try:
        return frame.json()
    except ValueError as exc:  # FrameError, JSONDecodeError and UnicodeDecodeError all are
        raise HutchConnectionError(
            f"the server sent a malformed {frame.kind.name} frame: {frame.payload[:100]!r}"
        ) from exc


def _exit_event(result: dict[str, Any]) -> ExecEvent:
    if isinstance(result.get("ok"), dict):
        result = result["ok"]
    error = result.get("error")
    if isinstance(error, Mapping):
        raise api_error(
            str(error.get("code") or "internal"),
            str(error.get("message") or "the command failed to run"),
        )
    return ExecEvent(
        "exit",
        exit_code=int(result.get("exit_code", -1)),
        timed_out=bool(result.get("timed_out", False)),
        duration=float(result.get("duration") or 0.0),
        oom_killed=bool(result.get("oom_killed", False)),
    )


class OutputCollector:
    """Gathers streamed events into an :class:`ExecResult`, calling the output callbacks."""

    __slots__ = ("_stdout", "_stderr", "_callbacks", "_decoders", "_exit")

    def __init__(
        self,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> None:
        self._stdout = bytearray()
        self._stderr = bytearray()
        self._callbacks = {"stdout": on_stdout, "stderr": on_stderr}
        # Incremental decoders: a chunk may end in the middle of a multi-byte character.
        self._decoders = {
            "stdout": codecs.getincrementaldecoder("utf-8")("replace"),
            "stderr": codecs.getincrementaldecoder("utf-8")("replace"),
        }
        self._exit: ExecEvent | None = None

    def add(self, event: ExecEvent) -> None:
        if event.type == "exit":
            self._exit = event
            for name in ("stdout", "stderr"):
                self._emit(name, b"", final=True)
            return
        (self._stdout if event.type == "stdout" else self._stderr).extend(event.data)
        self._emit(event.type, event.data, final=False)

    def _emit(self, name: str, data: bytes, *, final: bool) -> None:
        callback = self._callbacks[name]
        if callback is None:
            return
        text = self._decoders[name].decode(data, final)
        if text:
            callback(text)

    def result(self) -> ExecResult:
        if self._exit is None:
            raise HutchConnectionError("the command's result never arrived")
        return ExecResult(
            stdout_bytes=bytes(self._stdout),
            stderr_bytes=bytes(self._stderr),
            exit_code=self._exit.exit_code if self._exit.exit_code is not None else -1,
            duration=self._exit.duration or 0.0,
            timed_out=self._exit.timed_out,
            oom_killed=self._exit.oom_killed,
        )
