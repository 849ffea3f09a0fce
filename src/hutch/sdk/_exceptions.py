"""Exceptions raised by the Hutch SDK.

One tree, rooted at :class:`HutchError`::

    HutchError
    ├── APIError                        the server answered with an error (status, code, message)
    │   ├── AuthenticationError         401 unauthorized
    │   ├── NotFoundError               404 not_found, port_not_exposed
    │   │   ├── SandboxNotFound         404 sandbox_not_found
    │   │   ├── ImageNotFound           404 image_not_found
    │   │   ├── ProcessNotFound         404 process_not_found
    │   │   ├── SessionNotFound         404 session_not_found
    │   │   ├── FileNotFound            404 file_not_found       (also a FileNotFoundError)
    │   │   ├── ContextNotFound         404 context_not_found
    │   │   └── (NotFoundError)         404 bucket_not_mounted, snapshot_not_found
    │   ├── Conflict                    409 sandbox_exists, sandbox_not_running, *_exists,
    │   │   │                               image_in_use, context_dead, context_failed, read_only,
    │   │   │                               mount_path_busy,
    │   │   │                               invalid_state (e.g. pause of a stopped sandbox),
    │   │   │                               is_a_directory, not_a_directory, ...
    │   │   └── ProcessNotRunning       409 process_not_running
    │   ├── BucketMountFailed           400 bucket_mount_failed (nothing mounted),
    │   │                                   backup_target_unreachable (nothing written)
    │   ├── GitError                        git_checkout failed: git_branch_not_found, ...
    │   ├── PayloadTooLarge             413 body_too_large
    │   ├── QuotaExceeded               429 quota_exceeded (a team quota; the message names it)
    │   ├── RateLimited                 429 rate_limited (retry_after: seconds to wait)
    │   ├── InvalidRequest              422 invalid_request, invalid_sandbox_id, invalid_path,
    │   │                                   invalid_port
    │   │                                   (also a ValueError)
    │   │   ├── ImageBuildFailed        422 image_build_failed (output_tail: the step's output)
    │   │   ├── CwdNotFound             422 cwd_not_found (the working directory is missing)
    │   │   └── UserNotFound            422 user_not_found (no such user in the image)
    │   ├── StorageFull                 507 no_space (the sandbox's quota), insufficient_storage
    │   │                                   (the server's disk) (also an OSError)
    │   ├── ServerError                 500 internal (and any other 5xx)
    │   │   └── RegistryError           502 registry_error (the registry's message)
    │   └── SandboxUnavailable          503 sandbox_unavailable, sandbox_start_failed,
    │                                       create_busy (once the SDK's own retries ran out)
    ├── CommandTimeout                  a command ran past its timeout (also a TimeoutError)
    ├── ProcessTimeout                  a wait on a process ran out of time (also a TimeoutError)
    ├── ProcessExited                   a process ended before what was waited for happened
    ├── ConfigurationError              bad base_url / api_key given to the SDK (also a ValueError)
    └── HutchConnectionError            the server could not be reached (also a ConnectionError)

The server puts a stable ``code`` in every error body; :data:`ERROR_CODES` maps it to a class
and codes this SDK does not know yet fall back to the class for the HTTP status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hutch._wire.errors import ERRORS

if TYPE_CHECKING:
    from hutch.sdk._models import ExecResult


class HutchError(Exception):
    """Base class of every error the Hutch SDK raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class APIError(HutchError):
    """The server answered a request with an error.

    Attributes:
        status: The HTTP status code (for errors that arrive inside a stream, the status the
            server uses for that ``code``).
        code: The stable machine-readable error code, e.g. ``"sandbox_not_found"``.
        message: What was wrong and what to do, as written by the server.
        fields: For validation errors, the offending fields:
            ``[{"loc": [...], "message": "..."}]``.
        request_id: The server's id of the request (its ``X-Request-Id``), to quote to
            whoever reads the server's logs; ``None`` if the server sent none.
    """

    request_id: str | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str,
        fields: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.fields: list[dict[str, Any]] = [dict(f) for f in fields]

    def __str__(self) -> str:
        text = f"{self.message} ({self.code})"
        # NB: the server's message often names the fields already: say each only once.
        details = [d for d in map(_describe_field, self.fields) if d not in self.message]
        if details:
            text += ": " + "; ".join(details)
        return text


class AuthenticationError(APIError):
    """The API key is missing or wrong (HTTP 401)."""


class NotFoundError(APIError):
    """The thing asked for does not exist (HTTP 404)."""


class SandboxNotFound(NotFoundError):
    """No sandbox has this id (it was never created, or it was destroyed)."""


class ImageNotFound(NotFoundError):
    """No image has this name."""


class FileNotFound(NotFoundError, FileNotFoundError):
    """A path inside the sandbox does not exist."""


class ContextNotFound(NotFoundError):
    """No code context with that id in the sandbox (``context_not_found``)."""


class Conflict(APIError):
    """The request conflicts with the sandbox's state (HTTP 409).

    For example a create with an id that is taken (``sandbox_exists``) or a command sent to a
    sandbox that is not running (``sandbox_not_running``); see :attr:`APIError.code`.
    """


class ProcessNotFound(NotFoundError):
    """No background process has this id in the sandbox."""


class SessionNotFound(NotFoundError):
    """No session has this id in the sandbox."""


class ProcessNotRunning(Conflict):
    """The process has ended (or its stdin is closed), so it cannot take input."""


class ProcessTimeout(HutchError, TimeoutError):
    """A wait on a background process (``wait``, ``wait_for_log``, ``wait_for_port``) ran out of
    time. The process keeps running; :attr:`process` is its state at that moment."""

    def __init__(self, message: str, process: Any = None) -> None:
        super().__init__(message)
        self.process = process


class ProcessExited(HutchError):
    """The process ended before what was waited for happened; :attr:`process` says how."""

    def __init__(self, message: str, process: Any = None) -> None:
        super().__init__(message)
        self.process = process


class BucketMountFailed(APIError):
    """The server could not reach the bucket with the credentials, bucket name and endpoint
    given (HTTP 400); nothing was mounted."""


class PayloadTooLarge(APIError):
    """The request body is over the server's limit (HTTP 413)."""


class QuotaExceeded(APIError):
    """A create (or snapshot) over one of the team's quotas; the message names the limit and
    the use. Destroy or stop sandboxes, or ask an admin to raise it."""


class RateLimited(APIError):
    """Too many requests with this key; wait and retry (the server's ``Retry-After``)."""


class InvalidRequest(APIError, ValueError):
    """The request was malformed (HTTP 422); :attr:`APIError.fields` says where."""


class ImageBuildFailed(InvalidRequest):
    """A step of an image build failed; :attr:`output_tail` holds the last lines it printed."""

    output_tail: list[str] = []


class GitError(APIError):
    """``git_checkout`` failed; :attr:`APIError.code` says why: ``git_branch_not_found``,
    ``git_repository_not_found``, ``git_auth_failed``, ``git_unreachable`` or ``git_failed``."""


class CwdNotFound(InvalidRequest):
    """The working directory given to a command, process or terminal does not exist."""


class UserNotFound(InvalidRequest):
    """The user (or group) given to a command or process is not in the image."""


class StorageFull(APIError, OSError):
    """No space: the sandbox's disk quota is full (``no_space``: delete files in it, or
    create it with a larger ``disk_mb``), or the server's own disk is
    (``insufficient_storage``: nothing was changed; tell the operator)."""


class ServerError(APIError):
    """The server failed (HTTP 5xx). This is a bug in Hutch; please report it."""


class RegistryError(ServerError):
    """The registry refused a pull or could not be reached (HTTP 502); the message is its."""


class SandboxUnavailable(APIError):
    """The sandbox exists but its agent did not answer (HTTP 503). Retrying may help."""


class CommandTimeout(HutchError, TimeoutError):
    """A command ran past the ``timeout`` it was given and was killed, with its whole process tree.

    Attributes:
        result: What the command wrote before it was killed (``exit_code`` 124,
            ``timed_out`` true).
    """

    def __init__(self, message: str, *, result: ExecResult) -> None:
        super().__init__(message)
        self.result = result


class ConfigurationError(HutchError, ValueError):
    """The SDK was given a connection setting it cannot use (e.g. a malformed ``base_url``)."""


class HutchConnectionError(HutchError, ConnectionError):
    """The Hutch server could not be reached, or the connection to it broke mid-answer."""


_STATUS_CLASSES: Mapping[int, type[APIError]] = {
    400: InvalidRequest,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidRequest,
    503: SandboxUnavailable,
}

# The class of each code whose class is not its status's (_STATUS_CLASSES).
_CODE_CLASSES: Mapping[str, type[APIError]] = {
    "sandbox_not_found": SandboxNotFound,
    "image_not_found": ImageNotFound,
    "file_not_found": FileNotFound,
    "context_not_found": ContextNotFound,
    "process_not_found": ProcessNotFound,
    "process_not_running": ProcessNotRunning,
    "session_not_found": SessionNotFound,
    "bucket_mount_failed": BucketMountFailed,
    "backup_target_unreachable": BucketMountFailed,  # a bucket the backup cannot reach
    "permission_denied": APIError,  # 403 from the filesystem, not about the API key
    "no_space": StorageFull,
    "insufficient_storage": StorageFull,
    "cwd_not_found": CwdNotFound,
    "user_not_found": UserNotFound,
    "git_branch_not_found": GitError,
    "git_repository_not_found": GitError,
    "git_auth_failed": GitError,
    "git_unreachable": GitError,
    "git_failed": GitError,
    "git_not_installed": GitError,
    "image_build_failed": ImageBuildFailed,
    "registry_error": RegistryError,
    "quota_exceeded": QuotaExceeded,
    "rate_limited": RateLimited,
}


def _status_class(status: int) -> type[APIError]:
    return _STATUS_CLASSES.get(status) or (ServerError if status >= 500 else APIError)


# wire code -> (exception class, the HTTP status the server sends it with), for every code in
# the one list (hutch._wire.errors).
ERROR_CODES: Mapping[str, tuple[type[APIError], int]] = {
    error.code: (_CODE_CLASSES.get(error.code) or _status_class(error.status), error.status)
    for error in ERRORS
}


def api_error(
    code: str,
    message: str,
    *,
    status: int | None = None,
    fields: Sequence[Mapping[str, Any]] = (),
) -> APIError:
    """Build the exception for a wire error: by ``code`` if known, else by HTTP ``status``."""
    known = ERROR_CODES.get(code)
    if known is not None:
        cls, default_status = known
        return cls(message, status=status or default_status, code=code, fields=fields)
    if status is None:
        return APIError(message, status=500, code=code, fields=fields)
    return _status_class(status)(message, status=status, code=code, fields=fields)


def api_error_from_body(status: int, body: object, text: str = "") -> APIError:
    """Build the exception for a non-2xx HTTP answer.

    Args:
        status: The HTTP status code.
        body: The decoded JSON body, or ``None`` when it was not JSON.
        text: The raw body text, quoted in the message when the body is not Hutch's error shape
            (e.g. a proxy in between answered).
    """
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping):
            code = str(error.get("code") or f"http_{status}")
            message = str(error.get("message") or f"the server answered HTTP {status}")
            fields = error.get("fields") or ()
            exc = api_error(code, message, status=status, fields=_as_fields(fields))
            request_id = error.get("request_id")
            exc.request_id = request_id if isinstance(request_id, str) else None
            return exc
        detail = body.get("detail")  # FastAPI's own shape, should a route slip past the handler
        if isinstance(detail, list):
            return api_error(
                "invalid_request",
                "the request was not valid",
                status=status,
                fields=[
                    {"loc": d.get("loc", []), "message": d.get("msg", "")}
                    for d in detail
                    if isinstance(d, Mapping)
                ],
            )
        if isinstance(detail, str):
            return api_error(f"http_{status}", detail, status=status)
    snippet = " ".join(text.split())[:200]
    message = f"the server answered HTTP {status}" + (f": {snippet}" if snippet else "")
    return api_error(f"http_{status}", message, status=status)


def _as_fields(value: object) -> list[Mapping[str, Any]]:
    if not isinstance(value, list):
        return []
    return [f for f in value if isinstance(f, Mapping)]


def _describe_field(field: Mapping[str, Any]) -> str:
    loc = field.get("loc")
    where = ".".join(str(p) for p in loc) if isinstance(loc, list | tuple) else str(loc or "")
    message = str(field.get("message", ""))
    return f"{where}: {message}" if where else message
