"""API errors: every failure leaves the server as ``{"error": {"code", "message"}}``.

ApiError (status, code, message)
├── Unauthorized            401 unauthorized
├── SandboxNotFound         404 sandbox_not_found
├── ImageNotFoundError      404 image_not_found
├── KeyNotFound             404 key_not_found
├── SandboxExists           409 sandbox_exists
├── SandboxNotRunning       409 sandbox_not_running
├── BodyTooLarge            413 body_too_large
├── InvalidRequest          422 invalid_request / invalid_sandbox_id
├── SandboxStartFailed      500 sandbox_start_failed
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


class SandboxExists(ApiError):
    status = 409
    code = "sandbox_exists"


class SandboxNotRunning(ApiError):
    status = 409
    code = "sandbox_not_running"


class BodyTooLarge(ApiError):
    status = 413
    code = "body_too_large"


class InvalidRequest(ApiError):
    status = 422
    code = "invalid_request"


class SandboxStartFailed(ApiError):
    status = 500
    code = "sandbox_start_failed"


class SandboxUnavailable(ApiError):
    status = 503
    code = "sandbox_unavailable"
