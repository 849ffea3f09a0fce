"""A sandbox's events as Server-Sent Events: `GET /v1/sandboxes/{id}/events`.

Each event is ``id: <seq>``, ``event: <type>``, ``data: <json>``; a client that reconnects with
``Last-Event-ID: <seq>`` (browsers' EventSource do) or ``?after=<seq>`` gets everything after
it. The stream ends after ``destroyed``, and when the server shuts down (the client resumes on
the next one from the last id it saw).
"""

# ruff: noqa: ASYNC109 -- `timeout` is a query parameter of the API, enforced here.

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from hutch._wire.sandbox_events import SandboxEventType
from hutch.server._deps import ERROR_RESPONSES, Svc, require_key
from hutch.server._errors import InvalidRequest
from hutch.server.store._events import EventRecord

EVENT_STREAM = "text/event-stream"
KEEPALIVE_EVERY = 15  # quiet seconds between two keep-alive comments


class SandboxEvent(BaseModel):
    """One event's ``data`` (JSON)."""

    seq: int
    type: SandboxEventType
    at: str
    data: dict[str, Any]


def event_json(event: EventRecord) -> dict[str, Any]:
    at = datetime.fromtimestamp(event.at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"seq": event.seq, "type": event.type, "at": at, "data": event.data}


def sse_message(event: EventRecord) -> bytes:
    body = json.dumps(event_json(event), separators=(",", ":"))
    return f"id: {event.seq}\nevent: {event.type}\ndata: {body}\n\n".encode()


def resume_point(after: int | None, last_event_id: str | None) -> int:
    """Where to start: `?after=` wins over `Last-Event-ID` (both: the last seq seen)."""
    if after is not None:
        return after
    if last_event_id is None or not last_event_id.strip():
        return 0
    value = last_event_id.strip()
    if not value.isdigit() or len(value) > 18:
        raise InvalidRequest(
            f"Last-Event-ID must be the id (a number) of the last event you got, not {value!r}",
            fields=[{"loc": ["header", "last-event-id"], "message": "expected an integer"}],
        )
    return int(value)


def build_events_router() -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], responses=ERROR_RESPONSES)

    @router.get(
        "/sandboxes/{sandbox_id}/events",
        response_class=StreamingResponse,
        responses={
            200: {
                "content": {EVENT_STREAM: {"schema": SandboxEvent.model_json_schema()}},
                "description": "Server-Sent Events; each `data` is a SandboxEvent",
            }
        },
    )
    async def sandbox_events(
        svc: Svc,
        sandbox_id: str,
        after: Annotated[int | None, Query(ge=0, le=2**62)] = None,
        follow: bool = True,
        timeout: Annotated[float | None, Query(gt=0, le=86400)] = None,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse:
        """The sandbox's events after `after` (or `Last-Event-ID`), oldest first: created,
        started, paused, resumed, stopped, oom_killed, error, destroyed. With `follow` (the
        default) the stream stays open for new ones until the sandbox is destroyed, or for
        `timeout` seconds."""
        svc.sandboxes.get(sandbox_id)  # 404 for an id this key cannot see
        start = resume_point(after, last_event_id)
        events = svc.events.follow(sandbox_id, start, follow=follow)

        async def messages() -> AsyncIterator[bytes]:
            quiet = 0
            deadline = None if timeout is None else time.monotonic() + timeout
            yield b"retry: 1000\n\n"
            async for event in events:
                if deadline is not None and time.monotonic() > deadline:
                    return
                if event is not None:
                    quiet = 0
                    yield sse_message(event)
                    continue
                if svc.draining.is_set():
                    return  # shutting down: the client resumes elsewhere from its last id
                quiet += 1
                if quiet >= KEEPALIVE_EVERY:
                    quiet = 0
                    yield b": keep-alive\n\n"

        return StreamingResponse(
            messages(),
            media_type=EVENT_STREAM,
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return router
