"""The native preview proxy as a child process: HAProxy started with a generated config,
kept alive (started again, with every route, if it dies), and its route map changed live
through the admin socket."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import time
from pathlib import Path

from hutch.proxy._haproxy_admin import (
    Activity,
    AdminError,
    admin_command,
    parse_activity,
    sessions_to,
)
from hutch.proxy._haproxy_config import (
    ACTIVITY_TABLE,
    NativeProxyConfig,
    render_config,
    unreachable_response,
)

log = logging.getLogger("hutch.proxy")

_PR_SET_PDEATHSIG = 1
_START_TIMEOUT = 10.0


def _die_with_parent() -> None:
    # NB: a `kill -9` of the server must not leave HAProxy holding the preview port: the next
    # server could not listen on it.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class NativeProxy:
    """One HAProxy process and the routes Hutch wants it to hold.

    Routes are grouped by sandbox: `set_routes(sandbox_id, {key: value})` replaces that
    sandbox's entries, and connections to a route that went away are shut at once.
    """

    def __init__(self, config: NativeProxyConfig, binary: str) -> None:
        self.config = config
        self.binary = binary
        self._routes: dict[str, dict[str, str]] = {}  # sandbox id -> map key -> value
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one map change at a time, in the order asked
        self._stopping = False
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        self.config.directory.mkdir(parents=True, exist_ok=True)
        self.config.config_path.write_text(render_config(self.config))
        self.config.unreachable_path.write_bytes(unreachable_response())
        await self._spawn()
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    async def _spawn(self) -> None:
        # The map file holds every route at start: a restarted proxy routes what the old did.
        lines = [f"{k} {v}\n" for routes in self._routes.values() for k, v in routes.items()]
        self.config.map_path.write_text("".join(lines))
        with contextlib.suppress(FileNotFoundError):
            self.config.admin_socket.unlink()
        await _end_leftover(self.config)
        with open(self.config.directory / "haproxy.log", "ab") as err:  # noqa: ASYNC230
            # Master-worker: the master keeps root and the parent-death signal (a credential
            # change would clear it); the worker drops to `run_as` and exits with the master.
            self._proc = await asyncio.create_subprocess_exec(
                self.binary,
                "-W",
                "-db",
                "-f",
                str(self.config.config_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                preexec_fn=_die_with_parent,
            )
        self.config.pid_path.write_text(str(self._proc.pid))
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            try:
                await admin_command(self.config.admin_socket, "show info", wait=1.0)
                return
            except AdminError:
                if self._proc.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "haproxy did not start; see " + str(self.config.directory / "haproxy.log")
                    ) from None
                await asyncio.sleep(0.02)

    async def _supervise(self) -> None:
        while not self._stopping:
            assert self._proc is not None
            code = await self._proc.wait()
            if self._stopping:
                return
            log.warning("haproxy (preview proxy) exited with %s; starting it again", code)
            self.restarts += 1
            async with self._lock:
                try:
                    await self._spawn()
                except (RuntimeError, OSError):
                    log.exception("haproxy could not be started again; retrying in 1 s")
                    await asyncio.sleep(1.0)

    def sandboxes(self) -> set[str]:
        return set(self._routes)

    async def set_routes(self, sandbox_id: str, routes: dict[str, str]) -> None:
        """Make `routes` the sandbox's entries in the map; shut connections to dropped ones."""
        async with self._lock:
            old = self._routes.get(sandbox_id, {})
            if old == routes:
                return
            if routes:
                self._routes[sandbox_id] = dict(routes)
            else:
                self._routes.pop(sandbox_id, None)
            path = self.config.map_path
            commands = [f"del map {path} {k}" for k in old if k not in routes]
            commands += [
                f"{'set' if k in old else 'add'} map {path} {k} {v}"
                for k, v in routes.items()
                if old.get(k) != v
            ]
            gone = {_destination(v) for k, v in old.items() if routes.get(k) != v}
            try:
                await self._run(commands)
                if gone:
                    await self._shut_sessions(gone)
            except AdminError:
                # The supervisor starts it again from `_routes`, which is already right.
                log.warning("haproxy admin socket unavailable; routes apply at its restart")

    async def _run(self, commands: list[str]) -> None:
        # Several commands per connection: one admin round trip per change.
        for i in range(0, len(commands), 50):
            answer = await admin_command(self.config.admin_socket, ";".join(commands[i : i + 50]))
            if "not found" in answer.lower() or "unknown" in answer.lower():
                log.warning("haproxy admin: %s", answer.strip())

    async def _shut_sessions(self, destinations: set[tuple[str, int]]) -> None:
        dump = await admin_command(self.config.admin_socket, "show sess all")
        ids = [sid for address, port in destinations for sid in sessions_to(dump, address, port)]
        if ids:
            await self._run([f"shutdown session {sid}" for sid in ids])

    async def activity(self) -> dict[str, Activity]:
        """Per sandbox: requests counted since the proxy started, and open connections."""
        return parse_activity(
            await admin_command(self.config.admin_socket, f"show table {ACTIVITY_TABLE}")
        )

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _end_leftover(config: NativeProxyConfig) -> None:
    """Kill the proxy a previous server of this home left (one that outlived a `kill -9`):
    it holds the port, and it would go on routing what that server knew."""
    pid = _leftover_pid(config)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        try:
            os.kill(pid, 0)  # still there (a zombie until its parent, init, reaps it)?
        except ProcessLookupError:
            break
        await asyncio.sleep(0.02)
    # Its worker exits with it; wait until the port is free (at most a second).
    for _ in range(50):
        if not _port_taken(config.bind_host, config.port):
            return
        await asyncio.sleep(0.02)


def _leftover_pid(config: NativeProxyConfig) -> int | None:
    try:
        pid = int(config.pid_path.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    # The pid may have been reused by something else since.
    return pid if str(config.config_path).encode() in cmdline else None


def _port_taken(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError:
            return True
    return False


def _destination(value: str) -> tuple[str, int]:
    address, port, _ = value.split("|", 2)
    return address, int(port)


def haproxy_binary() -> str | None:
    """HAProxy's path, if it is installed."""
    for directory in ("/usr/sbin", "/usr/local/sbin", *os.get_exec_path()):
        candidate = os.path.join(directory, "haproxy")
        if os.access(candidate, os.X_OK):
            return candidate
    return None
