"""Who a data-plane call is for: the sandbox (routing header) and the user (Basic auth)."""

from __future__ import annotations

import base64
from collections.abc import Mapping

from connectrpc.code import Code
from connectrpc.errors import ConnectError

DEFAULT_USER = "user"  # E2B's default user
E2B_HOME = "/home/user"  # its home: where relative paths start and commands run


def in_home(path: str, user: str | None = None) -> str:
    """E2B resolves relative paths against the user's home (root's is /root), not Hutch's
    /workspace."""
    if path.startswith("/"):
        return path
    return f"{'/root' if user == 'root' else E2B_HOME}/{path}"


SANDBOX_HEADER = "e2b-sandbox-id"
PORT_HEADER = "e2b-sandbox-port"
ENVD_PORT = 49983
INTERPRETER_PORT = 49999


def sandbox_of(headers: Mapping[str, str]) -> str:
    sandbox_id = headers.get(SANDBOX_HEADER)
    if not sandbox_id:
        raise ConnectError(Code.INVALID_ARGUMENT, "send the sandbox id in E2b-Sandbox-Id")
    return sandbox_id


def user_of(headers: Mapping[str, str]) -> str:
    """envd takes the user from ``Authorization: Basic base64("user:")``; none: the default."""
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() != "basic" or not value:
        return DEFAULT_USER
    try:
        name = base64.b64decode(value, validate=True).decode().partition(":")[0]
    except ValueError:  # not base64, not ASCII (a header is latin-1), or not UTF-8
        raise ConnectError(
            Code.INVALID_ARGUMENT, "Authorization must be Basic base64('user:')"
        ) from None
    return name or DEFAULT_USER


class Users:
    """Runs E2B's default user as root in images that have no ``user`` account yet (Hutch's
    default image gains one with issue 23); remembers per sandbox which it was."""

    def __init__(self) -> None:
        self._missing: set[str] = set()

    def effective(self, sandbox_id: str, user: str) -> str | None:
        if user == DEFAULT_USER and sandbox_id in self._missing:
            return None
        return user

    def mark_missing(self, sandbox_id: str) -> None:
        self._missing.add(sandbox_id)

    def forget(self, sandbox_id: str) -> None:
        self._missing.discard(sandbox_id)
