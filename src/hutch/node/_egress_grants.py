"""A node's egress secrets: what an API replica hands the node that holds a sandbox with
egress rules, so that the node's own egress proxy (node/_egress.py) injects the keys.

On one host the proxy reads a sandbox's sealed secrets from the state database and opens them
with the server's key. A node has neither that key nor any business reading every sandbox's
secrets: the replica opens the sandbox's rules and the secrets they name (only those) and
sends them with the node token (`PUT /node/v1/c/{rid}/egress`). The node keeps them in memory
and, sealed with a key of its own home (`egress.key`, 0600), in `egress-grants/<rid>`, so a
node restart serves running sandboxes again without a replica's help; a stop or a destroy
drops them. As on one host: a copy of a grant file alone does not reveal a secret.

It is both the proxy's `SealedSecrets` and its `SecretOpener`: "sealed" here are the values
as bytes, already in this node's memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from hutch.node._egress_rules import RULES_NAME, read_rules


class EgressGrants:
    def __init__(self, home: Path) -> None:
        self._dir = home / "egress-grants"
        self._key_file = home / "egress.key"
        self._held: dict[str, dict[str, str]] = {}
        self._fernet: Fernet | None = None

    def _box(self) -> Fernet:
        if self._fernet is None:
            try:
                # NB: O_EXCL + mode at creation: never readable by others, even for a moment.
                fd = os.open(self._key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                self._fernet = Fernet(self._key_file.read_bytes().strip())
            else:
                key = Fernet.generate_key()
                with os.fdopen(fd, "wb") as f:
                    f.write(key)
                self._fernet = Fernet(key)
        return self._fernet

    @staticmethod
    def check(secrets: Mapping[str, str]) -> dict[str, str]:
        """The grant a replica sent, if it is one: rules, and every secret they name.

        Raises:
            ValueError: no rules, unreadable rules, or a secret a rule names is missing.
        """
        values = {str(k): str(v) for k, v in secrets.items()}
        try:
            rules = read_rules(values.get(RULES_NAME, "[]"))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"unreadable egress rules: {exc}") from None
        if not rules:
            raise ValueError("an egress grant needs its rules")
        missing = sorted({r.secret for r in rules} - set(values))
        if missing:
            raise ValueError(f"the egress grant lacks the secrets its rules name: {missing}")
        return values

    def put(self, runtime_id: str, secrets: Mapping[str, str]) -> None:
        values = self.check(secrets)
        self._dir.mkdir(mode=0o700, exist_ok=True)
        sealed = self._box().encrypt(f"{runtime_id}\0{json.dumps(values)}".encode())
        tmp = self._dir / f".{runtime_id}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(sealed)
        tmp.replace(self._dir / runtime_id)
        self._held[runtime_id] = values

    def drop(self, runtime_id: str) -> None:
        self._held.pop(runtime_id, None)
        (self._dir / runtime_id).unlink(missing_ok=True)

    def load(self) -> list[str]:
        """Read back the grants a previous run of the node kept; their runtime ids."""
        if not self._dir.is_dir():
            return []
        for path in self._dir.iterdir():
            if path.name.startswith("."):
                continue
            try:
                plain = self._box().decrypt(path.read_bytes()).decode()
                owner, _, raw = plain.partition("\0")
                if owner != path.name:
                    raise ValueError("a grant under another sandbox's name")
                self._held[owner] = self.check(json.loads(raw))
            except (OSError, ValueError, InvalidToken):
                path.unlink(missing_ok=True)  # unreadable: the replica's next start sends it
        return sorted(self._held)

    # -- the egress proxy's view (SealedSecrets, SecretOpener) ------------------------------

    def get_secrets(self, sandbox_id: str) -> dict[str, bytes]:
        return {k: v.encode() for k, v in self._held.get(sandbox_id, {}).items()}

    def open_all(self, sealed: Mapping[str, bytes]) -> dict[str, str]:
        return {k: v.decode() for k, v in sealed.items()}
