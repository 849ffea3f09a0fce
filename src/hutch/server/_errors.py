"""API errors: every failure leaves the server as ``{"error": {"code", "message"}}``.

ApiError (status, code, message)
├── Unauthorized            401 unauthorized
├── SandboxNotFound         404 sandbox_not_found
├── ImageNotFoundError      404 image_not_found
├── KeyNotFound             404 key_not_found
├── CodeContextNotFound     404 context_not_found
├── CodeContextDead         409 context_dead
├── CodeContextFailed       409 context_failed (the interpreter did not start: out of memory, ...)
├── ProcessNotFound         404 process_not_found
├── ProcessExists           409 process_exists
├── ProcessNotRunning       409 process_not_running
├── SessionNotFound         404 session_not_found
├── SessionExists           409 session_exists
├── TerminalNotFound        404 terminal_not_found
├── SandboxExists           409 sandbox_exists
├── SandboxNotRunning       409 sandbox_not_running
├── FileError               404/409/403/422/507 file_not_found, is_a_directory, read_only, ...
├── GitError                404/403/502/422 git_branch_not_found, git_auth_failed, ...
├── BucketNotMountedError   404 bucket_not_mounted
├── SandboxExists           409 sandbox_exists
├── SandboxNotRunning       409 sandbox_not_running
├── MountPathBusy           409 mount_path_busy
├── BucketMountFailedError  400 bucket_mount_failed
├── BodyTooLarge            413 body_too_large
├── InvalidRequest          422 invalid_request / invalid_sandbox_id / unknown_language /
│                               language_unavailable
├── ImageInUse              409 image_in_use
├── ImageInvalid            422 image_invalid / image_architecture
├── ImageBuildFailed        422 image_build_failed (in the build's NDJSON stream)
├── SandboxStartFailed      503 sandbox_start_failed (the host could not start it: retry)
├── SandboxStateConflict    409 invalid_state (e.g. pause of a stopped sandbox)
├── SnapshotNotFound        404 snapshot_not_found
├── SnapshotExists          409 snapshot_exists
├── BackupTargetUnreachable 400 backup_target_unreachable (nothing was written)
├── BackupNotFound          404 backup_not_found
├── BackupFailed            502 backup_failed (the stream to/from S3 broke)
├── RegistryFailed          502 registry_error
├── Forbidden               403 forbidden (a member key on an admin route)
├── TeamNotFound            404 team_not_found
├── TeamConflict            409 team_exists / team_not_empty / image_name_taken
├── QuotaExceeded           429 quota_exceeded
├── RateLimited             429 rate_limited (with Retry-After)
├── SandboxUnavailable      503 sandbox_unavailable
├── NodeUnavailableError    503 node_unavailable (several hosts: the sandbox's node is gone)
├── NoCapacity              503 no_capacity (no node has room)
├── CreateBusy              503 create_busy (waited too long for a start slot; Retry-After)
├── NodeNotFound            404 node_not_found
└── InsufficientStorage     507 insufficient_storage (the server's own disk is full)
"""

from __future__ import annotations

import math
from typing import Any

from hutch._wire.errors import STATUS_OF


class ApiError(Exception):
    status = 500
    code = "internal"
    headers: dict[str, str] | None = None  # sent with the error (e.g. Retry-After)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # NB: a code's status comes from the one list (hutch._wire.errors); an unlisted code
        # fails at import, so the SDK and docs/api.md can never miss one.
        if "code" in cls.__dict__:
            cls.status = STATUS_OF[cls.code]

    def __init__(self, message: str, *, code: str | None = None, fields: list[Any] | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.fields = fields

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.fields is not None:
            error["fields"] = self.fields
        return {"error": error}


class Unauthorized(ApiError):
    code = "unauthorized"


class SandboxNotFound(ApiError):
    code = "sandbox_not_found"

    def __init__(self, sandbox_id: str) -> None:
        super().__init__(
            f"no sandbox with id {sandbox_id!r}; list sandboxes with GET /v1/sandboxes "
            "(`hutch ls`) or create one"
        )


class PortNotExposed(ApiError):
    code = "port_not_exposed"


class ImageNotFoundError(ApiError):
    code = "image_not_found"


class KeyNotFound(ApiError):
    code = "key_not_found"


class CodeContextNotFound(ApiError):
    code = "context_not_found"


class CodeContextDead(ApiError):
    code = "context_dead"


class CodeContextFailed(ApiError):
    code = "context_failed"


class SandboxExists(ApiError):
    code = "sandbox_exists"


class SandboxNotRunning(ApiError):
    code = "sandbox_not_running"


class RuntimeUnsupported(ApiError):
    """What the sandbox's runtime cannot do (gVisor's limits: docs/security.md)."""

    code = "runtime_unsupported"


class FileError(ApiError):
    """A file op failed inside the sandbox; the status goes with the agent's code."""

    def __init__(self, message: str, *, code: str, status: int) -> None:
        super().__init__(message, code=code)
        self.status = status


class GitError(ApiError):
    """``git clone`` in the sandbox failed; the code says why."""

    def __init__(self, message: str, *, code: str, status: int) -> None:
        super().__init__(message, code=code)
        self.status = status


class BodyTooLarge(ApiError):
    code = "body_too_large"


class InvalidRequest(ApiError):
    code = "invalid_request"


class ImageBuildFailed(ApiError):
    """A build step failed; the stream's error carries the step's `output_tail`."""

    code = "image_build_failed"


class SandboxStartFailed(ApiError):
    # NB: 503, not 500: the request was fine; the host could not start a sandbox now (out
    # of memory, keys, addresses...). A client may retry, or try another host.
    code = "sandbox_start_failed"


class SandboxStateConflict(ApiError):
    code = "invalid_state"


class SnapshotNotFound(ApiError):
    code = "snapshot_not_found"


class SnapshotExists(ApiError):
    code = "snapshot_exists"


class SandboxUnavailable(ApiError):
    code = "sandbox_unavailable"


class ImageInUse(ApiError):
    code = "image_in_use"


class ImageInvalid(ApiError):
    code = "image_invalid"


class RegistryFailed(ApiError):
    code = "registry_error"


class ProcessNotFound(ApiError):
    code = "process_not_found"


class ProcessNotRunning(ApiError):
    code = "process_not_running"


class ProcessExists(ApiError):
    code = "process_exists"


class SessionNotFound(ApiError):
    code = "session_not_found"


class SessionExists(ApiError):
    code = "session_exists"


class BucketNotMountedError(ApiError):
    code = "bucket_not_mounted"


class MountPathBusy(ApiError):
    code = "mount_path_busy"


class BucketMountFailedError(ApiError):
    """rclone could not reach the bucket with what the client sent: nothing was mounted."""

    code = "bucket_mount_failed"


class BackupTargetUnreachable(ApiError):
    code = "backup_target_unreachable"


class BackupNotFound(ApiError):
    code = "backup_not_found"


class BackupStreamFailed(ApiError):
    code = "backup_failed"


class TerminalNotFound(ApiError):
    code = "terminal_not_found"


class Forbidden(ApiError):
    code = "forbidden"


class TeamNotFound(ApiError):
    code = "team_not_found"


class TeamConflict(ApiError):
    code = "team_exists"


class QuotaExceeded(ApiError):
    code = "quota_exceeded"


class RateLimited(ApiError):
    """Sent with ``Retry-After`` (whole seconds until the key's bucket holds a token)."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        seconds = min(retry_after, 86_400.0) if math.isfinite(retry_after) else 86_400.0
        self.headers = {"Retry-After": str(max(1, math.ceil(seconds)))}


class NodeUnavailableError(ApiError):
    code = "node_unavailable"


class NoCapacity(ApiError):
    code = "no_capacity"


class CreateBusy(ApiError):
    """Sent with ``Retry-After``: the create waited its turn to start too long (nothing made)."""

    code = "create_busy"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}


class NodeNotFound(ApiError):
    code = "node_not_found"


class InsufficientStorage(ApiError):
    code = "insufficient_storage"
