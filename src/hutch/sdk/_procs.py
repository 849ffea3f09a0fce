"""Background processes, sans-I/O: their info, log events, and the logs-stream decoder."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from hutch._wire.frames import Channel, FrameDecoder, FrameError, Kind
from hutch.sdk._exceptions import HutchConnectionError, api_error

ProcessStatus = Literal["starting", "running", "completed", "failed", "killed"]
LogEventType = Literal["stdout", "stderr"]
# How long stream_logs keeps trying to reconnect to a server that went away (a restart).
RECONNECT_FOR = 60.0


def monotonic() -> float:
    return time.monotonic()


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """A background process as the sandbox's agent describes it.

    Attributes:
        id: The process id given to :meth:`Sandbox.start_process` (or generated).
        pid: Its pid inside the sandbox.
        status: ``"starting"``, ``"running"``, ``"completed"`` (exit 0), ``"failed"``
            (non-zero exit) or ``"killed"`` (ended by a signal, or stopped by ``kill``).
        exit_code: Its exit status once ended (128 + signal number after a signal).
        signal: The signal that ended it, if one did.
        oom_killed: Whether the kernel's OOM killer ended it (the sandbox's memory limit).
        timed_out: Whether it was killed (with its children) at the ``timeout`` it was
            started with.
        command: The shell command, or ``None`` if started from argv.
        argv: What was executed.
        started_at: Unix time it started.
        ended_at: Unix time it ended, or ``None``.
        stdout_bytes: How many bytes of stdout it has written (the end offset).
        stderr_bytes: Same for stderr.
        stdout_start: The first stdout offset still kept (above 0 once truncated).
        stderr_start: Same for stderr.
        truncated: Whether older output was dropped to stay under the log limit.
        raw: The JSON object as received.
    """

    id: str
    pid: int
    status: str
    exit_code: int | None
    signal: int | None
    command: str | None
    argv: list[str]
    started_at: float
    ended_at: float | None
    stdout_bytes: int
    stderr_bytes: int
    stdout_start: int
    stderr_start: int
    truncated: bool
    raw: Mapping[str, Any]
    oom_killed: bool = False
    timed_out: bool = False

    @property
    def running(self) -> bool:
        return self.status in ("starting", "running")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessInfo:
        return cls(
            id=str(data["id"]),
            pid=int(data.get("pid") or 0),
            status=str(data.get("status", "running")),
            exit_code=data.get("exit_code"),
            signal=data.get("signal"),
            oom_killed=bool(data.get("oom_killed", False)),
            timed_out=bool(data.get("timed_out", False)),
            command=data.get("command"),
            argv=list(data.get("argv") or []),
            started_at=float(data.get("started_at") or 0.0),
            ended_at=data.get("ended_at"),
            stdout_bytes=int(data.get("stdout_bytes") or 0),
            stderr_bytes=int(data.get("stderr_bytes") or 0),
            stdout_start=int(data.get("stdout_start") or 0),
            stderr_start=int(data.get("stderr_start") or 0),
            truncated=bool(data.get("truncated")),
            raw=dict(data),
        )


@dataclass(frozen=True, slots=True)
class LogEvent:
    """A chunk of a background process's output.

    Attributes:
        type: ``"stdout"`` or ``"stderr"``.
        data: The bytes.
        offset: Byte offset of ``data`` in its channel; pass ``offset + len(data)`` as
            ``since`` (or ``since_stderr``) to resume after it.
    """

    type: LogEventType
    data: bytes
    offset: int


@dataclass(frozen=True, slots=True)
class ProcessLogs:
    """What a process's logs hold: ``stdout``/``stderr`` as text, plus the process's info
    (``process.truncated`` says whether older output was dropped)."""

    stdout: str
    stderr: str
    process: ProcessInfo


class LogCursor:
    """Where a reader is in each channel; drops bytes it has already had (exactly once)."""

    __slots__ = ("offsets", "skipped")

    def __init__(self, stdout: int, stderr: int) -> None:
        self.offsets: dict[int, int] = {Channel.STDOUT: stdout, Channel.STDERR: stderr}
        self.skipped: list[tuple[str, int, int]] = []

    def accept(self, channel: int, offset: int, data: bytes) -> LogEvent | None:
        seen = self.offsets.get(channel)
        if seen is None:
            return None
        end = offset + len(data)
        if end <= seen:
            return None
        if offset < seen:
            data = data[seen - offset :]
            offset = seen
        self.offsets[channel] = end
        return LogEvent("stdout" if channel == Channel.STDOUT else "stderr", data, offset)


class LogStreamDecoder:
    """The body of ``logs/stream`` to :class:`LogEvent` values; ``result`` once it ended."""

    __slots__ = ("_frames", "_cursor", "result")

    def __init__(self, cursor: LogCursor) -> None:
        self._frames = FrameDecoder()
        self._cursor = cursor
        self.result: ProcessInfo | None = None

    def feed(self, data: bytes) -> list[LogEvent]:
        if self.result is not None:
            return []
        try:
            frames = self._frames.feed(data)
        except FrameError as exc:
            raise HutchConnectionError(f"the server sent a malformed logs stream: {exc}") from exc
        events: list[LogEvent] = []
        for frame in frames:
            if frame.kind is Kind.DATA:
                event = self._cursor.accept(frame.channel, frame.offset, frame.payload)
                if event is not None:
                    events.append(event)
            elif frame.kind is Kind.EVENT:
                body = frame.json()
                for name in ("stdout", "stderr"):
                    skipped = body.get(f"{name}_skipped")
                    if isinstance(skipped, list) and len(skipped) == 2:
                        self._cursor.skipped.append((name, int(skipped[0]), int(skipped[1])))
                        channel = Channel.STDOUT if name == "stdout" else Channel.STDERR
                        self._cursor.offsets[channel] = max(
                            self._cursor.offsets[channel], int(skipped[1])
                        )
            elif frame.kind is Kind.RESULT:
                body = frame.json()
                error = body.get("error")
                if isinstance(error, Mapping):
                    raise api_error(str(error.get("code")), str(error.get("message")))
                self.result = ProcessInfo.from_json(body["process"])
                break
        return events


class LogMatcher:
    """Looks for a substring or regex in a process's output as it arrives (either channel),
    across chunk boundaries."""

    WINDOW = 64 * 1024

    def __init__(self, pattern: str | re.Pattern[str]) -> None:
        self._regex = pattern if isinstance(pattern, re.Pattern) else None
        self._text = pattern if isinstance(pattern, str) else None
        self._tails: dict[str, str] = {"stdout": "", "stderr": ""}
        self._pending: dict[str, bytes] = {"stdout": b"", "stderr": b""}

    def feed(self, event: LogEvent) -> str | None:
        """The matched text, if ``event`` completed a match."""
        raw = self._pending[event.type] + event.data
        # Decode only whole UTF-8 characters; keep a cut one for the next chunk.
        cut = len(raw)
        for back in range(1, min(4, len(raw)) + 1):
            byte = raw[-back]
            if byte & 0xC0 == 0x80:
                continue
            if byte & 0x80:
                need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4
                if back < need:
                    cut = len(raw) - back
            break
        self._pending[event.type] = raw[cut:]
        text = self._tails[event.type] + raw[:cut].decode("utf-8", "replace")
        found: str | None = None
        if self._text is not None and self._text in text:
            found = self._text
        elif self._regex is not None:
            match = self._regex.search(text)
            if match is not None:
                found = match.group(0)
        self._tails[event.type] = text[-self.WINDOW :]
        return found


def logs_params(
    stdout_offset: int, stderr_offset: int, *, follow: bool, timeout: float | None
) -> dict[str, str]:
    params: dict[str, str] = {
        "stdout_offset": str(stdout_offset),
        "stderr_offset": str(stderr_offset),
        "follow": "true" if follow else "false",
    }
    if timeout is not None:
        params["timeout"] = str(max(timeout, 0.001))
    return params
