"""Sandbox secrets, encrypted at rest.

A secret is a named value (an API key, a token) that a sandbox's processes get as an
environment variable. Hutch keeps it:

- encrypted in the state database (Fernet: AES-128-CBC + HMAC-SHA256) with a key that lives in
  ``HUTCH_HOME/secrets.key`` (mode 0600, created at first start). A copy of ``hutch.db`` alone
  does not reveal a secret; a copy of the key file and the database does.
- out of the container's ``config.json``: the server hands the values to the sandbox's agent
  over its socket (``set_secrets``), and the agent keeps them in memory for the environment of
  every process it starts. A container restart gets them again on the next connection.
- out of every API response and log line: only names are returned (``secret_names``).

Trade-off: a secret given to a sandbox is readable by any process in it (``env``, ``/proc``).
Give a sandbox only the secrets the code it runs may see. Keys that must never enter the
sandbox belong in the egress path (header injection), see docs/agents.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

KEY_FILE_NAME = "secrets.key"


class SecretBox:
    """Encrypts and decrypts secret values with the server's key."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    @classmethod
    def open(cls, home: Path) -> SecretBox:
        """Load ``home/secrets.key``, creating it (0600) at first start."""
        path = home / KEY_FILE_NAME
        home.mkdir(parents=True, exist_ok=True)
        try:
            # NB: O_EXCL + mode at creation: the key is never readable by others, not even
            # between create and chmod, and two servers starting at once cannot both write one.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)
            return cls(path.read_bytes().strip())
        key = Fernet.generate_key()
        with os.fdopen(fd, "wb") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        return cls(key)

    def seal(self, secrets: Mapping[str, str]) -> dict[str, bytes]:
        # The name is bound into the ciphertext so rows cannot be swapped between names.
        return {
            name: self._fernet.encrypt(f"{name}\0{value}".encode())
            for name, value in secrets.items()
        }

    def open_all(self, sealed: Mapping[str, bytes]) -> dict[str, str]:
        values: dict[str, str] = {}
        for name, token in sealed.items():
            try:
                plain = self._fernet.decrypt(token).decode()
            except InvalidToken:
                raise SecretKeyMismatch(
                    f"secret {name!r} cannot be decrypted: {KEY_FILE_NAME} in HUTCH_HOME is not "
                    "the key it was stored with"
                ) from None
            bound, _, value = plain.partition("\0")
            if bound != name:
                raise SecretKeyMismatch(f"secret {name!r} is stored under the wrong name")
            values[name] = value
        return values


class SecretKeyMismatch(Exception):
    """A stored secret does not decrypt with this server's key."""
