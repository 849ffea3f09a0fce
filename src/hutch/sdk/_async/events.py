"""A sandbox's events, followed live (``sb.events()``). A dropped connection (a server
restart included) is resumed after the last event seen: none is lost or repeated."""

# ruff: noqa: ASYNC109 -- the timeout is sent to the server, which ends the stream itself.

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

from hutch.sdk._events import EventStreamDecoder, SandboxEvent
from hutch.sdk._exceptions import HutchConnectionError, SandboxUnavailable
from hutch.sdk._procs import RECONNECT_FOR, monotonic
from hutch.sdk._requests import path_segment

if TYPE_CHECKING:
    from hutch.sdk._async.client import AsyncClient


class _Sandbox(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def client(self) -> AsyncClient: ...


async def sandbox_events(
    sb: _Sandbox, after: int = 0, *, follow: bool = True, timeout: float | None = None
) -> AsyncIterator[SandboxEvent]:
    """What happens to the sandbox: created, started, paused, resumed, stopped,
    oom_killed (with the process), error (with the reason), destroyed; oldest first, then
    live. A dropped connection (a server restart included) resumes after the last event
    seen. (``AsyncSandbox.events``.)

    Args:
        after: Only events after this ``seq`` (0: everything kept).
        follow: Wait for new events until the sandbox is destroyed; ``False`` stops at what
            is there.
        timeout: Stop after this many seconds.

    Raises:
        SandboxNotFound: The sandbox does not exist (or is gone already).
    """
    path = f"/v1/sandboxes/{path_segment(sb.id)}/events"
    async for event in follow_events(sb.client, path, after=after, follow=follow, timeout=timeout):
        yield event


async def follow_events(
    client: AsyncClient,
    path: str,
    *,
    after: int,
    follow: bool,
    timeout: float | None,
) -> AsyncIterator[SandboxEvent]:
    deadline = None if timeout is None else monotonic() + timeout
    gave_up_at: float | None = None
    while True:
        params = {"after": str(after), "follow": "true" if follow else "false"}
        if deadline is not None:
            params["timeout"] = str(max(deadline - monotonic(), 0.001))
        decoder = EventStreamDecoder()
        try:
            limit = None if deadline is None else deadline - monotonic()
            async with client.stream("GET", path, params=params, limit=limit) as chunks:
                async for chunk in chunks:
                    gave_up_at = None
                    for event in decoder.feed(chunk):
                        after = event.seq
                        yield event
                        if event.type == "destroyed":
                            return
                    if deadline is not None and monotonic() > deadline:
                        return
        except (HutchConnectionError, SandboxUnavailable):
            now = monotonic()
            if deadline is not None and now > deadline:
                return
            gave_up_at = gave_up_at or now + RECONNECT_FOR
            if now > gave_up_at:
                raise
            await asyncio.sleep(0.2)
            continue
        if not follow or (deadline is not None and monotonic() > deadline):
            return
        # The server ended the stream (it shuts down): resume after the last event seen.
        await asyncio.sleep(0.05)
