"""`hutch node`: one host's daemon in a cluster (docs/cluster.md).

It owns this host's runtime through a `LocalHost` and serves it as the node API
(node/_node_api.py) plus its byte tunnels (node/_tunnel.py), both on the host's node address
and both behind the cluster's node token. Every ~2 s it writes a heartbeat with its capacity to
the cluster's database; the API replicas place sandboxes from those rows. It lives in the
server package because it writes the store; what it serves is all `hutch.node`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import uvicorn

from hutch.node import (
    EgressGrants,
    EgressProxy,
    LocalHost,
    TunnelServer,
    WarmPools,
    node_app,
    parse_pool_sizes,
    parse_upstreams,
    send_into,
)
from hutch.runtime import ImageStore, Runtime, RuntimeConfig
from hutch.server._logging import configure_logging
from hutch.server._malloc_arenas import bound_malloc_arenas
from hutch.server._node_pools import NodePoolLedger
from hutch.server.services._fork_leftovers import FORK_COPY_PREFIX, LEFT_AFTER
from hutch.server.services._moves import MOVE_SNAPSHOT_LEFT_AFTER, MOVE_SNAPSHOT_PREFIX
from hutch.server.store._nodes import NodeRecord
from hutch.server.store._open import open_store
from hutch.server.store._sqlite import Store

log = logging.getLogger("hutch.node")

HEARTBEAT_EVERY = 2.0
DEFAULT_NODE_PORT = 7171


@dataclass(frozen=True)
class NodeConfig:
    """Everything `hutch node` needs (``HUTCH_NODE_*`` at the edge, see `from_env`).

    Args:
        name: this node's name in the cluster (unique).
        host: the host's node address to listen on: reachable by the API replicas, never by
            sandboxes (`blocked_cidrs` must cover it for sandboxes of other nodes).
        port: the node API's port; its tunnels listen on `port + 1`.
        token: the cluster's shared node token.
        database_url: the cluster's PostgreSQL database (``postgresql://…``), or
        database: a SQLite file shared by processes of one machine (tests) instead.
        cpu, memory_mb, disk_mb: capacity to offer (default: what the host has).
        blocked_cidrs: the cluster's node network: no sandbox reaches it.
        warm_pools: image name -> started sandboxes the whole cluster keeps ready; this node
            keeps its share (server/_node_pools.py). The same value on every node.
        egress_upstreams: host -> http URL the egress proxy sends that host to (tests only,
            as `hutch serve`'s HUTCH_EGRESS_UPSTREAMS). The proxy listens on `port + 2` of
            each sandbox's gateway that has egress rules.
        log_level: of the daemon's log (``HUTCH_LOG_LEVEL``); ``debug`` logs the time of
            each step of a sandbox's start, as `hutch serve` does.
    """

    name: str
    host: str
    token: str
    database: Path | None = None
    database_url: str | None = None
    port: int = DEFAULT_NODE_PORT
    home: Path = Path("/var/lib/hutch")
    images_dir: Path | None = None
    storage_size_gb: int = 16
    network_subnet: str = "10.201.0.0/16"
    cpu: float | None = None
    memory_mb: int | None = None
    disk_mb: int | None = None
    blocked_cidrs: tuple[str, ...] = ()
    warm_pools: Mapping[str, int] = field(default_factory=dict)
    egress_upstreams: Mapping[str, str] = field(default_factory=dict)
    log_level: str = "info"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @classmethod
    def from_env(cls, **overrides: Any) -> NodeConfig:
        env = os.environ
        values: dict[str, Any] = {}
        simple = {
            "HUTCH_NODE_NAME": ("name", str),
            "HUTCH_NODE_HOST": ("host", str),
            "HUTCH_NODE_TOKEN": ("token", str),
            "HUTCH_DATABASE": ("database", Path),
            "HUTCH_DATABASE_URL": ("database_url", str),
            "HUTCH_NODE_PORT": ("port", int),
            "HUTCH_HOME": ("home", Path),
            "HUTCH_IMAGES_DIR": ("images_dir", Path),
            "HUTCH_STORAGE_SIZE_GB": ("storage_size_gb", int),
            "HUTCH_NETWORK_SUBNET": ("network_subnet", str),
            "HUTCH_NODE_CPU": ("cpu", float),
            "HUTCH_NODE_MEMORY_MB": ("memory_mb", int),
            "HUTCH_NODE_DISK_MB": ("disk_mb", int),
            "HUTCH_LOG_LEVEL": ("log_level", str),
        }
        for var, (name, kind) in simple.items():
            if env.get(var):
                values[name] = kind(env[var])
        if env.get("HUTCH_WARM_POOLS"):
            values["warm_pools"] = parse_pool_sizes(env["HUTCH_WARM_POOLS"])
        if env.get("HUTCH_EGRESS_UPSTREAMS"):
            values["egress_upstreams"] = parse_upstreams(env["HUTCH_EGRESS_UPSTREAMS"])
        if env.get("HUTCH_NODE_BLOCKED_CIDRS"):
            values["blocked_cidrs"] = tuple(env["HUTCH_NODE_BLOCKED_CIDRS"].split(","))
        values.update({k: v for k, v in overrides.items() if v is not None})
        missing = [k for k in ("name", "host", "token") if not values.get(k)]
        if not values.get("database") and not values.get("database_url"):
            missing.append("database_url")
        if missing:
            raise ValueError(
                "hutch node needs " + ", ".join(missing) + " (HUTCH_NODE_NAME, HUTCH_NODE_HOST, "
                "HUTCH_NODE_TOKEN, HUTCH_DATABASE_URL or the options)"
            )
        return cls(**values)


def _memory_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) >> 10
    return 0  # pragma: no cover


def unusable_fork_copies(
    copies: Iterable[str], row_node: Callable[[str], str | None], old: Collection[str]
) -> list[str]:
    """Those of the fork copies a node received that no fork can use any more: no row names
    them (`row_node` is None), or their row is `old` (older than any fork in flight)."""
    return [c for c in copies if c in old or row_node(c) is None]


class _Snapshots(Protocol):  # the runtime's DiskSnapshots
    def ids(self) -> list[str]: ...
    def made_at(self, snapshot_id: str) -> float: ...


def stale_move_snapshots(snaps: _Snapshots, now: float) -> list[str]:
    """The moves' snapshots (`mv-*`) on this node that no move can still use: taken or
    received more than MOVE_SNAPSHOT_LEFT_AFTER ago. A move records nothing in the store (the
    replica that runs it knows its snapshot's id, and deletes it on both nodes when it ends),
    so their age is all there is: a replica that died mid-move, or a node that was away when
    the move ended, left them, a disk's worth each."""
    moves = [i for i in snaps.ids() if i.startswith(MOVE_SNAPSHOT_PREFIX)]
    return [i for i in moves if snaps.made_at(i) < now - MOVE_SNAPSHOT_LEFT_AFTER]


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the daemon handles SIGTERM/SIGINT once."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class NodeDaemon:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.runtime = Runtime(
            RuntimeConfig(
                home=config.home,
                storage_size_gb=config.storage_size_gb,
                network_subnet=config.network_subnet,
                blocked_cidrs=config.blocked_cidrs,
            )
        )
        self.images = ImageStore(config.images_dir or config.home / "images")
        self.store: Store = open_store(
            config.database or config.home / "hutch.db", config.database_url
        )
        pools = WarmPools(self.runtime, self.images, config.warm_pools, agent_timeout=30.0)
        pools.ledger = NodePoolLedger(self.store, config.name, self.images)
        # Runtime ids come from the API (a node's names are what the API chose).
        self.host = LocalHost(self.runtime, lambda rid: rid, pools)
        # Egress secrets of this node's sandboxes, granted by the replicas (a fixed port: every
        # replica computes it from the node's address, as the tunnels' port + 1).
        self.grants = EgressGrants(config.home)
        self.egress = EgressProxy(
            self.grants,
            self.grants,
            self.runtime,
            config.home,
            port=config.port + 2,
            upstreams=config.egress_upstreams,
        )
        self.tunnels = TunnelServer(
            config.token,
            self.runtime.agent_socket,
            self.runtime.sandbox_address,
            # Snapshots another node pulls (drain --move, a fork's child sent there).
            functools.partial(send_into, self.runtime.snapshots),
        )
        self.should_exit = asyncio.Event()

    def capacity(self) -> dict[str, Any]:
        used, total = self.runtime.storage_usage()
        return {
            "name": self.config.name,
            "cpu": self.config.cpu or float(os.cpu_count() or 1),
            "memory_mb": self.config.memory_mb or _memory_mb(),
            "disk_mb": self.config.disk_mb or total >> 20,
            "used_disk_mb": used >> 20,
            "runtimes": self.runtimes(),
        }

    def runtimes(self) -> list[str]:
        """The sandbox runtimes this host can run: gVisor where runsc is installed."""
        return ["runc", *(["gvisor"] if self.runtime.supports("gvisor") else [])]

    def heartbeat(self) -> NodeRecord:
        cap = self.capacity()
        return self.store.heartbeat_node(
            NodeRecord(
                name=self.config.name,
                address=self.config.url,
                cpu=cap["cpu"],
                memory_mb=cap["memory_mb"],
                disk_mb=cap["disk_mb"],
                used_disk_mb=cap["used_disk_mb"],
                last_heartbeat=time.time(),
                # The replicas' GET /v1/pools shows what the nodes are configured with.
                pool_sizes=dict(self.config.warm_pools),
                # Placement puts a gVisor sandbox only on a node that reports it.
                runtimes=tuple(cap["runtimes"]),
            )
        )

    async def _sweep(self) -> None:
        """Remove containers the cluster no longer has on this node (destroyed while the node
        was away); everything the store still places here is kept, running or not."""
        keep = set()
        for sandbox_id in self.store.sandboxes_on(self.config.name):
            record = self.store.get_sandbox(sandbox_id)
            keep.add(record.runtime_id or sandbox_id if record is not None else sandbox_id)
        for rid in await self.runtime.sweep(keep):
            log.info("node %s: swept leftovers of %s", self.config.name, rid)

    async def _sweep_fork_copies(self, now: float) -> list[str]:
        """Remove the fork copies other nodes sent here that no fork can still use: those no
        `snapshot_nodes` row names, and those whose row is older than any fork in flight
        (the reconciler's bound). A fork records its copies' rows before it sends one and
        forgets them after it dropped them (services/_forks.py), so a copy without a row is
        one whose fork ended while this node could not be asked to drop it (lost, or
        restarting); one with an old row is the reconciler's too, but it skips a node that is
        lost, and a row whose source node is lost waits with its copy. A node's own forks'
        copies live among the spares, which the runtime's setup sweeps."""
        copies = [i for i in self.runtime.snapshots.ids() if i.startswith(FORK_COPY_PREFIX)]
        if not copies:
            return []
        old = set(self.store.snapshot_nodes_before(FORK_COPY_PREFIX, now - LEFT_AFTER, now))
        removed = unusable_fork_copies(copies, self.store.snapshot_node, old)
        for copy_id in removed:
            await asyncio.to_thread(self.runtime.snapshots.delete, copy_id)
            log.info("node %s: removed fork copy %s, left by a fork", self.config.name, copy_id)
        return removed

    async def _sweep_move_snapshots(self, now: float) -> list[str]:
        snaps = self.runtime.snapshots
        removed = await asyncio.to_thread(stale_move_snapshots, snaps, now)
        for snapshot_id in removed:
            await asyncio.to_thread(snaps.delete, snapshot_id)
            log.info(
                "node %s: removed move snapshot %s, left by a move", self.config.name, snapshot_id
            )
        return removed

    async def _granted_running(self) -> list[tuple[str, str]]:
        """The running sandboxes whose egress grants the last run kept (the others' go)."""
        granted = self.grants.load()
        states = await self.runtime.list_sandboxes()
        for rid in granted:
            if states.get(rid) != "running":
                self.grants.drop(rid)
        return [(rid, rid) for rid in granted if states.get(rid) == "running"]

    async def _beat(self) -> None:
        while not self.should_exit.is_set():
            try:
                await asyncio.to_thread(self.heartbeat)
            except Exception:
                log.exception("node %s: heartbeat failed", self.config.name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.should_exit.wait(), HEARTBEAT_EVERY)

    async def serve(self) -> None:
        cfg = self.config
        await self.runtime.setup()
        await self._sweep()
        await self._sweep_fork_copies(time.time())
        await self._sweep_move_snapshots(time.time())
        # From now on: an OOM kill in a sandbox made later is news, even if the replicas'
        # first question about it comes after the kill.
        self.host.start_watch()
        await self.egress.start(await self._granted_running())
        # Paused before this node daemon started: their agents' tunnels are refused too.
        for rid, state in (await self.runtime.list_sandboxes()).items():
            if state == "paused":
                self.tunnels.hold(rid)
        app = node_app(
            self.host,
            self.images.get,
            self.capacity,
            cfg.token,
            (self.egress, self.grants),
            self.tunnels,
        )
        server = _QuietServer(
            uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning", lifespan="off")
        )
        await self.tunnels.start(cfg.host, cfg.port + 1)
        serving = asyncio.create_task(server.serve())
        beating = asyncio.create_task(self._beat())
        self.host.start_pools()
        log.warning("node %s serving on %s (tunnels on port %d)", cfg.name, cfg.url, cfg.port + 1)
        await self.should_exit.wait()
        await self.host.stop_pools()
        server.should_exit = True
        await self.tunnels.close()
        await self.egress.stop()
        await asyncio.gather(serving, beating, return_exceptions=True)
        self.host.close_watch()
        self.store.close()


async def remove_all(config: NodeConfig) -> list[str]:
    """Destroy every sandbox under the node's home and release its storage and nft table
    (`scripts/cluster down`); the cluster's rows are not touched."""
    runtime = Runtime(
        RuntimeConfig(
            home=config.home,
            storage_size_gb=config.storage_size_gb,
            network_subnet=config.network_subnet,
            blocked_cidrs=config.blocked_cidrs,
        )
    )
    await runtime.setup()
    removed = await runtime.sweep(())
    await runtime.teardown()
    return removed


def run_node(config: NodeConfig) -> None:
    """Serve until SIGTERM/SIGINT. Sandboxes outlive the daemon (a restart re-adopts them)."""
    bound_malloc_arenas()  # NB: first: before any thread of ours allocates
    level = logging.getLevelName(config.log_level.upper())
    if not isinstance(level, int):
        raise ValueError(f"unknown log level {config.log_level!r}: use debug, info or warning")
    # The API's text format, level included, so one grep reads both daemons' logs.
    configure_logging(level=config.log_level, log_format="text")

    async def main() -> None:
        daemon = NodeDaemon(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, daemon.should_exit.set)
        await daemon.serve()

    asyncio.run(main())
