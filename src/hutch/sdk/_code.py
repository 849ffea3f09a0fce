"""Sans-I/O core of the code interpreter: its models and the run stream's decoder."""

from __future__ import annotations

import codecs
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from hutch._wire.frames import Channel, FrameDecoder, FrameError, Kind
from hutch.sdk._exceptions import HutchConnectionError, api_error

CHART_MIME = "application/vnd.hutch.chart+json"

_MIME_ATTRS = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "text/latex": "latex",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/svg+xml": "svg",
    "application/json": "json",
    "application/javascript": "javascript",
    CHART_MIME: "chart",
    "application/vnd.hutch.dataframe+json": "dataframe",
}


@dataclass(frozen=True, slots=True)
class CodeContext:
    """A code context: an interpreter whose state (variables, imports) lasts between runs.

    Attributes:
        id: The context's id.
        language: ``"python"``, ``"javascript"`` or ``"typescript"``.
        cwd: Its working directory (``None``: the image's).
        state: ``"starting"``, ``"ready"`` or ``"dead"`` (restart it).
        busy: A run is in progress.
    """

    id: str
    language: str
    cwd: str | None = None
    state: str = "ready"
    busy: bool = False

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CodeContext:
        return cls(
            id=str(data["id"]),
            language=str(data["language"]),
            cwd=data.get("cwd"),
            state=str(data.get("state", "ready")),
            busy=bool(data.get("busy", False)),
        )


@dataclass(frozen=True, slots=True)
class Result:
    """One rich output: the last expression's value or a ``display()``, in every MIME type
    the interpreter gave.

    Attributes:
        text, html, markdown, latex, svg, javascript: those representations, if given.
        png, jpeg: base64-encoded images, if given.
        json: ``application/json`` data.
        dataframe: a pandas DataFrame (up to 20,000 cells) as ``{column: [values]}``.
        chart: a matplotlib figure as data: ``{"type": "line"|"bar"|"scatter"|"pie"|
            "box_and_whisker"|..., "title", "x_label", "y_label", "x_scale", "y_scale",
            "elements": [...]}``.
        is_main_result: The value of the cell's last expression (not a ``display()``).
        data: Every MIME type -> value, as sent.
    """

    data: dict[str, Any]
    is_main_result: bool = False

    def __getattr__(self, name: str) -> Any:
        for mime, attr in _MIME_ATTRS.items():
            if attr == name:
                return self.data.get(mime)
        raise AttributeError(name)

    @property
    def text(self) -> str | None:
        value = self.data.get("text/plain")
        return None if value is None else str(value)

    @property
    def chart(self) -> dict[str, Any] | None:
        value = self.data.get(CHART_MIME)
        return value if isinstance(value, dict) else None

    def formats(self) -> list[str]:
        """The short names of the representations present, e.g. ``["text", "png", "chart"]``."""
        return [_MIME_ATTRS.get(mime, mime) for mime in self.data]


@dataclass(frozen=True, slots=True)
class ExecutionError:
    """An exception raised by the code: its class name, message and traceback lines."""

    name: str
    value: str
    traceback: list[str] = field(default_factory=list)

    @property
    def traceback_text(self) -> str:
        return "\n".join(self.traceback)


@dataclass(slots=True)
class Logs:
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Execution:
    """What a run produced.

    Attributes:
        results: Rich outputs, in order (``display()`` calls, figures, the last value).
        logs: ``stdout``/``stderr`` chunks, in order.
        error: The exception the code raised, if any (the context stays usable).
        status: ``"ok"``, ``"error"``, ``"timeout"`` (interrupted) or ``"dead"`` (the
            interpreter died: restart the context).
        context_id: The context it ran in.
        duration: Seconds the run took in the interpreter.
    """

    results: list[Result] = field(default_factory=list)
    logs: Logs = field(default_factory=Logs)
    error: ExecutionError | None = None
    status: str = "ok"
    context_id: str | None = None
    duration: float = 0.0

    @property
    def text(self) -> str | None:
        """The main result's text, if there is one."""
        for result in self.results:
            if result.is_main_result:
                return result.text
        return None


@dataclass(frozen=True, slots=True)
class CodeEvent:
    """One item of :meth:`~hutch.AsyncSandbox.run_code_stream`.

    ``type`` is ``"stdout"``/``"stderr"`` (``text``), ``"result"`` (``result``), ``"error"``
    (``error``) or, last, ``"end"`` (``execution``: everything, gathered).
    """

    type: Literal["stdout", "stderr", "result", "error", "end"]
    text: str | None = None
    result: Result | None = None
    error: ExecutionError | None = None
    execution: Execution | None = None


Callback = Callable[[Any], object]


class CodeRunDecoder:
    """Turns the body of ``code/run/stream`` into :class:`CodeEvent` values, fed in any
    chunking, while gathering them into an :class:`Execution`."""

    def __init__(self) -> None:
        self._frames = FrameDecoder()
        self._text = {
            Channel.STDOUT: codecs.getincrementaldecoder("utf-8")("replace"),
            Channel.STDERR: codecs.getincrementaldecoder("utf-8")("replace"),
        }
        self.execution = Execution()
        self.finished = False

    def feed(self, data: bytes) -> list[CodeEvent]:
        if self.finished:
            return []
        try:
            frames = self._frames.feed(data)
        except FrameError as exc:
            raise HutchConnectionError(f"the server sent a malformed run stream: {exc}") from exc
        events: list[CodeEvent] = []
        ex = self.execution
        for frame in frames:
            if frame.kind is Kind.DATA and frame.channel in self._text:
                text = self._text[Channel(frame.channel)].decode(frame.payload)
                if not text:
                    continue
                if frame.channel == Channel.STDOUT:
                    ex.logs.stdout.append(text)
                    events.append(CodeEvent("stdout", text=text))
                else:
                    ex.logs.stderr.append(text)
                    events.append(CodeEvent("stderr", text=text))
            elif frame.kind is Kind.EVENT:
                body = _json(frame)
                kind = body.get("event")
                if kind == "context":
                    ex.context_id = str(body.get("id"))
                elif kind == "result":
                    mimes = body.get("data")
                    result = Result(
                        data=dict(mimes) if isinstance(mimes, dict) else {},
                        is_main_result=bool(body.get("is_main_result")),
                    )
                    ex.results.append(result)
                    events.append(CodeEvent("result", result=result))
                elif kind == "error":
                    tb = body.get("traceback")
                    raised = ExecutionError(
                        name=str(body.get("name", "Error")),
                        value=str(body.get("value", "")),
                        traceback=[str(line) for line in tb] if isinstance(tb, list) else [],
                    )
                    ex.error = raised
                    events.append(CodeEvent("error", error=raised))
            elif frame.kind is Kind.RESULT:
                body = _json(frame)
                failure = body.get("error")
                if isinstance(failure, Mapping):
                    raise api_error(
                        str(failure.get("code") or "internal"),
                        str(failure.get("message") or "the code could not run"),
                    )
                self.finished = True
                ex.status = str(body.get("status", "ok"))
                ex.duration = float(body.get("duration") or 0.0)
                if body.get("context_id"):
                    ex.context_id = str(body["context_id"])
                events.append(CodeEvent("end", execution=ex))
                break
        return events

    def close(self) -> None:
        if not self.finished:
            raise HutchConnectionError(
                "the run stream ended before its result arrived (the server or its "
                "connection went away); the code may still be running"
            )


def _json(frame: Any) -> dict[str, Any]:
    try:
        value: dict[str, Any] = frame.json()
    except ValueError as exc:
        raise HutchConnectionError(
            f"the server sent a malformed {frame.kind.name} frame: {frame.payload[:100]!r}"
        ) from exc
    return value


def dispatch(
    event: CodeEvent,
    on_stdout: Callback | None,
    on_stderr: Callback | None,
    on_result: Callback | None,
    on_error: Callback | None,
) -> None:
    """Call the callback matching ``event``, if one was given."""
    if event.type == "stdout" and on_stdout is not None:
        on_stdout(event.text)
    elif event.type == "stderr" and on_stderr is not None:
        on_stderr(event.text)
    elif event.type == "result" and on_result is not None:
        on_result(event.result)
    elif event.type == "error" and on_error is not None:
        on_error(event.error)
