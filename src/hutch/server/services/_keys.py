"""API keys: random 256-bit secrets, stored as SHA-256 digests, compared in constant time.

A plain hash (not a password KDF) is right here: keys are high-entropy random strings, so
there is nothing to brute-force, and auth runs on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from hutch.server.store._sqlite import ApiKeyRecord, Store

KEY_PREFIX = "hk_"
E2B_KEY_PREFIX = "e2b_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class NewKey:
    record: ApiKeyRecord
    key: str


def create_key(store: Store, name: str, *, e2b: bool = False) -> NewKey:
    # NB: the e2b SDKs refuse keys that do not look like theirs before sending anything.
    key = E2B_KEY_PREFIX + secrets.token_hex(20) if e2b else KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKeyRecord(
        id="key-" + secrets.token_hex(6),
        name=name,
        prefix=key[:7],
        key_hash=hash_key(key),
        created_at=now_iso(),
    )
    store.insert_key(record)
    return NewKey(record, key)


class KeyChecker:
    """Answers "is this key valid?" for every request; caches nothing that could go stale."""

    def __init__(self, store: Store, static_key: str | None) -> None:
        self._store = store
        self._static_hash = hash_key(static_key) if static_key else None

    def is_valid(self, key: str | None) -> bool:
        if not key:
            return False
        digest = hash_key(key)
        if self._static_hash is not None and hmac.compare_digest(digest, self._static_hash):
            return True
        # The lookup is by digest, so timing reveals nothing about the key itself.
        return self._store.find_key_by_hash(digest) is not None


def key_from_headers(authorization: str | None, x_api_key: str | None) -> str | None:
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return x_api_key or None
