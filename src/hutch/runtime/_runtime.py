"""The `Runtime` facade: a sandbox spec in, a running locked-down runc container out, and back.

Host layout under `HUTCH_HOME`:

    sandboxes/<id>/             the OCI bundle (0711: runc resolves it as the sandbox's root)
        config.json  rootfs/    the spec, and the overlay mounted there before runc runs
        agent.sock              the agent's listening socket, handed to it as fd 3; never
                                mounted into the sandbox, so nothing inside can reach or swap it
        runc.log  agent.log     runc's errors; the agent's stderr only with debug_agent
    storage/<id>/               the sandbox's btrfs subvolume with its disk quota:
        upper/ work/ etc/       the overlay's writable layer, and /etc/hosts etc. bind-mounted in
    runc/<id>/                  runc's state (`runc --root`)
    agent/runtime-*/ code-*/    the agent's Python and code, mounted read-only at /.hutch

A sandbox's traces are the runc state, its cgroups (`/sys/fs/cgroup/*/hutch/<id>`), the rootfs
mount, the subvolume and the bundle dir; `destroy` removes them in that order, so the bundle dir,
removed last, marks an unfinished destroy for `sweep` to complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import resource
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import hutch
from hutch.runtime._agent_bundle import AGENT_ENV, AgentBundle, agent_args, ensure_agent_bundle
from hutch.runtime._buckets import BucketMounts
from hutch.runtime._cgroups import (
    cgroups_path,
    host_accounts_swap,
    kill_cgroup_tasks,
    remove_cgroups,
)
from hutch.runtime._errors import (
    SandboxExists,
    SandboxMissing,
    SandboxRuntimeError,
    SandboxStartError,
)
from hutch.runtime._freezer import set_frozen
from hutch.runtime._idmap import HOST_ID_BASE, ID_RANGE
from hutch.runtime._image_defaults import image_agent_env
from hutch.runtime._images import Image
from hutch.runtime._mounts import mounts_under, umount
from hutch.runtime._netns import DEFAULT_SUBNET, Networks, SandboxNet
from hutch.runtime._nft import NetworkPolicy
from hutch.runtime._oci import (
    CPU_PERIOD_US,
    Resources,
    SandboxLayout,
    Spec,
    merge_env,
    resources,
    sandbox_spec,
)
from hutch.runtime._overlay import mount_overlay, unmount_overlay
from hutch.runtime._runc import Runc
from hutch.runtime._seccomp import default_profile, kernel_version
from hutch.runtime._snapshots import DiskSnapshots, disk_from
from hutch.runtime._storage import StoragePool

log = logging.getLogger("hutch.runtime")

SandboxState = Literal["running", "paused", "stopped", "missing"]

SANDBOX_ID_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
_MAX_NOFILE = 1 << 20


def _debug_agent_default() -> bool:
    return os.environ.get("HUTCH_DEBUG_AGENT") == "1"


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandbox."""

    cpu: float = 1.0
    memory_mb: int = 1024
    swap_mb: int = 0  # swap on top of memory: the memory+swap limit is memory_mb + swap_mb
    pids: int = 512
    disk_mb: int = 4096


@dataclass(frozen=True)
class SandboxSpec:
    """What to run: `image` with `env` (over the image's) and `limits`."""

    id: str
    image: Image
    env: Mapping[str, str]
    limits: Limits
    runtime: Literal["runc", "gvisor"] = "runc"
    hostname: str = "sandbox"
    network: NetworkPolicy = field(default_factory=NetworkPolicy)  # default: no egress
    # A subvolume whose copy is the new sandbox's disk (a snapshot, or a disk to fork).
    disk_from: Path | None = None


@dataclass(frozen=True)
class RuntimeConfig:
    """Settings of the host-side runtime.

    Attributes:
        home: `HUTCH_HOME`; everything the runtime keeps lives under it.
        storage_size_gb: size of the sparse btrfs pool file holding the writable layers.
        runc: the runc binary (name on PATH or path).
        agent_package: the `hutch` package whose `_wire` and `agent` run in sandboxes
            (default: this installation's).
        debug_agent: send the agent's stderr to `sandboxes/<id>/agent.log` (default: the
            `HUTCH_DEBUG_AGENT=1` environment variable). Off in production: sandbox root could
            reopen its PID 1's stderr and fill the host disk through it.
    """

    home: Path
    storage_size_gb: int = 64
    runc: str = "runc"
    agent_package: Path | None = None
    debug_agent: bool = field(default_factory=_debug_agent_default)
    network_subnet: str = DEFAULT_SUBNET


@dataclass(frozen=True, slots=True)
class _Paths:
    bundle: Path
    rootfs: Path
    config: Path
    socket: Path
    runc_log: Path
    agent_log: Path
    storage: Path
    upper: Path
    work: Path
    etc: Path


class Runtime:
    """Creates, restarts, inspects and removes runc sandboxes. One per `HUTCH_HOME`."""

    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config
        self._home = config.home
        self._sandboxes = config.home / "sandboxes"
        self._storage = StoragePool(config.home, config.storage_size_gb)
        self.snapshots = DiskSnapshots(self._storage)
        self._runc = Runc(config.runc, config.home / "runc")
        self._seccomp = default_profile(kernel_version())
        self._memsw = host_accounts_swap()
        self._nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], _MAX_NOFILE)
        self._bundle: AgentBundle | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self.buckets = BucketMounts(config.home)
        self._networks = Networks(config.home, config.network_subnet, ID_RANGE)
        # Network attaches still running for sandboxes created with defer_network=True.
        self._pending_networks: dict[str, asyncio.Future[None]] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def setup(self) -> None:
        """Mount the storage pool and build the agent bundle. Idempotent; call at server start.

        Raises:
            StorageError: the btrfs pool cannot be created or mounted.
            AgentBundleError: the agent's runtime cannot be assembled.
        """
        self._home.mkdir(parents=True, exist_ok=True)
        # The sandbox's root (an unprivileged host uid) must be able to traverse to its rootfs
        # and to the agent bundle: o+x on the home, never o+r.
        _add_mode(self._home, 0o711)
        _check_traversable(self._home.resolve().parent)
        _mkdir(self._sandboxes, 0o711)
        await self._storage.ensure()
        await self._networks.setup()
        package = self.config.agent_package or Path(hutch.__file__).parent
        self._bundle = await asyncio.to_thread(ensure_agent_bundle, self._home / "agent", package)

    async def teardown(self) -> None:
        """Release what `setup` took that no sandbox needs: the storage pool's mount and the
        nft table, if they hold no sandbox. Running sandboxes are left alone."""
        if self._storage.is_mounted() and not self._storage.names():
            with contextlib.suppress(OSError):
                umount(self._storage.root)
        await self._networks.teardown()

    def supports(self, runtime: str) -> bool:
        """Whether sandboxes can use `runtime` ("runc" or "gvisor") on this host."""
        return runtime == "runc"

    def rootfs(self, sandbox_id: str) -> Path:
        """The host path where the sandbox's root filesystem is mounted while it runs."""
        _check_id(sandbox_id)
        return self._paths(sandbox_id).rootfs

    def agent_socket(self, sandbox_id: str) -> Path:
        """The host path of the sandbox agent's listening unix socket."""
        return self._sandboxes / sandbox_id / "agent.sock"

    # -- create / start --------------------------------------------------------------------

    async def create(self, spec: SandboxSpec, *, defer_network: bool = False) -> Path:
        """Start a new sandbox; returns its agent's socket, already listening.

        On any failure everything created so far is removed again. With ``defer_network``
        the veth is attached in the background, overlapping the agent's own start-up; the
        caller must then ``await network_ready(id)`` before handing the sandbox out.

        Raises:
            ValueError: invalid id or limits.
            SandboxExists: the id has a sandbox (or leftovers of one: `destroy` it first).
            SandboxStartError: runc could not start it (the message has runc's error).
        """
        self._validate(spec)
        bundle = self._require_setup()
        paths = self._paths(spec.id)
        async with self._lock(spec.id):
            if paths.bundle.exists() or self._storage.exists(spec.id):
                raise SandboxExists(f"sandbox {spec.id!r} already exists")
            try:
                timings: dict[str, float] = {}
                with _timed(timings, "storage"):
                    self._prepare_storage(spec, paths)
                return await self._start(spec, paths, bundle, timings, defer_network)
            except BaseException:
                # Shielded: a cancelled create must still roll back completely.
                await asyncio.shield(self._destroy(spec.id))
                raise

    async def start_existing(self, spec: SandboxSpec) -> Path:
        """Run a sandbox again on its kept writable layer (after a host reboot, or when its
        container stopped); returns the agent socket. A running sandbox is left as it is.

        Raises:
            SandboxMissing: the sandbox has no writable layer to start from.
            SandboxStartError: runc could not start it; the writable layer is kept.
        """
        self._validate(spec)
        bundle = self._require_setup()
        paths = self._paths(spec.id)
        async with self._lock(spec.id):
            state = await self._runc.state(spec.id)
            if state is not None and state.status in ("running", "paused", "pausing"):
                return paths.socket
            if not self._storage.exists(spec.id):
                raise SandboxMissing(f"sandbox {spec.id!r} has no writable layer to start from")
            await self._stop_container(spec.id)
            try:
                self._write_etc_files(spec, paths, overwrite=False)
                return await self._start(spec, paths, bundle, {})
            except BaseException:
                await asyncio.shield(self._stop_container(spec.id))
                raise

    def _prepare_storage(self, spec: SandboxSpec, paths: _Paths) -> None:
        if spec.disk_from is not None:
            # The copy has the upper/work/etc dirs of its source already.
            disk_from(spec.disk_from, self._storage, spec.id, spec.limits.disk_mb << 20)
            self._write_etc_files(spec, paths, overwrite=True)
            return
        subvolume = self._storage.create(spec.id, spec.limits.disk_mb << 20)
        os.chmod(subvolume, 0o755)  # created under the umask; the sandbox's root traverses it
        lower = os.stat(spec.image.rootfs)
        # The overlay's root takes the upper dir's owner and mode: make them the image's.
        _mkdir(paths.upper, stat.S_IMODE(lower.st_mode), owner=(lower.st_uid, lower.st_gid))
        _mkdir(paths.work, 0o700, owner=(HOST_ID_BASE, HOST_ID_BASE))
        if not (spec.image.rootfs / "workspace").is_dir():
            _mkdir(paths.upper / "workspace", 0o755, owner=(HOST_ID_BASE, HOST_ID_BASE))
        self._write_etc_files(spec, paths, overwrite=True)

    def _write_etc_files(self, spec: SandboxSpec, paths: _Paths, *, overwrite: bool) -> None:
        files = {
            "hosts": etc_hosts(spec.hostname),
            "hostname": f"{spec.hostname}\n",
            "resolv.conf": resolv_conf(_read_text(Path("/etc/resolv.conf")), spec.network),
        }
        _mkdir(paths.etc, 0o755)
        for name, text in files.items():
            path = paths.etc / name
            if not overwrite and path.exists():
                continue  # the sandbox may have edited it
            path.write_text(text)
            # Root inside may edit them (as in Docker); they count against its disk quota.
            os.chown(path, HOST_ID_BASE, HOST_ID_BASE)
            os.chmod(path, 0o644)

    async def network_ready(self, sandbox_id: str) -> None:
        """Wait for a deferred network attach (see `create`); raises if it failed."""
        pending = self._pending_networks.pop(sandbox_id, None)
        if pending is not None:
            await pending

    async def _attach_network(self, sandbox_id: str, prepared: asyncio.Future[SandboxNet]) -> None:
        net = await prepared
        await self._networks.attach(net, await self._init_pid(sandbox_id))

    async def _start(
        self,
        spec: SandboxSpec,
        paths: _Paths,
        bundle: AgentBundle,
        timings: dict[str, float],
        defer_network: bool = False,
    ) -> Path:
        _mkdir(paths.bundle, 0o711)
        _mkdir(paths.rootfs, 0o755)
        with _timed(timings, "overlay"):
            unmount_overlay(paths.rootfs)  # a stale mount from before a runc failure
            mount_overlay(
                lower=spec.image.rootfs, upper=paths.upper, work=paths.work, target=paths.rootfs
            )
        with _timed(timings, "config"):
            paths.config.write_bytes(self._spec_for(spec, paths, bundle).dumps())
        with _timed(timings, "socket"):
            listener = listen_unix(paths.socket)
        paths.runc_log.unlink(missing_ok=True)  # runc appends: errors of an earlier run
        # The sandbox's addresses and nft rules need no running container: overlap runc.
        network = asyncio.ensure_future(self._networks.prepare(spec.id, spec.network))
        stderr_fd = self._agent_stderr(paths)
        try:
            with _timed(timings, "runc"):
                await self._runc.run_detached(
                    spec.id,
                    paths.bundle,
                    fd3=listener.fileno(),
                    stderr_fd=stderr_fd,
                    log=paths.runc_log,
                )
        except BaseException:
            with contextlib.suppress(BaseException):
                await network  # never leave it running behind a failed start
            raise
        finally:
            # The container holds its own copies now.
            listener.close()
            os.close(stderr_fd)
        if defer_network:
            self._pending_networks[spec.id] = asyncio.ensure_future(
                self._attach_network(spec.id, network)
            )
            return paths.socket
        with _timed(timings, "network"):
            await self._attach_network(spec.id, network)
        log.debug(
            "started sandbox %s: %s",
            spec.id,
            " ".join(f"{k}={v * 1e3:.2f}ms" for k, v in timings.items()),
            extra={"sandbox_id": spec.id, "timings": timings},
        )
        return paths.socket

    def _agent_stderr(self, paths: _Paths) -> int:
        if self.config.debug_agent:
            return os.open(
                paths.agent_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
            )
        return os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)

    def _resources(self, limits: Limits) -> Resources:
        return resources(
            cpu=limits.cpu,
            memory_mb=limits.memory_mb,
            swap_mb=limits.swap_mb,
            pids=limits.pids,
            memsw=self._memsw,
        )

    def _spec_for(self, spec: SandboxSpec, paths: _Paths, bundle: AgentBundle) -> Spec:
        limits = spec.limits
        env = merge_env(spec.image.config.env, spec.env, AGENT_ENV, image_agent_env(spec.image))
        return sandbox_spec(
            cgroups_path=cgroups_path(spec.id),
            hostname=spec.hostname,
            layout=SandboxLayout(
                rootfs=paths.rootfs,
                etc_hosts=paths.etc / "hosts",
                etc_hostname=paths.etc / "hostname",
                etc_resolv_conf=paths.etc / "resolv.conf",
                extra_mounts=bundle.mounts(),
            ),
            args=agent_args(),
            env=env,
            resources=self._resources(limits),
            seccomp=self._seccomp,
            id_base=HOST_ID_BASE,
            id_range=ID_RANGE,
            nofile=self._nofile,
            shm_bytes=max(64, limits.memory_mb // 2) << 20,
        )

    async def stop(self, sandbox_id: str) -> None:
        """End every process of the sandbox and release its container, keeping its disk
        (subvolume), its network address and its bucket mounts' state: `start_existing`
        runs it again. Idempotent."""
        _check_id(sandbox_id)
        paths = self._paths(sandbox_id)
        async with self._lock(sandbox_id):
            pending = self._pending_networks.pop(sandbox_id, None)
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            await self._stop_container(sandbox_id)
            # The rootfs overlay and bucket binds under it are host mounts: they outlive
            # the container (start mounts them again).
            for mountpoint in mounts_under(paths.bundle):
                umount(mountpoint)

    def disk_path(self, sandbox_id: str) -> Path:
        """The sandbox's disk: the btrfs subvolume holding its writable layer."""
        _check_id(sandbox_id)
        return self._storage.path(sandbox_id)

    # -- destroy / sweep -------------------------------------------------------------------

    async def destroy(self, sandbox_id: str) -> None:
        """Remove every trace of a sandbox: its processes, runc state, cgroups, rootfs mount,
        subvolume (with its quota group), bundle dir and socket. Idempotent.

        Raises:
            SandboxRuntimeError: some trace could not be removed (the others were); calling
                again retries.
        """
        _check_id(sandbox_id)
        async with self._lock(sandbox_id):
            await self._destroy(sandbox_id)

    async def _destroy(self, sandbox_id: str) -> None:
        paths = self._paths(sandbox_id)
        errors: list[str] = []
        pending = self._pending_networks.pop(sandbox_id, None)
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        # Every step runs even if one before failed; all failures are reported together.
        try:
            await self.buckets.remove_all(sandbox_id, paths.rootfs)
        except OSError as e:
            errors.append(f"bucket mounts: {e}")
        try:
            await self._stop_container(sandbox_id)
        except (SandboxRuntimeError, OSError) as e:
            errors.append(f"container: {e}")
        try:
            await self._networks.remove(sandbox_id)
        except (SandboxRuntimeError, OSError) as e:
            errors.append(f"network: {e}")
        try:
            for mountpoint in mounts_under(paths.bundle):
                umount(mountpoint)
        except OSError as e:
            errors.append(f"rootfs mount: {e}")
        try:
            self._storage.delete(sandbox_id)
        except SandboxRuntimeError as e:
            errors.append(str(e))
        try:
            _rmtree(paths.bundle)
        except OSError as e:
            errors.append(f"bundle dir: {e}")
        if errors:
            raise SandboxRuntimeError(
                f"sandbox {sandbox_id!r} was only partly removed ({'; '.join(errors)}); "
                "destroy it again to retry"
            )

    async def _stop_container(self, sandbox_id: str) -> None:
        """Kill the container and delete its runc state and cgroups."""
        # NB: `runc delete --force` of a live container sends SIGKILL and then sleeps a fixed
        # 100 ms before it looks again; killing every task ourselves and waiting for the
        # cgroups to empty makes it a plain delete (~10 ms instead of ~110 ms).
        await kill_cgroup_tasks(sandbox_id)
        await self._runc.delete(sandbox_id)
        # runc removes its cgroups, but not if it crashed or its state was lost mid-create.
        await remove_cgroups(sandbox_id)

    async def sweep(self, keep: Collection[str]) -> list[str]:
        """Destroy every sandbox of this home whose id is not in `keep`; returns their ids.

        Looks at everything a sandbox leaves (runc state, bundle dirs, mounts, subvolumes), so
        half-created and half-destroyed sandboxes are found too.
        """
        found = {c.id for c in await self._runc.list()}
        if self._sandboxes.is_dir():
            found.update(p.name for p in self._sandboxes.iterdir())
        found.update(p.relative_to(self._sandboxes).parts[0] for p in mounts_under(self._sandboxes))
        found.update(self._storage.names())
        found.update(self.buckets.sandbox_ids())
        found.update(self._networks.ids())
        kept = set(keep)
        stale = sorted(i for i in found if SANDBOX_ID_RE.fullmatch(i) and i not in kept)
        errors = []
        for sandbox_id in stale:
            try:
                await self.destroy(sandbox_id)
            except SandboxRuntimeError as e:
                errors.append(str(e))
        if errors:
            log.warning("sweep could not remove everything: %s", "; ".join(errors))
        return stale

    # -- network ---------------------------------------------------------------------------

    async def _init_pid(self, sandbox_id: str) -> int:
        try:
            state = json.loads((self._home / "runc" / sandbox_id / "state.json").read_bytes())
            return int(state["init_process_pid"])
        except (OSError, ValueError, KeyError, TypeError):
            container = await self._runc.state(sandbox_id)
            if container is None or not container.pid:
                raise SandboxStartError(f"sandbox {sandbox_id!r} has no running init") from None
            return container.pid

    async def set_network_policy(self, sandbox_id: str, policy: NetworkPolicy) -> None:
        """Replace a running sandbox's egress policy; effective for its next packet."""
        _check_id(sandbox_id)
        await self._networks.set_policy(sandbox_id, policy)
        # The resolver follows the policy, unless the sandbox wrote its own resolv.conf.
        # NB: rewritten in place: the sandbox sees this inode through a bind mount.
        path = self._paths(sandbox_id).etc / "resolv.conf"
        if _read_text(path).startswith(RESOLV_MARKER):
            _rewrite_in_place(path, resolv_conf(_read_text(Path("/etc/resolv.conf")), policy))

    async def open_gateway_port(self, sandbox_id: str, port: int) -> tuple[str, str]:
        """Let the sandbox reach TCP `port` on its gateway; (sandbox address, gateway)."""
        net = await self._networks.open_gateway_port(sandbox_id, port)
        return net.sandbox_ip, net.host_ip

    def sandbox_gateway(self, sandbox_id: str) -> str | None:
        """The host side of the sandbox's veth (None if it has no network yet)."""
        net = self._networks.get(sandbox_id)
        return net.host_ip if net is not None else None

    def sandbox_address(self, sandbox_id: str) -> str | None:
        """The sandbox's IPv4 address on its veth (None if it has no network)."""
        net = self._networks.get(sandbox_id)
        return net.sandbox_ip if net is not None else None

    # -- inspect ---------------------------------------------------------------------------

    async def state(self, sandbox_id: str) -> SandboxState:
        """running / paused; stopped (its writable layer remains: `start_existing` runs it
        again); missing (nothing left)."""
        _check_id(sandbox_id)
        container = await self._runc.state(sandbox_id)
        if container is not None and container.status == "running":
            return "running"
        if container is not None and container.status in ("paused", "pausing"):
            return "paused"
        if container is not None or self._storage.exists(sandbox_id):
            return "stopped"
        return "missing"

    async def list_sandboxes(self) -> dict[str, str]:
        """id -> runc status (created, running, pausing, paused, stopped) of this home's
        containers."""
        return {c.id: c.status for c in await self._runc.list()}

    async def update_limits(self, sandbox_id: str, limits: Limits) -> None:
        """Apply new cpu, memory, swap and pids limits to a running sandbox (its cgroups).
        The disk quota is fixed at create."""
        _check_id(sandbox_id)
        r = self._resources(limits)
        args = ["--cpu-quota", str(r.cpu.quota), "--cpu-period", str(CPU_PERIOD_US)]
        args += ["--cpu-share", str(r.cpu.shares), "--pids-limit", str(r.pids_limit)]
        args += ["--memory", str(r.memory.limit)]
        if r.memory.swap:
            args += ["--memory-swap", str(r.memory.swap)]
        await self._runc.update(sandbox_id, *args)

    async def pause(self, sandbox_id: str) -> None:
        """Freeze every process of the sandbox (cgroup freezer); memory stays as it is."""
        _check_id(sandbox_id)
        await set_frozen(sandbox_id, True)

    async def resume(self, sandbox_id: str) -> None:
        _check_id(sandbox_id)
        await set_frozen(sandbox_id, False)

    # -- helpers ---------------------------------------------------------------------------

    def _paths(self, sandbox_id: str) -> _Paths:
        bundle = self._sandboxes / sandbox_id
        storage = self._storage.path(sandbox_id)
        return _Paths(
            bundle=bundle,
            rootfs=bundle / "rootfs",
            config=bundle / "config.json",
            socket=bundle / "agent.sock",
            runc_log=bundle / "runc.log",
            agent_log=bundle / "agent.log",
            storage=storage,
            upper=storage / "upper",
            work=storage / "work",
            etc=storage / "etc",
        )

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    def _require_setup(self) -> AgentBundle:
        if self._bundle is None:
            raise SandboxRuntimeError("Runtime.setup() must be awaited before sandboxes start")
        return self._bundle

    def _validate(self, spec: SandboxSpec) -> None:
        """Refuse a bad spec before anything is created for it."""
        _check_id(spec.id)
        if not HOSTNAME_RE.fullmatch(spec.hostname):
            raise ValueError(f"invalid hostname {spec.hostname!r}")
        if spec.limits.disk_mb <= 0:
            raise ValueError("disk_mb must be positive")
        self._resources(spec.limits)
        merge_env(spec.image.config.env, spec.env)
        if not self.supports(spec.runtime):
            raise SandboxStartError(
                f"runtime {spec.runtime!r} is not available on this host (runsc is not "
                "installed); use runtime='runc'"
            )


def _check_id(sandbox_id: str) -> None:
    if not SANDBOX_ID_RE.fullmatch(sandbox_id):
        raise ValueError(
            f"invalid sandbox id {sandbox_id!r}: 1-63 characters of a-z, 0-9 and '-', "
            "starting and ending with a letter or digit"
        )


def listen_unix(path: Path) -> socket.socket:
    """A listening unix socket at `path` that only root can connect to, replacing any old one.

    Bound in a private directory and renamed into place: there is never a moment when the
    socket exists at `path` with the umask's looser mode.
    """
    private = path.parent / f".sock-{secrets.token_hex(4)}"
    private.mkdir(mode=0o700)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        staged = private / "s"
        sock.bind(str(staged))
        os.chmod(staged, 0o600)
        sock.listen(512)
        os.rename(staged, path)
    except BaseException:
        sock.close()
        raise
    finally:
        with contextlib.suppress(OSError):
            os.unlink(private / "s")  # only there if the rename did not happen
        os.rmdir(private)
    return sock


def _mkdir(path: Path, mode: int, owner: tuple[int, int] | None = None) -> None:
    """mkdir -p with exactly `mode`, whatever the umask."""
    path.mkdir(mode=mode, exist_ok=True)
    os.chmod(path, mode)
    if owner is not None:
        os.chown(path, *owner)


def _rmtree(path: Path) -> None:
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass


def _add_mode(path: Path, bits: int) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & bits != bits:
        os.chmod(path, mode | (bits & 0o111))


def _check_traversable(directory: Path) -> None:
    for path in (directory, *directory.parents):
        if not path.stat().st_mode & stat.S_IXOTH:
            raise SandboxRuntimeError(
                f"{path} is not searchable by others (o+x), so sandboxes, whose root is an "
                f"unprivileged host uid, cannot reach their root filesystem under it: "
                f"chmod o+x {path}, or put HUTCH_HOME elsewhere"
            )


def _rewrite_in_place(path: Path, text: str) -> None:
    with open(path, "r+") as f:
        f.truncate(0)
        f.write(text)


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def etc_hosts(hostname: str) -> str:
    return (
        f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    )


_FALLBACK_NAMESERVERS = ("8.8.8.8", "8.8.4.4")


RESOLV_MARKER = "# Written by Hutch for this sandbox's network policy.\n"


def resolv_conf(host: str, policy: NetworkPolicy | None = None) -> str:
    """The host's resolv.conf without loopback nameservers (unreachable from the sandbox's
    network namespace), falling back to public resolvers as Docker does.

    With no egress at all (network="none", no allow list) the resolver is 127.0.0.1, where
    nothing listens: lookups fail at once. A remote resolver would be refused by nftables too,
    but the kernel rate-limits those ICMP errors (1/s per destination), so every other lookup
    waited out the 5 s DNS timeout (ipykernel's start-up does several).
    """
    if policy is not None and not policy.internet and not policy.allow:
        return (
            RESOLV_MARKER + "# network=none: no name server is reachable.\nnameserver 127.0.0.1\n"
        )
    lines = []
    servers = 0
    for line in host.splitlines():
        words = line.split()
        if words[:1] == ["nameserver"] and len(words) > 1:
            if words[1].startswith("127.") or words[1] == "::1":
                continue
            servers += 1
        lines.append(line)
    if servers == 0:
        lines += [f"nameserver {ns}" for ns in _FALLBACK_NAMESERVERS]
    return RESOLV_MARKER + "\n".join(lines) + "\n"


@contextlib.contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = time.perf_counter() - started
