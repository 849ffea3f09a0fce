"""Sandbox and client classes. The async code is the source; scripts/unasync.py writes the sync."""

from hutch.sdk._async.client import AsyncClient
from hutch.sdk._async.sandbox import AsyncSandbox
from hutch.sdk._async.terminal import AsyncTerminal

__all__ = ["AsyncClient", "AsyncSandbox", "AsyncTerminal"]
