"""Hutch: self-hosted, isolated Linux sandboxes for untrusted code.

``from hutch import Sandbox, AsyncSandbox, HutchError, ...`` — the SDK's names, see
:mod:`hutch.sdk`. They are imported on first use: the agent inside a sandbox imports
``hutch._wire`` through this package with nothing but the standard library available.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hutch.sdk import (
        APIError,
        ApiKey,
        AsyncClient,
        AsyncProcess,
        AsyncSandbox,
        AsyncSession,
        AsyncTerminal,
        AuthenticationError,
        Backup,
        BucketMount,
        BucketMountFailed,
        Client,
        CodeContext,
        CodeEvent,
        CommandTimeout,
        ConfigurationError,
        Conflict,
        ConnectionConfig,
        ContextNotFound,
        ExecEvent,
        ExecResult,
        Execution,
        ExecutionError,
        FileInfo,
        FileNotFound,
        GitCheckout,
        GitError,
        HutchConnectionError,
        HutchError,
        ImageBuildFailed,
        ImageDetail,
        ImageInfo,
        ImageNotFound,
        InvalidRequest,
        LogEvent,
        Logs,
        MetricsPoint,
        NotFoundError,
        PayloadTooLarge,
        Process,
        ProcessExited,
        ProcessInfo,
        ProcessLogs,
        ProcessNotFound,
        ProcessNotRunning,
        ProcessTimeout,
        RegistryError,
        Result,
        Sandbox,
        SandboxInfo,
        SandboxMetrics,
        SandboxNotFound,
        SandboxUnavailable,
        ServerError,
        Session,
        SessionNotFound,
        Snapshot,
        Terminal,
        WatchEvent,
    )

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
    "RegistryError",
    "Result",
    "Sandbox",
    "SandboxInfo",
    "SandboxMetrics",
    "SandboxNotFound",
    "SandboxUnavailable",
    "ServerError",
    "Session",
    "SessionNotFound",
    "Snapshot",
    "Terminal",
    "WatchEvent",
]


def __getattr__(name: str) -> Any:
    # PEP 562: import the SDK (and httpx with it) only when one of its names is used.
    if name in __all__:
        value = getattr(importlib.import_module("hutch.sdk"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hutch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
