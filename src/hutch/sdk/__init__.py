"""The Hutch Python SDK: sandboxes on a Hutch server, from sync or async code::

    from hutch import Sandbox

    with Sandbox.create() as sb:
        print(sb.run("python", ["-c", "print(1 + 1)"]).stdout)

The server is found at ``base_url=`` or ``$HUTCH_URL`` (default ``http://127.0.0.1:7070``),
with the API key ``api_key=`` or ``$HUTCH_API_KEY``.
"""

from hutch.sdk._async import AsyncClient, AsyncSandbox
from hutch.sdk._async.processes import AsyncProcess
from hutch.sdk._async.sessions import AsyncSession
from hutch.sdk._config import ConnectionConfig
from hutch.sdk._exceptions import (
    APIError,
    AuthenticationError,
    CommandTimeout,
    ConfigurationError,
    Conflict,
    FileNotFound,
    HutchConnectionError,
    HutchError,
    ImageNotFound,
    InvalidRequest,
    NotFoundError,
    PayloadTooLarge,
    ProcessExited,
    ProcessNotFound,
    ProcessNotRunning,
    ProcessTimeout,
    SandboxNotFound,
    SandboxUnavailable,
    ServerError,
    SessionNotFound,
)
from hutch.sdk._models import ApiKey, ExecEvent, ExecResult, ImageInfo, SandboxInfo
from hutch.sdk._procs import LogEvent, ProcessInfo, ProcessLogs
from hutch.sdk._sync import Client, Sandbox
from hutch.sdk._sync.processes import Process
from hutch.sdk._sync.sessions import Session

__all__ = [
    "APIError",
    "ApiKey",
    "AsyncClient",
    "AsyncProcess",
    "AsyncSandbox",
    "AsyncSession",
    "AuthenticationError",
    "Client",
    "CommandTimeout",
    "ConfigurationError",
    "Conflict",
    "ConnectionConfig",
    "ExecEvent",
    "ExecResult",
    "FileNotFound",
    "HutchConnectionError",
    "HutchError",
    "ImageInfo",
    "ImageNotFound",
    "InvalidRequest",
    "LogEvent",
    "NotFoundError",
    "PayloadTooLarge",
    "Process",
    "ProcessExited",
    "ProcessInfo",
    "ProcessLogs",
    "ProcessNotFound",
    "ProcessNotRunning",
    "ProcessTimeout",
    "Sandbox",
    "SandboxInfo",
    "SandboxNotFound",
    "SandboxUnavailable",
    "ServerError",
    "Session",
    "SessionNotFound",
]
