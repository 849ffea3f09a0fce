"""The events of a sandbox's life, as `GET /v1/sandboxes/{id}/events` sends them (SSE) and
the SDK's `sb.events()` yields them. One list for the server, the SDK and the docs."""

from __future__ import annotations

from typing import Literal, get_args

SandboxEventType = Literal[
    "created",  # the sandbox exists (its first event)
    "started",  # its agent runs: after create, and after a start of a stopped sandbox
    "paused",  # frozen (data: reason)
    "resumed",  # a paused sandbox runs again
    "stopped",  # its processes ended, its disk is kept (data: reason)
    "oom_killed",  # the OOM killer ended a process of it (data: pid, command, count)
    "error",  # it went to `error` (data: reason)
    "destroyed",  # it is gone (its last event)
]
SANDBOX_EVENT_TYPES: tuple[str, ...] = get_args(SandboxEventType)
