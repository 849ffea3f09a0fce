"""The Hutch Python SDK: sandboxes on a Hutch server, from sync or async code::

    from hutch import Sandbox

    with Sandbox.create() as sb:
        print(sb.run("python", ["-c", "print(1 + 1)"]).stdout)

The server is found at ``base_url=`` or ``$HUTCH_URL`` (default ``http://127.0.0.1:7070``),
with the API key ``api_key=`` or ``$HUTCH_API_KEY``.
"""

from hutch.sdk._async import AsyncClient, AsyncSandbox
from hutch.sdk._config import ConnectionConfig
from hutch.sdk._exceptions import (
    APIError,
    AuthenticationError,
    BucketMountFailed,
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
    SandboxNotFound,
    SandboxUnavailable,
    ServerError,
)
from hutch.sdk._models import ApiKey, BucketMount, ExecEvent, ExecResult, ImageInfo, SandboxInfo
from hutch.sdk._sync import Client, Sandbox

__all__ = [
    "APIError",
    "ApiKey",
    "AsyncClient",
    "AsyncSandbox",
    "AuthenticationError",
    "BucketMount",
    "BucketMountFailed",
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
    "NotFoundError",
    "PayloadTooLarge",
    "Sandbox",
    "SandboxInfo",
    "SandboxNotFound",
    "SandboxUnavailable",
    "ServerError",
]
