"""envd access tokens: an HMAC of the sandbox id under a key kept in HUTCH_HOME.

Derived, not stored, so a restarted server checks the tokens it handed out before, and a
token for one sandbox is worth nothing for another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_FILE = "e2b-envd.key"


class AccessTokens:
    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def open(cls, home: Path) -> AccessTokens:
        path = home / KEY_FILE
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
            os.replace(tmp, path)
        return cls(path.read_bytes())

    def token_for(self, sandbox_id: str) -> str:
        return hmac.new(self._key, b"envd:" + sandbox_id.encode(), hashlib.sha256).hexdigest()

    def traffic_token_for(self, sandbox_id: str) -> str:
        """E2B's traffic token: reaches the sandbox's ports through the preview proxy (and
        the interpreter's), never envd."""
        return hmac.new(self._key, b"traffic:" + sandbox_id.encode(), hashlib.sha256).hexdigest()

    def is_valid(self, sandbox_id: str, token: str | None) -> bool:
        return _same(self.token_for(sandbox_id), token)

    def is_valid_traffic(self, sandbox_id: str, token: str | None) -> bool:
        return _same(self.traffic_token_for(sandbox_id), token)

    def signature(self, sandbox_id: str, path: str, operation: str, user: str, expires: int) -> str:
        """A signed-URL signature for /files (``read`` or ``write``), bound to the path,
        user and expiry, so a leaked URL opens one file for a while, nothing else."""
        raw = f"{path}:{operation}:{user}:{self.token_for(sandbox_id)}"
        if expires:
            raw += f":{expires}"
        digest = hashlib.sha256(raw.encode()).digest()
        return "v1_" + base64.b64encode(digest).rstrip(b"=").decode("ascii")


def _same(expected: str, token: str | None) -> bool:
    # compare_digest refuses non-ASCII str: a header may hold any latin-1 text.
    return bool(token) and hmac.compare_digest(expected.encode(), (token or "").encode())
