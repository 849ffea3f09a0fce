"""The native preview proxy (HAProxy) kept in step with the API: its map holds the exposed
ports of running sandboxes; everything else (a sleeping sandbox, a wrong token) falls back
to the Python proxy on the API's port. Its traffic counts as each sandbox's activity."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
import resource
import socket
import time
from collections.abc import Coroutine
from pathlib import Path

from hutch.proxy import (
    NativeProxy,
    NativeProxyConfig,
    PreviewActivity,
    haproxy_binary,
    route_key,
    route_key_by_header,
    route_value,
)
from hutch.server._config import ServerConfig
from hutch.server._deps import Services

log = logging.getLogger("hutch.previews")

ACTIVITY_POLL_S = 0.25  # below the shortest sleep_after (1 s)
RESYNC_EVERY = 8  # polls: a full resync every 2 s catches what no hook told (a death)


class NativePreviews:
    """Routes of the native proxy, following the preview table and the lifecycle."""

    def __init__(self, svc: Services, proxy: NativeProxy) -> None:
        self.svc = svc
        self.proxy = proxy
        # Being frozen or stopped (since when): routed to Hutch, which wakes it.
        self._asleep: dict[str, float] = {}
        self._counts: dict[str, PreviewActivity] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, svc: Services) -> NativePreviews | None:
        """Start HAProxy on the preview port; None (the Python proxy serves) if it cannot."""
        config = svc.config
        if config.preview_proxy == "python":
            log.info("preview proxy: python, on the API's port (HUTCH_PREVIEW_PROXY=python)")
            return None
        if config.cluster or config.database_url:
            # NB: its routes are this process's own, to sandboxes on this host; API replicas
            # (a shared database, or a cluster whose sandboxes are on node daemons) look the
            # token up on every request and reach other nodes through their tunnels.
            log.info("preview proxy: python, on the API's port (API replicas share a database)")
            return None
        binary = haproxy_binary()
        if binary is None:
            log.warning("preview proxy: python, on the API's port (haproxy is not installed)")
            return None
        directory = config.home / "proxy"
        directory.mkdir(parents=True, exist_ok=True)
        native = NativeProxyConfig(
            bind_host=config.host,
            port=_preview_port(config, directory),
            fallback=f"{_loopback_for(config.host)}:{config.port}",
            directory=directory,
            tls_pem=_tls_pem(config, directory),
            run_as=_unprivileged_user(),
            max_files=_open_file_limit(),
            reserved_ports=config.reserved_ports,
            threads=config.preview_threads,
        )
        proxy = NativeProxy(native, binary)
        for attempt in range(2):
            try:
                await proxy.start()
                break
            except (RuntimeError, OSError) as exc:
                # A proxy of the server before a `kill -9` may still hold the port a moment.
                if attempt == 1:
                    log.error("preview proxy: python (haproxy failed to start: %s)", exc)
                    return None
                await asyncio.sleep(0.5)
        self = cls(svc, proxy)
        svc.previews.url_port = native.port
        svc.previews.scheme = "https" if native.tls_pem is not None else "http"
        svc.previews.on_change.append(self.sync)
        svc.previews.on_settle.append(self.settled)
        svc.lifecycle.on_sleep.append(self._sleeping)
        svc.lifecycle.on_stop.append(self._sleeping)
        svc.lifecycle.on_wake.append(self._woken)
        for sandbox_id in svc.previews.sandboxes():
            self.sync(sandbox_id)
        self._poller = asyncio.get_running_loop().create_task(self._poll())
        log.info(
            "preview proxy: native (haproxy pid %s) on %s port %d; misses fall back to port %d",
            proxy.pid,
            svc.previews.scheme,
            native.port,
            config.port,
        )
        return self

    def routes_of(self, sandbox_id: str) -> dict[str, str]:
        """What the map should hold for the sandbox now."""
        if sandbox_id in self._asleep:
            return {}
        previews = self.svc.previews
        exposed = previews.exposed(sandbox_id)
        by_header = previews.reached_by_header(sandbox_id) and previews.traffic_token_of
        record = self.svc.store.get_sandbox(sandbox_id)
        if not (exposed or by_header) or record is None or record.status != "running":
            return {}
        address = self.svc.host.address(sandbox_id)
        if address is None:
            return {}
        domain = previews.domain
        routes = {
            route_key(f"{port}-{sandbox_id}-{token}.{domain}"): route_value(
                address, port, sandbox_id
            )
            for port, token in exposed.items()
        }
        traffic = previews.traffic_token_of(sandbox_id) if previews.traffic_token_of else None
        if by_header and traffic:
            # E2B's hosts: every port, the token in a header (port 0: the host's first label).
            routes[route_key_by_header(sandbox_id, domain, traffic)] = route_value(
                address, 0, sandbox_id
            )
        return routes

    def sync(self, sandbox_id: str) -> None:
        # The wanted routes are read now; the proxy applies changes in the order asked.
        self._spawn(self.proxy.set_routes(sandbox_id, self.routes_of(sandbox_id)))

    async def settled(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    def _sleeping(self, sandbox_id: str) -> None:
        self._asleep[sandbox_id] = time.monotonic()
        self.sync(sandbox_id)

    def _woken(self, sandbox_id: str) -> None:
        self._asleep.pop(sandbox_id, None)
        self.sync(sandbox_id)

    def _spawn(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("native preview proxy: a route change failed", exc_info=task.exception())

    async def _poll(self) -> None:
        n = 0
        while True:
            await asyncio.sleep(ACTIVITY_POLL_S)
            n += 1
            try:
                self._count_activity(await self.proxy.activity())
                if n % RESYNC_EVERY == 0:
                    self._resync()
            except Exception:
                log.exception("native preview proxy: poll failed")

    def _count_activity(self, now: dict[str, PreviewActivity]) -> None:
        touch = self.svc.lifecycle.activity.touch
        for sandbox_id, seen in now.items():
            before = self._counts.get(sandbox_id)
            if seen.open_connections or before is None or seen.requests != before.requests:
                touch(sandbox_id)
        self._counts = now

    def _resync(self) -> None:
        # The store may have changed without a hook (an agent's death, a restart's recovery).
        for sandbox_id in self.svc.previews.sandboxes() | self.proxy.sandboxes():
            record = self.svc.store.get_sandbox(sandbox_id)
            since = self._asleep.get(sandbox_id)
            # Running long after it was to sleep: the pause or stop failed; route it again.
            # (Not at once: the store says running until the freeze has happened.)
            if record and record.status == "running" and since and since < time.monotonic() - 10:
                del self._asleep[sandbox_id]
            self.sync(sandbox_id)

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self.proxy.stop()


def _preview_port(config: ServerConfig, directory: Path) -> int:
    """The configured port, else the one used before (preview URLs outlive a restart)."""
    if config.preview_port:
        return config.preview_port
    saved = directory / "port"
    with contextlib.suppress(FileNotFoundError, ValueError):
        return int(saved.read_text())
    with socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET) as s:
        s.bind((config.host, 0))
        port = int(s.getsockname()[1])
    saved.write_text(str(port))
    return port


def _open_file_limit() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return hard if 0 < hard < 10_000_000 else 0  # unlimited: HAProxy picks


def _unprivileged_user() -> str | None:
    for name in ("haproxy", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            grp.getgrnam(name)
            return name
    return None


def _loopback_for(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _tls_pem(config: ServerConfig, directory: Path) -> Path | None:
    """HAProxy wants the chain and the key in one file: written 0600 under the home."""
    cert, key = config.preview_tls_cert, config.preview_tls_key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ValueError("HUTCH_PREVIEW_TLS_CERT and HUTCH_PREVIEW_TLS_KEY go together")
    pem = directory / "preview.pem"
    fd = os.open(pem, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(cert.read_text().rstrip("\n") + "\n" + key.read_text())
    return pem
