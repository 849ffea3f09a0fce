"""The Hutch Python SDK: sandboxes on a Hutch server, from sync or async code::

    from hutch import Sandbox

    with Sandbox.create() as sb:
        print(sb.run("python", ["-c", "print(1 + 1)"]).stdout)

The server is found at ``base_url=`` or ``$HUTCH_URL`` (default ``http://127.0.0.1:7070``),
with the API key ``api_key=`` or ``$HUTCH_API_KEY``.
"""

from hutch.sdk._async import AsyncClient, AsyncSandbox, AsyncTerminal
from hutch.sdk._async.processes import AsyncProcess
from hutch.sdk._async.sessions import AsyncSession
from hutch.sdk._code import CodeContext, CodeEvent, Execution, ExecutionError, Logs, Result
from hutch.sdk._config import ConnectionConfig
from hutch.sdk._events import SandboxEvent
from hutch.sdk._exceptions import (
    APIError,
    AuthenticationError,
    BucketMountFailed,
    CommandTimeout,
    ConfigurationError,
    Conflict,
    ContextNotFound,
    CwdNotFound,
    FileNotFound,
    GitError,
    HutchConnectionError,
    HutchError,
    ImageBuildFailed,
    ImageNotFound,
    InvalidRequest,
    NotFoundError,
    PayloadTooLarge,
    ProcessExited,
    ProcessNotFound,
    ProcessNotRunning,
    ProcessTimeout,
    QuotaExceeded,
    RateLimited,
    RegistryError,
    SandboxNotFound,
    SandboxUnavailable,
    ServerError,
    SessionNotFound,
    StorageFull,
    UserNotFound,
)
from hutch.sdk._files import FileInfo, GitCheckout, WatchEvent
from hutch.sdk._models import (
    ApiKey,
    Backup,
    BucketMount,
    ExecEvent,
    ExecResult,
    ImageDetail,
    ImageInfo,
    MetricsPoint,
    SandboxInfo,
    SandboxMetrics,
    Snapshot,
    Team,
)
from hutch.sdk._procs import LogEvent, ProcessInfo, ProcessLogs
from hutch.sdk._sync import Client, Sandbox, Terminal
from hutch.sdk._sync.processes import Process
from hutch.sdk._sync.sessions import Session

__all__ = [
    "APIError",
    "ApiKey",
    "AsyncClient",
    "AsyncProcess",
    "AsyncSandbox",
    "AsyncSession",
    "AsyncTerminal",
    "AuthenticationError",
    "Backup",
    "BucketMount",
    "BucketMountFailed",
    "Client",
    "CodeContext",
    "CodeEvent",
    "CommandTimeout",
    "ConfigurationError",
    "Conflict",
    "ConnectionConfig",
    "ContextNotFound",
    "CwdNotFound",
    "ExecEvent",
    "ExecResult",
    "Execution",
    "ExecutionError",
    "FileInfo",
    "FileNotFound",
    "GitCheckout",
    "GitError",
    "HutchConnectionError",
    "HutchError",
    "ImageBuildFailed",
    "ImageDetail",
    "ImageInfo",
    "ImageNotFound",
    "InvalidRequest",
    "LogEvent",
    "Logs",
    "MetricsPoint",
    "NotFoundError",
    "PayloadTooLarge",
    "Process",
    "ProcessExited",
    "ProcessInfo",
    "ProcessLogs",
    "ProcessNotFound",
    "ProcessNotRunning",
    "ProcessTimeout",
    "QuotaExceeded",
    "RateLimited",
    "RegistryError",
    "Result",
    "Sandbox",
    "SandboxEvent",
    "SandboxInfo",
    "SandboxMetrics",
    "SandboxNotFound",
    "SandboxUnavailable",
    "ServerError",
    "Session",
    "SessionNotFound",
    "Snapshot",
    "StorageFull",
    "Team",
    "Terminal",
    "UserNotFound",
    "WatchEvent",
]
