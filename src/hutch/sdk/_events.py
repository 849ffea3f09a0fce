"""Sandbox events (``sb.events()``): the model and a sans-I/O decoder of the server's
Server-Sent Events stream (``GET /v1/sandboxes/{id}/events``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hutch._wire.sandbox_events import SandboxEventType


@dataclass(frozen=True, slots=True)
class SandboxEvent:
    """Something that happened to a sandbox.

    Attributes:
        seq: Its number in the sandbox's sequence (1, 2, ...): pass the last one you saw as
            ``after=`` to get only newer ones.
        type: ``created``, ``started``, ``paused``, ``resumed``, ``stopped``,
            ``oom_killed``, ``error`` or ``destroyed``.
        at: When, as an ISO 8601 UTC timestamp.
        data: The details: ``reason`` (paused, stopped, error); ``command``, ``host_pid`` and
            ``count`` (oom_killed); ``image`` (created).
    """

    seq: int
    type: SandboxEventType
    at: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str | None:
        """``data["reason"]``, if the event has one."""
        value = self.data.get("reason")
        return value if isinstance(value, str) else None


class EventStreamDecoder:
    """Feed it the bytes of an SSE body; it returns the complete events in them."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[SandboxEvent]:
        self._buffer = (self._buffer + chunk).replace(b"\r\n", b"\n")
        events: list[SandboxEvent] = []
        while b"\n\n" in self._buffer:
            block, self._buffer = self._buffer.split(b"\n\n", 1)
            data = [
                line[5:].lstrip(b" ") for line in block.split(b"\n") if line.startswith(b"data:")
            ]
            if not data:
                continue  # a comment (keep-alive) or a retry: line
            body = json.loads(b"\n".join(data))
            events.append(
                SandboxEvent(
                    seq=int(body["seq"]),
                    type=body["type"],
                    at=str(body["at"]),
                    data=dict(body.get("data") or {}),
                )
            )
        return events
