"""Sandbox events: emitted once, from the one place each transition happens (create and
destroy in services/_sandboxes.py, pause/resume/stop/start in services/_lifecycle.py, deaths
and OOM kills in services/_deaths.py), persisted in the event log, and followed live by
`GET /v1/sandboxes/{id}/events`.

A follower reads the log after the last sequence number it sent, then waits for the next
emit in this process, or one second (another API replica may have written it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from hutch._wire.sandbox_events import SandboxEventType
from hutch.server.store._events import EventLog, EventRecord
from hutch.server.store._off_loop import Offloaded, off_loop

log = logging.getLogger("hutch.server")

POLL_EVERY = 1.0  # seconds: how long a follower waits before reading the log again anyway
PRUNE_EVERY = 500  # emits between two prunes of destroyed sandboxes' events


class EventSink(Protocol):
    def emit(self, sandbox_id: str, type: SandboxEventType, **data: Any) -> None: ...
    def emit_many(
        self, sandbox_id: str, *events: tuple[SandboxEventType, dict[str, Any]]
    ) -> None: ...
    async def emit_many_after(
        self,
        store: Offloaded,
        sandbox_id: str,
        write: Callable[[], bool],
        *events: tuple[SandboxEventType, dict[str, Any]],
    ) -> bool: ...


class NoEvents:
    """The sink of a manager with no event log (unit tests of other services)."""

    def emit(self, sandbox_id: str, type: SandboxEventType, **data: Any) -> None:
        return None

    def emit_many(self, sandbox_id: str, *events: tuple[SandboxEventType, dict[str, Any]]) -> None:
        return None

    async def emit_many_after(
        self,
        store: Offloaded,
        sandbox_id: str,
        write: Callable[[], bool],
        *events: tuple[SandboxEventType, dict[str, Any]],
    ) -> bool:
        return await off_loop(store, write)


class SandboxEvents:
    """Emit events into the log and let followers wait for them."""

    def __init__(self, log_: EventLog) -> None:
        self._log = log_
        self._changed: dict[str, asyncio.Event] = {}
        self._emits = 0

    def emit(self, sandbox_id: str, type: SandboxEventType, **data: Any) -> None:
        self.emit_many(sandbox_id, (type, data))

    def emit_many(self, sandbox_id: str, *events: tuple[SandboxEventType, dict[str, Any]]) -> None:
        """Events that happened together (a create's `created` and `started`), in order, in
        one write (one round trip on PostgreSQL)."""
        if self._append(sandbox_id, events):
            self._appended(sandbox_id)

    async def emit_many_after(
        self,
        store: Offloaded,
        sandbox_id: str,
        write: Callable[[], bool],
        *events: tuple[SandboxEventType, dict[str, Any]],
    ) -> bool:
        """`write()` (a transition of `store`'s), then, if it returned True, `emit_many` of
        `events`: both in one call off the event loop (a create's `running` update and its
        events through a replica: one thread hop, and no round trip on the loop). Returns
        what `write` did."""

        def both() -> tuple[bool, bool]:
            if not write():
                return False, False
            return True, self._append(sandbox_id, events)

        wrote, appended = await off_loop(store, both)
        if appended:
            self._appended(sandbox_id)  # NB: on the loop: followers' asyncio events
        return wrote

    def _append(
        self, sandbox_id: str, events: tuple[tuple[SandboxEventType, dict[str, Any]], ...]
    ) -> bool:
        try:
            self._log.append_many(sandbox_id, events, fresh=events[0][0] == "created")
        except Exception:
            # NB: an event is a report, never a reason for a transition to fail (a full disk
            # fails the write; the transition itself already happened).
            kinds = ", ".join(type for type, _ in events)
            log.exception("could not record event %s of sandbox %s", kinds, sandbox_id)
            return False
        return True

    def _appended(self, sandbox_id: str) -> None:
        changed = self._changed.pop(sandbox_id, None)
        if changed is not None:
            changed.set()
        self._emits += 1
        if self._emits % PRUNE_EVERY == 0:
            self.prune()

    def close(self) -> None:
        self._log.close()

    def prune(self) -> None:
        try:
            self._log.prune()
        except Exception:
            log.exception("could not prune the event log")

    def since(self, sandbox_id: str, after: int) -> list[EventRecord]:
        return self._log.since(sandbox_id, after)

    async def follow(
        self, sandbox_id: str, after: int, *, follow: bool = True
    ) -> AsyncIterator[EventRecord | None]:
        """The events after `after`, then (if `follow`) each new one as it comes, until the
        sandbox's `destroyed` event; None after each quiet second (a chance to send a
        keep-alive, or to stop)."""
        while True:
            changed = self._changed.setdefault(sandbox_id, asyncio.Event())
            batch = self._log.since(sandbox_id, after)
            for event in batch:
                after = event.seq
                yield event
                if event.type == "destroyed":
                    return
            if not follow and len(batch) < 500:
                return
            if batch:
                continue
            try:
                await asyncio.wait_for(changed.wait(), POLL_EVERY)
            except TimeoutError:
                yield None
