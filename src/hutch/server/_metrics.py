"""Metrics: Prometheus's `/metrics` for operators, and each sandbox's own usage over time.

- `/metrics` (API key required; Prometheus sends it as `bearer_token` / `authorization`):
  request latency by route and status, sandbox creates, sandboxes by state, warm pools, the
  storage pool. One registry per app (never prometheus_client's global one), so that two
  apps in one process (the tests) count apart.
- `GET /v1/sandboxes/{id}/metrics`: CPU %, memory, disk, network, tasks now, and CPU and
  memory every `SAMPLE_EVERY` seconds for the last 15 minutes, which the console plots.
  The sampler reads only cgroup files (a few reads per sandbox); the disk figure, a btrfs
  call, is read on request only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from hutch.node import SandboxHost
    from hutch.server.store._sqlite import Store

log = logging.getLogger("hutch.server")

SAMPLE_EVERY = 15.0  # seconds between points of a sandbox's history
HISTORY = 60  # points kept: 15 minutes
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class MetricsPoint(BaseModel):
    timestamp: float
    cpu_percent: float = Field(description="share of the sandbox's CPU limit used, 0-100")
    memory_used_bytes: int


class SandboxMetrics(BaseModel):
    timestamp: float
    cpu_percent: float = Field(description="share of the sandbox's CPU limit used, 0-100")
    cpu_count: float = Field(description="the sandbox's CPU limit, in CPUs")
    cpu_seconds: float = Field(description="CPU time used since the sandbox started")
    memory_used_bytes: int
    memory_limit_bytes: int
    disk_used_bytes: int | None
    disk_limit_bytes: int | None
    net_rx_bytes: int = Field(description="bytes the sandbox received since it started")
    net_tx_bytes: int = Field(description="bytes the sandbox sent since it started")
    pids: int
    pids_limit: int
    history: list[MetricsPoint] = Field(
        description=f"CPU and memory every {SAMPLE_EVERY:g} s over the last 15 minutes"
    )


@dataclass(slots=True)
class _Reading:
    at: float  # time.monotonic()
    cpu_seconds: float


def _cpu_percent(before: _Reading, after: _Reading, cpu_limit: float) -> float:
    elapsed = after.at - before.at
    if elapsed <= 0:
        return 0.0
    cpus = cpu_limit or float(os.cpu_count() or 1)
    used = max(0.0, after.cpu_seconds - before.cpu_seconds) / elapsed
    return round(min(100.0, 100.0 * used / cpus), 2)


class UsageHistory:
    """CPU and memory of every running sandbox, sampled in the background."""

    def __init__(self, host: SandboxHost, running: Callable[[], Iterable[str]]) -> None:
        self._host = host
        self._running = running  # () -> ids of the running sandboxes
        self._points: dict[str, deque[MetricsPoint]] = {}
        self._last: dict[str, _Reading] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception:
                log.exception("sampling sandbox usage failed")
            await asyncio.sleep(SAMPLE_EVERY)

    async def sample(self) -> None:
        seen = set()
        for sandbox_id in self._running():
            seen.add(sandbox_id)
            with contextlib.suppress(Exception):  # destroyed meanwhile
                await self._point(sandbox_id)
        for gone in set(self._points) - seen:
            self._points.pop(gone, None)
            self._last.pop(gone, None)

    async def _point(self, sandbox_id: str) -> None:
        usage = await self._host.usage(sandbox_id, disk=False)
        now = _Reading(time.monotonic(), usage.cpu_seconds)
        before = self._last.get(sandbox_id)
        self._last[sandbox_id] = now
        if before is not None:
            points = self._points.setdefault(sandbox_id, deque(maxlen=HISTORY))
            points.append(
                MetricsPoint(
                    timestamp=time.time(),
                    cpu_percent=_cpu_percent(before, now, usage.cpu_limit),
                    memory_used_bytes=usage.memory_bytes,
                )
            )

    async def current_cpu(self, sandbox_id: str, cpu_seconds: float, cpu_limit: float) -> float:
        """CPU % now: since the last reading if it is recent, else over a short window."""
        after = _Reading(time.monotonic(), cpu_seconds)
        before = self._last.get(sandbox_id)
        if before is None or after.at - before.at > 2 * SAMPLE_EVERY:
            await asyncio.sleep(0.1)
            before = after
            usage = await self._host.usage(sandbox_id, disk=False)
            after = _Reading(time.monotonic(), usage.cpu_seconds)
        return _cpu_percent(before, after, cpu_limit)

    def history(self, sandbox_id: str) -> list[MetricsPoint]:
        return list(self._points.get(sandbox_id, ()))


class _StateCollector(Collector):
    """Gauges read when Prometheus scrapes: nothing to keep in step."""

    def __init__(self, store: Store, host: SandboxHost) -> None:
        self._store = store
        self._host = host

    def collect(self) -> Iterable[Metric]:
        by_state = GaugeMetricFamily("hutch_sandboxes", "Sandboxes by state", labels=["state"])
        # Counted by the database: a scrape builds no sandbox's record (15 ms for 1,000).
        for state, count in sorted(self._store.sandbox_counts().items()):
            by_state.add_metric([state], count)
        yield by_state
        ready = GaugeMetricFamily(
            "hutch_pool_ready", "Started sandboxes ready in a warm pool", labels=["image"]
        )
        size = GaugeMetricFamily(
            "hutch_pool_size", "Configured size of a warm pool", labels=["image"]
        )
        for image, (configured, now) in sorted(self._host.pool_status().items()):
            ready.add_metric([image], now)
            size.add_metric([image], configured)
        yield ready
        yield size
        used, total = self._host.storage_usage()
        storage = GaugeMetricFamily(
            "hutch_storage_bytes", "The sandboxes' storage pool", labels=["kind"]
        )
        storage.add_metric(["used"], used)
        storage.add_metric(["total"], total)
        yield storage


class ServerMetrics:
    """The registry and the instruments of one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Histogram(
            "hutch_http_request_duration_seconds",
            "API requests by route and status, until the response has been sent",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.creates = Histogram(
            "hutch_sandbox_create_duration_seconds",
            "Sandbox creates through the API, until the sandbox answers",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def watch_state(self, store: Store, host: SandboxHost) -> None:
        self.registry.register(_StateCollector(store, host))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetricsMiddleware:
    """Times every HTTP request by its route's template (`/v1/sandboxes/{sandbox_id}/exec`,
    never the id itself: one series per route, not per sandbox)."""

    def __init__(self, app: ASGIApp, metrics: Callable[[], ServerMetrics | None]) -> None:
        self.app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_tracking(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        finally:
            metrics = self._metrics()
            if metrics is not None:
                route = scope.get("route")
                template = getattr(route, "path", None) or "unmatched"
                metrics.requests.labels(scope["method"], template, str(status)).observe(
                    time.perf_counter() - started
                )


def build_metrics_router(require_key: Callable[..., Any]) -> APIRouter:
    router = APIRouter(dependencies=[Depends(require_key)])

    @router.get("/metrics", include_in_schema=False)
    async def prometheus(request: Request) -> Response:
        metrics: ServerMetrics = request.app.state.services.metrics
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @router.get("/v1/sandboxes/{sandbox_id}/metrics", response_model=SandboxMetrics)
    async def sandbox_metrics(request: Request, sandbox_id: str) -> SandboxMetrics:
        return await read_sandbox_metrics(request.app.state.services, sandbox_id)

    return router


async def read_sandbox_metrics(svc: Any, sandbox_id: str) -> SandboxMetrics:
    """A sandbox's usage now and over the last 15 minutes (also E2B's get_metrics).

    Raises:
        SandboxNotFound: no such sandbox.
    """
    svc.sandboxes.get(sandbox_id)  # 404 for an unknown sandbox
    usage = await svc.host.usage(sandbox_id)
    history: UsageHistory = svc.usage_history
    return SandboxMetrics(
        timestamp=time.time(),
        cpu_percent=await history.current_cpu(sandbox_id, usage.cpu_seconds, usage.cpu_limit),
        cpu_count=usage.cpu_limit,
        cpu_seconds=round(usage.cpu_seconds, 6),
        memory_used_bytes=usage.memory_bytes,
        memory_limit_bytes=usage.memory_limit_bytes,
        disk_used_bytes=usage.disk_bytes,
        disk_limit_bytes=usage.disk_limit_bytes,
        net_rx_bytes=usage.net_rx_bytes,
        net_tx_bytes=usage.net_tx_bytes,
        pids=usage.pids,
        pids_limit=usage.pids_limit,
        history=history.history(sandbox_id),
    )
