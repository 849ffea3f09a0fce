"""API keys: random 256-bit secrets, stored as SHA-256 digests, compared in constant time.

A plain hash (not a password KDF) is right here: keys are high-entropy random strings, so
there is nothing to brute-force, and auth runs on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from hutch.server._errors import Unauthorized
from hutch.server.services._caller import Caller, Role
from hutch.server.store._sqlite import ApiKeyRecord, Store
from hutch.server.store._teams import DEFAULT_TEAM

KEY_PREFIX = "hk_"
E2B_KEY_PREFIX = "e2b_"
STATIC_KEY_ID = "static"  # the key given in the server's config (HUTCH_API_KEY)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class NewKey:
    record: ApiKeyRecord
    key: str


def create_key(
    store: Store,
    name: str,
    *,
    e2b: bool = False,
    team: str = DEFAULT_TEAM,
    role: Role = "admin",
    expires_at: float | None = None,
) -> NewKey:
    # NB: the e2b SDKs refuse keys that do not look like theirs before sending anything.
    key = E2B_KEY_PREFIX + secrets.token_hex(20) if e2b else KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKeyRecord(
        id="key-" + secrets.token_hex(6),
        name=name,
        prefix=key[:7],
        key_hash=hash_key(key),
        created_at=now_iso(),
        team=team,
        role=role,
        expires_at=expires_at,
    )
    store.insert_key(record)
    return NewKey(record, key)


STATIC_KEY_ID = "static"


class KeyChecker:
    """Answers "whose key is this?" for every request; caches nothing that could go stale
    (a revoked key fails on its next request). Replicas on PostgreSQL answer a key's row
    from memory while they hear every change of it (store/_row_watch.py): a key deleted
    through another replica is refused once its notification is heard, and at once when
    the channel is down (every request reads)."""

    def __init__(self, store: Store, static_key: str | None) -> None:
        self._store = store
        self._static_hash = hash_key(static_key) if static_key else None

    def caller(self, key: str | None) -> Caller:
        """The caller behind `key`.

        Raises:
            Unauthorized: no key, an unknown (or revoked) key, or an expired one.
        """
        if not key:
            raise Unauthorized(_MISSING)
        static = self.static_caller(key)
        if static is not None:
            return static
        # The lookup is by digest, so timing reveals nothing about the key itself.
        return _caller_of(self._store.current_key(hash_key(key)))

    def cached_caller(self, key: str | None) -> Caller | None:
        """`caller`, when the store's memory knows the key (no store call); None: call
        `caller`.

        Raises:
            Unauthorized: as `caller` (memory knows the key is expired).
        """
        if not key:
            return None
        known, record = self._store.cached_key(hash_key(key))
        return _caller_of(record) if known else None

    def static_caller(self, key: str | None) -> Caller | None:
        """The server's configured admin, if `key` is its key (no store call); else None."""
        if not key or self._static_hash is None:
            return None
        if hmac.compare_digest(hash_key(key), self._static_hash):
            return Caller(key_id=STATIC_KEY_ID, team=DEFAULT_TEAM, role="admin")
        return None

    def is_valid(self, key: str | None) -> bool:
        return self.identify(key) is not None

    def identify(self, key: str | None) -> str | None:
        """The id of a valid key (`static` for the server's configured one), else None."""
        try:
            return self.caller(key).key_id
        except Unauthorized:
            return None


_MISSING = (
    "missing or invalid API key: send 'Authorization: Bearer <key>' "
    "(the SDK and CLI read HUTCH_API_KEY)"
)


def _caller_of(record: ApiKeyRecord | None) -> Caller:
    """The caller of a key's row (checked now: its expiry passes while memory holds it).

    Raises:
        Unauthorized: no such key, or it expired.
    """
    if record is None:
        raise Unauthorized(_MISSING)
    if record.expires_at is not None and record.expires_at <= time.time():
        raise Unauthorized(
            f"this API key ({record.prefix}..., id {record.id}) expired at "
            f"{iso_of(record.expires_at)}; ask an admin for a new one (`hutch keys create`)"
        )
    role: Role = "admin" if record.role == "admin" else "member"
    return Caller(key_id=record.id, team=record.team, role=role)


def iso_of(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def key_from_headers(authorization: str | None, x_api_key: str | None) -> str | None:
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return x_api_key or None
