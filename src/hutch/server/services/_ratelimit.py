"""Per-key request rate limits: one token bucket per key, refilled at the team's rate (or the
server's default), each request taking one token; an empty bucket answers 429 `rate_limited`
with `Retry-After`.

One server: the buckets live in memory. API replicas on one database (PostgreSQL, or a
cluster) share them: each key's bucket is a row that a request steps under a row lock, so a
key gets its rate across all replicas together, not once per replica. Why a shared row and not
each replica allowing rate/N: N changes as replicas come and go, a load balancer does not
spread one key's requests evenly (a key pinned to one replica would get rate/N), and a
limit that is wrong by a factor is what this replaces. The price is one short transaction per
request of a rate-limited key (admin keys and teams with no rate take none); the clocks of
the replicas are assumed to agree to well under a second (NTP).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from hutch.server._errors import RateLimited
from hutch.server.services._caller import Caller
from hutch.server.store._teams import Quota, RateBucket, TeamStore


@dataclass(frozen=True)
class Refill:
    rate: float  # tokens per second
    burst: int  # the bucket's size

    def take(self, bucket: RateBucket | None, now: float) -> tuple[RateBucket, float]:
        """The bucket after one request at `now`, and 0.0 if it took a token, else how long to
        wait for one (the bucket then keeps what it had: a refused request costs nothing)."""
        tokens, at = bucket if bucket is not None else (float(self.burst), now)
        tokens = min(float(self.burst), tokens + max(0.0, now - at) * self.rate)
        if tokens >= 1.0:
            return (tokens - 1.0, now), 0.0
        return (tokens, now), (1.0 - tokens) / self.rate


class RateLimits:
    """Args:
    per_second: the default refill rate per key (None or 0: no limit unless the team sets one).
    burst: the default bucket size (None: one second's worth, at least 1).
    shared: the store whose rows hold the buckets (replicas on one database); None: memory.
    """

    # Buckets of keys not seen for this long are dropped (a full bucket is the same as none).
    FORGET_AFTER = 600.0

    def __init__(
        self, per_second: float | None, burst: int | None, shared: TeamStore | None = None
    ) -> None:
        self._per_second = per_second
        self._burst = burst
        self._shared = shared
        self._buckets: dict[str, RateBucket] = {}
        self._swept = time.time()

    @property
    def shared(self) -> bool:
        """Whether `take` makes a store call (the buckets are in the database)."""
        return self._shared is not None

    def take(self, caller: Caller, quota: Quota) -> None:
        """Take one token from the caller's bucket.

        Raises:
            RateLimited: the bucket is empty (the error says when to try again).
        """
        if caller.role == "admin":
            # NB: never an admin: the key that sets a team's rate must be able to lift it (a
            # fuzzer set the default team's rate to 5e-324/s and locked every key out).
            return
        rate = quota.rate_per_second if quota.rate_per_second is not None else self._per_second
        if not rate:
            return
        refill = Refill(rate, quota.rate_burst or self._burst or max(1, int(rate)))
        # NB: wall clock, not monotonic: the shared buckets' times are compared across hosts.
        now = time.time()
        self._sweep(now)
        wait = self._step(caller.key_id, refill, now)
        if wait:
            raise RateLimited(
                f"too many requests with this key: {rate:g}/s (burst {refill.burst}) for team "
                f"{caller.team!r}; retry after {wait:.2f}s (an admin sets the team's rate with "
                "`hutch teams quota NAME --rate N`)",
                retry_after=wait,
            )

    def _step(self, key_id: str, refill: Refill, now: float) -> float:
        if self._shared is None:
            self._buckets[key_id], wait = refill.take(self._buckets.get(key_id), now)
            return wait
        waits: list[float] = []

        def step(bucket: RateBucket | None) -> RateBucket:
            after, wait = refill.take(bucket, now)
            waits.append(wait)
            return after

        self._shared.step_rate_bucket(key_id, step)
        return waits[-1]  # the step that was kept (the store may run it twice)

    def _sweep(self, now: float) -> None:
        if now - self._swept < self.FORGET_AFTER:
            return
        self._swept = now
        if self._shared is not None:
            self._shared.forget_rate_buckets(now - self.FORGET_AFTER)
            return
        stale = [k for k, (_, at) in self._buckets.items() if now - at > self.FORGET_AFTER]
        for key_id in stale:
            del self._buckets[key_id]
