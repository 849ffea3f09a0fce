"""API errors: every failure leaves the server as ``{"error": {"code", "message"}}``.

ApiError (status, code, message)
├── Unauthorized            401 unauthorized
├── SandboxNotFound         404 sandbox_not_found
├── ImageNotFoundError      404 image_not_found
├── KeyNotFound             404 key_not_found
├── CodeContextNotFound     404 context_not_found
├── CodeContextDead         409 context_dead
├── ProcessNotFound         404 process_not_found
├── ProcessExists           409 process_exists
├── ProcessNotRunning       409 process_not_running
├── SessionNotFound         404 session_not_found
├── SessionExists           409 session_exists
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
└── SandboxUnavailable      503 sandbox_unavailable
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    status = 500
    code = "internal"

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
    status = 401
    code = "unauthorized"


class SandboxNotFound(ApiError):
    status = 404
    code = "sandbox_not_found"

    def __init__(self, sandbox_id: str) -> None:
        super().__init__(
            f"no sandbox with id {sandbox_id!r}; list sandboxes with GET /v1/sandboxes "
            "(`hutch ls`) or create one"
        )


class PortNotExposed(ApiError):
    status = 404
    code = "port_not_exposed"


class ImageNotFoundError(ApiError):
    status = 404
    code = "image_not_found"


class KeyNotFound(ApiError):
    status = 404
    code = "key_not_found"


class CodeContextNotFound(ApiError):
    status = 404
    code = "context_not_found"


class CodeContextDead(ApiError):
    status = 409
    code = "context_dead"


class SandboxExists(ApiError):
    status = 409
    code = "sandbox_exists"


class SandboxNotRunning(ApiError):
    status = 409
    code = "sandbox_not_running"


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
    status = 413
    code = "body_too_large"


class InvalidRequest(ApiError):
    status = 422
    code = "invalid_request"


class ImageBuildFailed(ApiError):
    """A build step failed; the stream's error carries the step's `output_tail`."""

    status = 422
    code = "image_build_failed"


class SandboxStartFailed(ApiError):
    # NB: 503, not 500: the request was fine; the host could not start a sandbox now (out
    # of memory, keys, addresses...). A client may retry, or try another host.
    status = 503
    code = "sandbox_start_failed"


class SandboxStateConflict(ApiError):
    status = 409
    code = "invalid_state"


class SnapshotNotFound(ApiError):
    status = 404
    code = "snapshot_not_found"


class SnapshotExists(ApiError):
    status = 409
    code = "snapshot_exists"


class SandboxUnavailable(ApiError):
    status = 503
    code = "sandbox_unavailable"


class ImageInUse(ApiError):
    status = 409
    code = "image_in_use"


class ImageInvalid(ApiError):
    status = 422
    code = "image_invalid"


class RegistryFailed(ApiError):
    status = 502
    code = "registry_error"


class ProcessNotFound(ApiError):
    status = 404
    code = "process_not_found"


class ProcessNotRunning(ApiError):
    status = 409
    code = "process_not_running"


class ProcessExists(ApiError):
    status = 409
    code = "process_exists"


class SessionNotFound(ApiError):
    status = 404
    code = "session_not_found"


class SessionExists(ApiError):
    status = 409
    code = "session_exists"


class BucketNotMountedError(ApiError):
    status = 404
    code = "bucket_not_mounted"


class MountPathBusy(ApiError):
    status = 409
    code = "mount_path_busy"


class BucketMountFailedError(ApiError):
    """rclone could not reach the bucket with what the client sent: nothing was mounted."""

    status = 400
    code = "bucket_mount_failed"


class BackupTargetUnreachable(ApiError):
    status = 400
    code = "backup_target_unreachable"


class BackupNotFound(ApiError):
    status = 404
    code = "backup_not_found"


class BackupStreamFailed(ApiError):
    status = 502
    code = "backup_failed"
