"""What a gVisor (runsc) sandbox needs beyond a runc one: an agent socket without fd passing,
a network namespace made before the sandbox boots, and the spec's differences.

The agent's transport. Debian's runsc has no `--preserve-fds`, so the agent cannot inherit a
listening socket. Instead each sandbox gets one empty host directory, `sandboxes/<id>/sock/`,
bind-mounted at `/.hutch/sock`; runsc runs with `--host-uds=create`, so the agent (the
sandbox's first process) can bind a *host* unix socket there. As soon as the socket file
appears the host renames it out of that directory to `sandboxes/<id>/agent.sock`, the path
the gateway connects to, which nothing inside can name. A unix socket is found by its inode,
so the rename keeps the agent's listener reachable from the host and unreachable from inside;
and `--host-uds=create` (not `open`/`all`) means no process in the sandbox can connect to
any host socket, its own agent's included: `connect()` to a host socket answers EPERM.
What the sandbox may still do, bind more sockets in that directory, is harmless: the host
never looks there again until the next start, which clears it before the agent runs.

The network. A named netns (`ip netns`) is made and wired (veth, address, route, the nft
rules of a runc sandbox) before `runsc run`, which runs inside it with `--network=host`
(why: `Runsc.run_detached`). Every later runsc command that reaches the running sandbox runs
there too (`_netns`).

Users. This runsc cannot use an OCI user namespace: the rootfs overlay is made of idmapped
layers instead (`_gvisor_idmap`), so the disk holds the same shifted ids as a runc sandbox's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from hutch.runtime.container import _trust as trust
from hutch.runtime.container._errors import RuncError, SandboxStartError
from hutch.runtime.container._gvisor_idmap import UnshiftingIdmap
from hutch.runtime.container._gvisor_preload import build_preload, preload_env, preload_mount
from hutch.runtime.container._netns import Networks
from hutch.runtime.container._oci import Mount, Spec, merge_env
from hutch.runtime.container._overlay import mount_overlay
from hutch.runtime.container._runc import ContainerState
from hutch.runtime.container._runsc import Runsc, read_runsc_error, runsc_binary
from hutch.runtime.container._spawn import run_tool
from hutch.runtime.container._spec import RuntimeConfig, SandboxSpec
from hutch.runtime.container._workcgroup import work_limits

SOCKET_MOUNT = "/.hutch/sock"
AGENT_SOCKET_NAME = "agent.sock"
# The file the agent creates, unlinks and closes to send the sentry's queued closes to the
# gofer (agent/_close_flush.py): on the root mount, whose gofer also serves bucket mounts
# (not in a bind mount, each of which has a gofer connection of its own), and under /.hutch,
# where no bucket may be mounted.
CLOSE_FLUSH_FILE = "/.hutch/.close-flush"
NETNS_DIR = Path("/run/netns")
# A sandbox whose sentry ends before its agent listens is booted once more (see `start`).
_BOOT_ATTEMPTS = 2

log = logging.getLogger("hutch.runtime")

# Mounts of what gVisor serves itself (its /proc and /sys are the sentry's own): LXCFS's files
# bound over /proc and /sys would hide the sentry's, which show the sandbox's own view
# already; and the host's cgroupfs means nothing inside gVisor.
_HOST_ONLY_MOUNTS = ("/proc/", "/sys/")
# The agent's `work` cgroup fds come from runc's --preserve-fds; in gVisor the sandbox's
# processes are not host tasks, so there is no host cgroup to move them into.
_RUNC_ONLY_ENV = ("HUTCH_AGENT_WORK_FDS=",)
# The host pids limit of a gVisor sandbox (`host_tasks_limit`).
_HOST_TASKS_BASE = 192
_HOST_TASKS_PER_PROCESS = 24  # the floor: what every sandbox had before the bound below
_SENTRY_IDLE_THREADS = 64
PID_MAX = Path("/proc/sys/kernel/pid_max")


def agent_env(agent_args: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Tells the agent to bind its own socket (see the module's docstring), and how to start
    its Python again for each terminal's leader: gVisor's ttys send no signal for ^C or a
    resize, the leader does (agent/_pty_leader.py)."""
    env = [
        f"HUTCH_AGENT_LISTEN_PATH={SOCKET_MOUNT}/{AGENT_SOCKET_NAME}",
        f"HUTCH_AGENT_CLOSE_FLUSH={CLOSE_FLUSH_FILE}",
    ]
    if "-c" in agent_args:
        python = list(agent_args[: agent_args.index("-c")])
        env.append(f"HUTCH_AGENT_PTY_LEADER={json.dumps(python)}")
    return tuple(env)


def socket_mount(socket_dir: Path) -> Mount:
    return Mount.bind(socket_dir, SOCKET_MOUNT, readonly=False)


def gvisor_spec(
    spec: Spec, *, socket_dir: Path, storage: tuple[Path, Path], preload: Path | None = None
) -> Spec:
    """A runc sandbox spec made fit for this runsc: no user namespace (it cannot make one; the
    layers are idmapped instead), no network namespace (runsc is started inside the
    sandbox's own: see `Runsc.run_detached`), the agent's socket directory, and no mount of
    what the sentry provides itself. Bind mounts from the sandbox's disk `storage[0]` come
    through its idmapped view `storage[1]`, so root inside owns /etc/hosts. The seccomp
    profile stays in the spec: runsc ignores it (its boundary is the sentry, which runs
    under its own seccomp filter on the host). `preload`: the directory of the library that
    lets coreutils stat under this runsc (`_gvisor_preload`), None for none."""
    view = str(storage[1])
    # The etc files come from the disk itself, or from a per-sandbox-range view of it
    # (`bundle/store`, see _rootfs_views), which a gVisor sandbox does not mount.
    disks = (str(storage[0]), str(storage[1].parent / "store"))
    mounts = tuple(
        _from_view(m, disks, view)
        for m in spec.mounts
        if not any(m.destination.startswith(p) for p in _HOST_ONLY_MOUNTS)
    )
    env = tuple(e for e in spec.process.env if not e.startswith(_RUNC_ONLY_ENV))
    extra_env: tuple[str, ...] = agent_env(spec.process.args)
    extra_mounts: tuple[Mount, ...] = (socket_mount(socket_dir),)
    # The sandbox's processes are not host tasks: no `work` cgroup bounds a fork bomb, which
    # would run the sentry out of host pids and end the sandbox. The sentry enforces
    # RLIMIT_NPROC, which the agent sets in each child, keeping `work`'s reserve for itself.
    if spec.linux.resources.pids_limit > 0:
        user = work_limits(
            memory_mb=1, swap_mb=0, pids=spec.linux.resources.pids_limit, memsw=False
        )
        extra_env = (*extra_env, f"HUTCH_AGENT_NPROC={user.pids}")
    if preload is not None:
        extra_env, extra_mounts = (
            (*extra_env, *preload_env(preload)),
            (*extra_mounts, preload_mount(preload)),
        )
    process = dataclasses.replace(spec.process, env=(*env, *extra_env))
    pids = host_tasks_limit(spec.linux.resources.pids_limit, _host_pid_max())
    linux = dataclasses.replace(
        spec.linux,
        resources=dataclasses.replace(spec.linux.resources, pids_limit=pids),
        namespaces=tuple(ns for ns in spec.linux.namespaces if ns not in ("user", "network")),
        uid_mappings=(),
        gid_mappings=(),
    )
    return dataclasses.replace(spec, process=process, mounts=(*mounts, *extra_mounts), linux=linux)


def host_tasks_limit(pids_limit: int, pid_max: int) -> int:
    """The host pids limit of a gVisor sandbox whose processes are limited to `pids_limit`,
    on a host whose kernel hands out `pid_max` pids in all.

    The host pids cgroup counts the sentry's and gofer's threads and, on the ptrace platform,
    the stubs: one host process per address space the sandbox has had at once, with a thread
    for each sentry thread that has ever run it (runsc never ends a stub: a released one is
    pooled with its threads). So the stubs alone reach (address spaces) x (sentry threads),
    and both grow with the processes: up to `pids_limit` address spaces, and a sentry
    thread for each process running at once on top of ~64 of its own. The sentry panics when
    it cannot make a host task ("error initializing first thread: resource temporarily
    unavailable" in its log), ending the sandbox and its agent with it. Measured in a
    64-pid sandbox through a fork bomb and the exec after it: up to 2479 host tasks (sentry
    117 threads, 52 stubs of up to 58), past the 1728 of a linear 24 per process, which
    ended the sandbox in 3 runs of 24; this bound gives 8384 (8192 under a 32768 pid_max).

    The quadratic bound is capped at a quarter of the host's pids, so that no one sandbox
    can take them all (kernel.pid_max is 32768 on some hosts); never below 24 per process.
    A bomb that hits the cap ends its sandbox, not the host (docs/security.md)."""
    bound = _HOST_TASKS_BASE + pids_limit * (pids_limit + _SENTRY_IDLE_THREADS)
    floor = _HOST_TASKS_BASE + _HOST_TASKS_PER_PROCESS * pids_limit
    return max(floor, min(bound, pid_max // 4))


def _host_pid_max() -> int:
    try:
        return int(PID_MAX.read_text())
    except (OSError, ValueError):
        return 32768  # the kernel's default on small machines: the cap errs low


def _from_view(mount: Mount, disks: tuple[str, ...], view: str) -> Mount:
    for disk in disks:
        if mount.source.startswith(disk + "/"):
            return dataclasses.replace(mount, source=view + mount.source[len(disk) :])
    return mount


def reset_socket_dir(socket_dir: Path) -> None:
    """An empty directory for the agent's socket: anything a previous run of the sandbox
    left in it (it may have bound sockets there) is removed first."""
    if socket_dir.is_dir():
        for entry in socket_dir.iterdir():
            entry.unlink(missing_ok=True)
    else:
        socket_dir.mkdir(mode=0o700)


class SentryEnded(SandboxStartError):
    """The sandbox (its sentry, and the agent with it) ended before the agent listened."""


async def take_agent_socket(
    socket_dir: Path,
    final: Path,
    *,
    alive: Callable[[], Awaitable[bool]],
    patience: float = 30.0,
) -> None:
    """Wait for the agent to bind its socket in `socket_dir`, then move it to `final`.

    Raises:
        SentryEnded: the sandbox ended first.
        SandboxStartError: no socket appeared within `patience` seconds.
    """
    staged = socket_dir / AGENT_SOCKET_NAME
    deadline = time.monotonic() + patience
    delay = 0.001
    checks = 0
    moved = False
    while True:
        if not moved:
            with contextlib.suppress(FileNotFoundError):
                os.rename(staged, final)
                moved = True
        # NB: the file appears at bind(), a moment before listen(): until then a connect is
        # refused. Wait for one to go through (the agent sees it close at once).
        if moved and await _accepts(final):
            return
        checks += 1
        if checks % 16 == 0 and not await alive():
            raise SentryEnded("the sandbox's agent exited before it listened")
        if time.monotonic() > deadline:
            raise SandboxStartError(f"the sandbox's agent did not listen within {patience:.0f} s")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.02)


async def _accepts(path: Path) -> bool:
    try:
        _, writer = await asyncio.open_unix_connection(str(path))
    except ConnectionRefusedError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def netns_name(ifname: str) -> str:
    """The named network namespace of the sandbox whose host-side veth is `ifname`."""
    return f"hutch-{ifname}"


async def create_netns(name: str) -> Path:
    """Make the named netns `name` (replacing a stale one); returns its path."""
    await remove_netns(name)
    await _ip("netns", "add", name)
    await _ip("-n", name, "link", "set", "lo", "up")  # runc does this for its own netns
    return NETNS_DIR / name


async def remove_netns(name: str) -> None:
    """Remove the named netns and, with it, the veth end inside it. Idempotent."""
    if (NETNS_DIR / name).exists():
        with contextlib.suppress(SandboxStartError):
            await _ip("netns", "delete", name)


async def _ip(*args: str) -> None:
    out = await run_tool(["ip", *args])
    if out.exit_code != 0:
        raise SandboxStartError(
            f"ip {' '.join(args)} failed: {out.stderr.decode(errors='replace')}"
        )


class GvisorSandboxes:
    """The runsc side of a `Runtime`: what differs from runc to start, inspect, pause, limit
    and remove a gVisor sandbox. Everything else (storage, overlay, bucket mounts, nft rules)
    is the runtime's, shared with runc."""

    def __init__(self, config: RuntimeConfig, networks: Networks, binary: str = "runsc") -> None:
        self._config = config
        self._root = config.home / "runsc"
        self._networks = networks
        self.runsc = Runsc(binary, self._root) if runsc_binary(binary) else None
        self._idmap = UnshiftingIdmap()
        self._preload: Path | None = None

    @property
    def available(self) -> bool:
        return self.runsc is not None

    def owns(self, sandbox_id: str) -> bool:
        """Whether runsc has a container `sandbox_id` (a file test: no runsc process)."""
        return (self._root / f"{sandbox_id}_sandbox:{sandbox_id}.state").exists()

    def _require(self) -> Runsc:
        if self.runsc is None:
            raise SandboxStartError(
                "runtime 'gvisor' is not available on this host (runsc is not installed: "
                "apt-get install runsc); use runtime='runc'"
            )
        return self.runsc

    async def start(
        self, sandbox: SandboxSpec, spec: Spec, bundle: Path, storage: Path, debug: bool
    ) -> Path:
        """Mount the rootfs, wire the network, write the spec, boot the sandbox and take its
        agent's socket to `bundle/agent.sock` (returned). The agent's stderr goes to
        `bundle/agent.log` with `debug`. The caller removes what a failure leaves (`delete`,
        then the mounts under `bundle`)."""
        runsc = self._require()
        rootfs, disk, lower = bundle / "rootfs", bundle / "disk", bundle / "lower"
        for path in (disk, lower):
            path.mkdir(mode=0o700, exist_ok=True)
        self._idmap.mount(sandbox.image.rootfs, lower)
        self._idmap.mount(storage, disk)
        mount_overlay(lower=lower, upper=disk / "upper", work=disk / "work", target=rootfs)
        # Host root's writes through the idmapped layers land as the sandbox's root (owner 0).
        trust.prepare(rootfs, storage / "etc", sandbox, self._config, 0)
        # The spec was built before prepare() kept the sandbox's own CAs: add their variables.
        cas = trust.ca_env(trust.extra_cas(storage / "etc", self._config.ca_certificates))
        process = dataclasses.replace(spec.process, env=merge_env(cas, spec.process.env))
        spec = dataclasses.replace(spec, process=process)
        net = await self._networks.prepare(sandbox.id, sandbox.network)
        name = netns_name(net.ifname)
        netns = await create_netns(name)
        await self._networks.attach(net, name)
        socket_dir = bundle / "sock"
        if self._preload is None:
            self._preload = await asyncio.to_thread(build_preload, self._config.home / "agent")
        spec = gvisor_spec(
            spec, socket_dir=socket_dir, storage=(storage, disk), preload=self._preload
        )
        (bundle / "config.json").write_bytes(spec.dumps())
        runsc_log = bundle / "runsc.log"
        stderr = bundle / "agent.log" if debug else Path(os.devnull)
        socket = bundle / "agent.sock"
        attempt = 0
        while True:
            attempt += 1
            runsc_log.unlink(missing_ok=True)
            reset_socket_dir(socket_dir)
            try:
                await self._boot(runsc, sandbox.id, bundle, netns, stderr, runsc_log)
                await take_agent_socket(socket_dir, socket, alive=lambda: self._running(sandbox.id))
                return socket
            except SentryEnded as e:
                seen = runsc.state(sandbox.id)
                status = f"{seen.status}, pid {seen.pid}" if seen is not None else "no state"
                problem = f"{e} ({status}; runsc: {read_runsc_error(runsc_log)})"
                if attempt == _BOOT_ATTEMPTS:
                    raise SentryEnded(problem) from None
                # NB: seen once in CI and once in ~45 runs of tests/test_gvisor.py on a loaded
                # machine here, not explained: runsc's log was empty. No user code ran yet
                # (the agent never answered), so the sandbox boots again on the same disk and
                # network.
                log.warning("sandbox %s: %s; booting it again", sandbox.id, problem)
                await runsc.delete(sandbox.id, netns=netns)
                socket.unlink(missing_ok=True)

    async def _boot(
        self, runsc: Runsc, sandbox_id: str, bundle: Path, netns: Path, stderr: Path, log: Path
    ) -> None:
        stderr_fd = os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            await runsc.run_detached(sandbox_id, bundle, netns=netns, stderr_fd=stderr_fd, log=log)
        finally:
            os.close(stderr_fd)

    async def _running(self, sandbox_id: str) -> bool:
        state = await self.state(sandbox_id)
        return state is not None and state.status in ("created", "running")

    def _netns(self, sandbox_id: str) -> Path | None:
        net = self._networks.get(sandbox_id)
        path = NETNS_DIR / netns_name(net.ifname) if net is not None else None
        return path if path is not None and path.exists() else None

    async def state(self, sandbox_id: str) -> ContainerState | None:
        return self.runsc.state(sandbox_id) if self.runsc is not None else None

    async def list(self) -> list[ContainerState]:
        return self.runsc.list() if self.runsc is not None else []

    async def pause(self, sandbox_id: str, paused: bool) -> None:
        """`runsc pause` (or `resume`): the sentry stops its tasks, and runsc's state says
        paused (which a restarted server reads back; a frozen cgroup would read as running)."""
        command = "pause" if paused else "resume"
        await self._require().call(command, sandbox_id, netns=self._netns(sandbox_id))

    async def delete(self, sandbox_id: str) -> None:
        """Remove the runsc container (if any) and the sandbox's named netns. Idempotent."""
        netns = self._netns(sandbox_id)
        if self.runsc is not None and self.owns(sandbox_id):
            state = self.runsc.state(sandbox_id)
            if state is not None and state.status == "paused":
                # NB: this runsc panics on `delete --force` of a paused container.
                with contextlib.suppress(RuncError):
                    await self.runsc.call("resume", sandbox_id, netns=netns)
            await self.runsc.delete(sandbox_id, netns=netns)
        if netns is not None:
            await remove_netns(netns.name)
