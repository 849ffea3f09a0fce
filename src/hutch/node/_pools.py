"""Warm pools: a configured number of started sandboxes per image, handed out on create.

A pooled sandbox is a normal runtime sandbox (runtime id `pool-<hex>`) whose agent is already
connected and answering. Handing one out applies what is only known then:

- the user's id: the sandbox's row keeps the runtime id (written in the transaction that
  inserts the row, so restarts and recovery find the container);
- env: the agent's `set_env` op (every later exec, session and terminal starts from it);
- cpu, memory, swap and pids limits: `runc update` on its cgroups (skipped when they are the
  pool's own);
- labels, timeout: the store only.

What a running sandbox cannot change forces a cold start: another disk quota than the pool's,
another runtime than runc. A pool refills in the background after every hand-out.

On a cluster each node runs its own pools, and lists its ready sandboxes in the cluster's
store (a `PoolLedger`): API replicas claim one there (`FOR UPDATE SKIP LOCKED`, so two never
get the same) and then ask the node to hand that one out (`hand_out`). The ledger also says
how many this node should keep now (its share of the configured size, as far as its free
capacity allows) and which listed ones a replica claimed but never came for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

from hutch._wire.sandbox_options import DEFAULTS
from hutch.node._agent_client import AgentConnection
from hutch.runtime import Image, ImageNotFound, ImageStore, Limits, Runtime, SandboxSpec

log = logging.getLogger("hutch.server.pools")

POOL_PREFIX = "pool-"
# What a pooled sandbox is started with: SandboxCreate's defaults.
# A pooled sandbox has the default options (hutch._wire.sandbox_options) until it is claimed.
POOL_LIMITS = Limits(
    cpu=DEFAULTS.cpu,
    memory_mb=DEFAULTS.memory_mb,
    pids=DEFAULTS.pids_limit,
    disk_mb=DEFAULTS.disk_mb,
)
_RETRY_AFTER_FAILURE = 5.0
REFILL_DELAY = 0.25
REFILL_MAX_WAIT = 5.0


def parse_pool_sizes(text: str) -> dict[str, int]:
    """`"default=2,python:3.12=1"` -> {"default": 2, "python:3.12": 1}.

    Raises:
        ValueError: not `image=count` pairs.
    """
    sizes: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, count = item.rpartition("=")
        if not sep or not name or not count.isdigit():
            raise ValueError(
                f"warm pool {item!r} must look like IMAGE=COUNT (HUTCH_WARM_POOLS="
                "'default=2,python:3.12=1')"
            )
        sizes[name] = int(count)
    return sizes


class PoolLedger(Protocol):
    """Where a node lists its ready pooled sandboxes for the cluster (server/_node_pools.py)."""

    async def sizes(self, configured: Mapping[str, int]) -> dict[str, int]:
        """How many this host should keep ready now, per image name."""
        ...

    async def listed(self, runtime_id: str, image_id: str) -> None:
        """A pooled sandbox is ready: claimable from now on."""
        ...

    async def take_back(self, image_id: str) -> str | None:
        """Take one unclaimed sandbox of `image_id` off the list (to discard it); None if every
        one is claimed already."""
        ...

    async def unlisted(self, runtime_id: str) -> None:
        """Gone from the pool (handed out or discarded)."""
        ...

    async def abandoned(self, ready: Collection[str]) -> list[str]:
        """Of the `ready` runtime ids, those a replica claimed and never came for."""
        ...


@dataclass
class _Ready:
    runtime_id: str
    image_id: str
    conn: AgentConnection


class WarmPools:
    def __init__(
        self,
        runtime: Runtime,
        images: ImageStore,
        sizes: Mapping[str, int],
        *,
        agent_timeout: float,
    ) -> None:
        self._runtime = runtime
        self._images = images
        self._sizes = dict(sizes)
        self._agent_timeout = agent_timeout
        self._ready: dict[str, list[_Ready]] = {name: [] for name in sizes}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_claim = float("-inf")
        # Set on a cluster's node: the share to keep, and the list replicas claim from.
        self.ledger: PoolLedger | None = None
        self._share: dict[str, int] = dict(sizes)

    @property
    def enabled(self) -> bool:
        return any(self._sizes.values())

    def start(self) -> None:
        if self.enabled:
            self._task = asyncio.create_task(self._refill_loop(), name="hutch-warm-pools")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for ready in self._ready.values():
            while ready:
                await self._discard(ready.pop())

    def ready_count(self, image_name: str) -> int:
        return len(self._ready.get(image_name, []))

    def status(self) -> dict[str, tuple[int, int]]:
        """image name -> (configured size, sandboxes ready now)."""
        return {name: (size, self.ready_count(name)) for name, size in self._sizes.items()}

    async def hand_out(self, runtime_id: str, limits: Limits, env: Mapping[str, str]) -> bool:
        """Hand out ready sandbox `runtime_id` (a replica claimed it from the ledger): set up
        with `limits` and `env`, off the pool, this host's connection to it closed (the
        replica has its own). False: it is not ready here (gone, or unusable and discarded)."""
        for ready in self._ready.values():
            entry = next((e for e in ready if e.runtime_id == runtime_id), None)
            if entry is None:
                continue
            ready.remove(entry)
            self._last_claim = time.monotonic()
            self._wake.set()
            if entry.conn.closed or not await self._set_up(entry, limits, env):
                await self._discard(entry)
                return False
            with contextlib.suppress(Exception):
                await entry.conn.close()
            if self.ledger is not None:
                await self.ledger.unlisted(runtime_id)
            return True
        return False

    async def _set_up(self, entry: _Ready, limits: Limits, env: Mapping[str, str]) -> bool:
        try:
            if env:
                await asyncio.wait_for(
                    entry.conn.call("set_env", env=dict(env)), self._agent_timeout
                )
            if limits != POOL_LIMITS:
                await self._runtime.update_limits(entry.runtime_id, limits)
        except Exception as exc:
            log.warning("pooled sandbox %s unusable: %s", entry.runtime_id, exc)
            return False
        return True

    async def claim(
        self, image: Image, limits: Limits, env: Mapping[str, str], runtime: str
    ) -> tuple[str, AgentConnection] | None:
        """A started sandbox of `image` set up with `limits` and `env`, or None (cold start)."""
        if runtime != "runc" or limits.disk_mb != POOL_LIMITS.disk_mb:
            return None
        for name, ready in self._ready.items():
            # NB: the most recently started first (LIFO): its agent ran its warm-up last.
            while ready and ready[-1].image_id == image.id:
                entry = ready.pop()
                self._last_claim = time.monotonic()
                self._wake.set()
                if entry.conn.closed or not await self._set_up(entry, limits, env):
                    await self._discard(entry)
                    continue
                log.debug("handed out pooled sandbox %s (%s)", entry.runtime_id, name)
                return entry.runtime_id, entry.conn
        return None

    async def drain_image(self, image_id: str) -> None:
        """Destroy the ready sandboxes of `image_id` (before the image is removed)."""
        for ready in self._ready.values():
            for entry in [e for e in ready if e.image_id == image_id]:
                ready.remove(entry)
                await self._discard(entry)

    async def _discard(self, entry: _Ready) -> None:
        if self.ledger is not None:
            try:
                await self.ledger.unlisted(entry.runtime_id)
            except Exception as exc:
                log.warning("pooled sandbox %s not unlisted: %s", entry.runtime_id, exc)
        with contextlib.suppress(Exception):
            await entry.conn.close()
        try:
            await self._runtime.destroy(entry.runtime_id)
        except Exception as exc:
            log.error("could not destroy pooled sandbox %s: %s", entry.runtime_id, exc)

    async def _refill_loop(self) -> None:
        while True:
            self._wake.clear()
            failed = False
            try:
                await self._reconcile()
            except Exception as exc:
                log.error("warm pools: the cluster's list could not be read: %s", exc)
                failed = True
            for name, size in self._share.items():
                try:
                    image = self._images.get(name)
                except ImageNotFound:
                    continue
                ready = self._ready.setdefault(name, [])
                try:
                    await self._shrink(ready, _not_of(image.id), 0)
                    await self._shrink(ready, lambda e: True, size)
                except Exception as exc:
                    log.error("warm pool %s: could not shrink: %s", name, exc)
                while len(ready) < size:
                    await self._yield_to_claims()
                    try:
                        entry = await self._start_one(image)
                        ready.append(entry)
                        if self.ledger is not None:
                            await self.ledger.listed(entry.runtime_id, image.id)
                    except Exception as exc:
                        log.error("could not start a pooled sandbox of %s: %s", name, exc)
                        failed = True
                        break
            if failed:
                await asyncio.sleep(_RETRY_AFTER_FAILURE)
                continue
            with contextlib.suppress(TimeoutError):
                # Also look again now and then: a pulled image may fill a pool that had none
                # (and on a cluster, this node's share may have changed).
                await asyncio.wait_for(self._wake.wait(), 10.0 if self.ledger is None else 2.0)

    async def _reconcile(self) -> None:
        """On a cluster: this node's share now, and the ready ones a replica claimed but never
        came for (it died between its claim and its call) go."""
        if self.ledger is None:
            return
        self._share = await self.ledger.sizes(self._sizes)
        every = [e.runtime_id for ready in self._ready.values() for e in ready]
        for rid in await self.ledger.abandoned(every):
            for ready in self._ready.values():
                for entry in [e for e in ready if e.runtime_id == rid]:
                    ready.remove(entry)
                    await self._discard(entry)

    async def _shrink(
        self, ready: list[_Ready], which: Callable[[_Ready], bool], keep: int
    ) -> None:
        """Discard ready sandboxes matching `which` beyond `keep` (on a cluster, only those
        taken back from the list: a replica may be claiming the others right now)."""
        while sum(1 for e in ready if which(e)) > keep:
            if self.ledger is None:
                entry = next(e for e in ready if which(e))
            else:
                image_ids = {e.image_id for e in ready if which(e)}
                rid = None
                for image_id in image_ids:
                    rid = await self.ledger.take_back(image_id)
                    if rid is not None:
                        break
                found = [e for e in ready if e.runtime_id == rid]
                if not found:
                    return  # all claimed: they go as they are handed out
                entry = found[0]
            ready.remove(entry)
            await self._discard(entry)

    async def _yield_to_claims(self) -> None:
        """Wait until no sandbox was handed out for REFILL_DELAY (at most REFILL_MAX_WAIT).

        Starting a sandbox blocks the event loop for a few ms (subvolume, overlay mount,
        config) and its agent's start-up takes a core for ~100 ms: right after a hand-out the
        user's first exec comes in, and in a burst of creates the next claim does, and both
        must not wait behind a refill. A burst longer than REFILL_MAX_WAIT refills anyway.
        """
        started = time.monotonic()
        while True:
            quiet_for = time.monotonic() - self._last_claim
            if quiet_for >= REFILL_DELAY or time.monotonic() - started >= REFILL_MAX_WAIT:
                return
            await asyncio.sleep(REFILL_DELAY - quiet_for)

    async def _start_one(self, image: Image) -> _Ready:
        runtime_id = POOL_PREFIX + secrets.token_hex(6)
        spec = SandboxSpec(id=runtime_id, image=image, env={}, limits=POOL_LIMITS)
        socket_path = await self._runtime.create(spec)
        try:
            conn = await AgentConnection.connect(socket_path, timeout=self._agent_timeout)
            await asyncio.wait_for(conn.call("ping"), self._agent_timeout)
            await asyncio.wait_for(_warm_up(conn), self._agent_timeout)
        except BaseException:
            await asyncio.shield(self._runtime.destroy(runtime_id))
            raise
        return _Ready(runtime_id, image.id, conn)


def _not_of(image_id: str) -> Callable[[_Ready], bool]:
    """Ready sandboxes of another image than `image_id` (the name points at new content)."""
    return lambda entry: entry.image_id != image_id


async def _warm_up(conn: AgentConnection) -> None:
    """Run one throwaway command: the agent imports its exec handler and the image's shell is
    paged in now, not in the user's first exec."""
    stream = conn.open_stream(
        {
            "op": "exec",
            "command": "true",
            "argv": None,
            "env": None,
            "cwd": None,
            "user": None,
            "timeout": None,
            "stdin": False,
        }
    )
    async for _ in stream:
        pass
