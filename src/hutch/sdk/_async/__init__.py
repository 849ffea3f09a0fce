"""Sandbox and client classes. The async code is the source; scripts/unasync.py writes the sync."""

from hutch.sdk._async.client import AsyncClient
from hutch.sdk._async.sandbox import AsyncSandbox

__all__ = ["AsyncClient", "AsyncSandbox"]
