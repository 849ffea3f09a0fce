"""The `Runtime` facade: a sandbox spec in, a running locked-down runc container out, and back.

Host layout under `HUTCH_HOME`:

    sandboxes/<id>/             the OCI bundle (0711: runc resolves it as the sandbox's root)
        config.json  rootfs/    the spec, and the overlay mounted there before runc runs
        agent.sock              the agent's listening socket, handed to it as fd 3; never
                                mounted into the sandbox, so nothing inside can reach or swap it
        runc.log  agent.log     runc's errors; the agent's stderr only with debug_agent
        halted                  ended on purpose (stop, destroy): its init's end is no death
    storage/<id>/               the sandbox's btrfs subvolume with its disk quota:
        upper/ work/ etc/       the overlay's writable layer, and /etc/hosts etc. bind-mounted in
    runc/<id>/                  runc's state (`runc --root`)
    agent/runtime-*/ code-*/    the agent's Python and code, mounted read-only at /.hutch

A sandbox's traces are the runc state, its cgroups (`/sys/fs/cgroup/*/hutch/<tag>/<id>`), the rootfs
mount, the subvolume and the bundle dir; `destroy` removes them in that order, so the bundle dir,
removed last, marks an unfinished destroy for `sweep` to complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
from collections.abc import Collection
from pathlib import Path

import hutch
from hutch.runtime._idmap import ID_RANGE
from hutch.runtime.container import _trust as trust
from hutch.runtime.container import _workcgroup as workcgroup
from hutch.runtime.container._agent_bundle import (
    AGENT_ENV,
    AgentBundle,
    agent_args,
    ensure_agent_bundle,
)
from hutch.runtime.container._buckets import BucketMounts
from hutch.runtime.container._cgroups import HomeCgroups, cgroups_path, host_accounts_swap
from hutch.runtime.container._errors import (
    SandboxExists,
    SandboxMissing,
    SandboxRuntimeError,
    SandboxStartError,
)
from hutch.runtime.container._freezer import set_frozen
from hutch.runtime.container._gvisor import GvisorSandboxes
from hutch.runtime.container._host_files import (
    RESOLV_MARKER,
    add_mode,
    check_traversable,
    make_dir,
    pin_hosts,
    read_text_or_empty,
    remove_dir,
    resolv_conf,
    rewrite_in_place,
)
from hutch.runtime.container._lxcfs import LxcfsView
from hutch.runtime.container._mounts import mounts_under, umount, unmount_all_under
from hutch.runtime.container._netns import Networks, SandboxNet
from hutch.runtime.container._nft import NetworkPolicy
from hutch.runtime.container._oci import (
    CPU_PERIOD_US,
    Resources,
    SandboxLayout,
    Seccomp,
    Spec,
    merge_env,
    resources,
    sandbox_spec,
)
from hutch.runtime.container._rootfs_views import RootfsViews
from hutch.runtime.container._runc import Runc
from hutch.runtime.container._sandbox_dirs import (
    SandboxPaths,
    StartFds,
    agent_stderr,
    halting,
    make_storage,
    start_fds,
    write_etc_files,
)
from hutch.runtime.container._seccomp import default_profile, kernel_version
from hutch.runtime.container._snapshots import DiskSnapshots
from hutch.runtime.container._spec import (
    HOSTNAME_RE,
    SANDBOX_ID_RE,
    Limits,
    RuntimeConfig,
    SandboxSpec,
    SandboxState,
    check_sandbox_id,
)
from hutch.runtime.container._statfs_view import StatfsView
from hutch.runtime.container._storage import StoragePool
from hutch.runtime.container._timing import timed
from hutch.runtime.container._usage import SandboxUsage, sandbox_usage
from hutch.runtime.images import image_agent_env

log = logging.getLogger("hutch.runtime")

_MAX_NOFILE = 1 << 20


class Runtime:
    """Creates, restarts, inspects and removes runc sandboxes. One per `HUTCH_HOME`."""

    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config
        self._home = config.home
        self._sandboxes = config.home / "sandboxes"
        self._storage = StoragePool(config.home, config.storage_size_gb)
        self.snapshots = DiskSnapshots(self._storage)
        self._runc = Runc(config.runc, config.home / "runc")
        self._lxcfs = LxcfsView(config.home)
        self._statfs = StatfsView(config.home, enabled=config.disk_statfs)  # `df /`: its limit
        self._seccomp = default_profile(kernel_version())
        self._memsw = host_accounts_swap()
        self._nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], _MAX_NOFILE)
        self._bundle: AgentBundle | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self.cgroups = HomeCgroups(config.home)  # a sandbox's: `hutch/<home tag>/<id>`
        self.buckets = BucketMounts(config.home)
        self._views = RootfsViews(config.home, config.uid_ranges)
        c = config
        self._networks = Networks(c.home, c.network_subnet, ID_RANGE, c.resolv, c.blocked_cidrs)
        self._gvisor = GvisorSandboxes(config, self._networks)
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
        add_mode(self._home, 0o711)
        check_traversable(self._home.resolve().parent)
        make_dir(self._sandboxes, 0o711)
        await self._storage.ensure()
        await asyncio.to_thread(self.snapshots.sweep_spares)
        await self._networks.setup()
        package = self.config.agent_package or Path(hutch.__file__).parent
        self._bundle = await asyncio.to_thread(
            ensure_agent_bundle, self._home / "agent", package, self._sandboxes
        )
        await self._lxcfs.ensure()
        await self._statfs.ensure()

    async def teardown(self) -> None:
        """Release what `setup` took that no sandbox needs: the storage pool's mount and the
        nft table, if they hold no sandbox. Running sandboxes are left alone."""
        if self._storage.is_mounted() and not self._storage.names():
            with contextlib.suppress(OSError):
                umount(self._storage.root)
            self._lxcfs.stop()
            self._statfs.stop()
            self.cgroups.release()
        await self._networks.teardown()

    def supports(self, runtime: str) -> bool:
        """Whether sandboxes can use `runtime` ("runc" or "gvisor") on this host."""
        return runtime == "runc" or (runtime == "gvisor" and self._gvisor.available)

    def rootfs(self, sandbox_id: str) -> Path:
        """The host path where the sandbox's root filesystem is mounted while it runs."""
        check_sandbox_id(sandbox_id)
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
            timings: dict[str, float] = {}
            fds = None
            try:
                if spec.runtime == "runc" and self.snapshots.committing(spec.disk_from):
                    # A fork's disk is committing: meanwhile what needs no disk. Not the nft
                    # rules: their processes slowed the commit on 2 cores (performance.md,
                    # fork12; fork14 for why the socket and work cgroup pay now).
                    make_dir(paths.bundle, 0o711)
                    fds = start_fds(spec, paths, self.cgroups.of(spec.id), self._memsw, timings)
                with timed(timings, "storage"):
                    await make_storage(
                        spec, paths, self._storage, self.snapshots, self.config.resolv
                    )
                socket = await self._start(spec, paths, bundle, timings, defer_network, fds)
                # The next create's spare: its commit would hold this one's disk writes.
                self.snapshots.refill_later(spec.disk_from)
                return socket
            except BaseException:
                if fds is not None:
                    fds.close()  # closed already if runc ran
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
            state = await self._runc.state(spec.id) or await self._gvisor.state(spec.id)
            if state is not None and state.status in ("running", "paused", "pausing"):
                return paths.socket
            if not self._storage.exists(spec.id):
                raise SandboxMissing(f"sandbox {spec.id!r} has no writable layer to start from")
            await self._stop_container(spec.id)
            try:
                write_etc_files(spec, paths, self.config.resolv, overwrite=False)
                return await self._start(spec, paths, bundle, {})
            except BaseException:
                await asyncio.shield(self._stop_container(spec.id))
                raise

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
        paths: SandboxPaths,
        bundle: AgentBundle,
        timings: dict[str, float],
        defer_network: bool = False,
        fds: StartFds | None = None,
    ) -> Path:
        make_dir(paths.bundle, 0o711)
        paths.halted.unlink(missing_ok=True)
        make_dir(paths.rootfs, 0o755)
        if spec.runtime == "gvisor":
            oci, debug = self._spec_for(spec, paths, bundle), self.config.debug_agent
            return await self._gvisor.start(spec, oci, paths.bundle, paths.storage, debug)
        with timed(timings, "overlay"):
            await self._views.mount(
                spec.id, spec.image.rootfs, paths.storage, paths.bundle, paths.rootfs
            )
            trust.prepare(paths.rootfs, paths.etc, spec, self.config, self._views.id_base(spec.id))
        with timed(timings, "config"):
            # NB: runc fails a start whose statfs listener is gone: a dead daemon is started
            # again here (a probe, ~0.1 ms), or the sandbox starts without it.
            await self._statfs.ensure()
            paths.config.write_bytes(self._spec_for(spec, paths, bundle).dumps())
        paths.runc_log.unlink(missing_ok=True)  # runc appends: errors of an earlier run
        # The sandbox's addresses and nft rules need no running container: overlap runc.
        network = asyncio.ensure_future(self._networks.prepare(spec.id, spec.network))
        stderr_fd = agent_stderr(paths, self.config.debug_agent)
        try:
            fds = fds or start_fds(spec, paths, self.cgroups.of(spec.id), self._memsw, timings)
            with timed(timings, "runc"):
                await self._runc.run_detached(
                    spec.id,
                    paths.bundle,
                    fd3=fds.listener.fileno(),
                    stderr_fd=stderr_fd,
                    log=paths.runc_log,
                    extra_fds=fds.work_fds,
                )
        except BaseException:
            with contextlib.suppress(BaseException):
                await network  # never leave it running behind a failed start
            raise
        finally:
            # The container holds its own copies now.
            os.close(stderr_fd)
            if fds is not None:
                fds.close()
        if defer_network:
            self._pending_networks[spec.id] = asyncio.ensure_future(
                self._attach_network(spec.id, network)
            )
        else:
            with timed(timings, "network"):
                await self._attach_network(spec.id, network)
        log.debug(
            "started sandbox %s: %s",
            spec.id,
            " ".join(f"{k}={v * 1e3:.2f}ms" for k, v in timings.items()),
            extra={"sandbox_id": spec.id, "timings": timings},
        )
        return paths.socket

    def _resources(self, limits: Limits) -> Resources:
        """The sandbox cgroup's limits: what the user asked for, the agent included (user
        code gets that less the agent's reserve: see _workcgroup)."""
        return resources(
            cpu=limits.cpu,
            memory_mb=limits.memory_mb,
            swap_mb=limits.swap_mb,
            pids=limits.pids,
            memsw=self._memsw,
        )

    def _seccomp_of(self, spec: SandboxSpec) -> Seccomp:
        # runsc answers statfs in its own kernel and ignores the spec's filter.
        if spec.runtime != "runc":
            return self._seccomp
        return self._statfs.profile(self._seccomp, self._storage.qgroup_dir(spec.id))

    def _spec_for(self, spec: SandboxSpec, paths: SandboxPaths, bundle: AgentBundle) -> Spec:
        limits, etc = spec.limits, self._views.etc(paths.storage, paths.bundle)
        env = merge_env(
            spec.image.config.env,
            trust.ca_env(trust.extra_cas(paths.etc, self.config.ca_certificates)),
            spec.env,
            AGENT_ENV,
            image_agent_env(spec.image),
            workcgroup.agent_env(),
        )
        return sandbox_spec(
            cgroups_path=cgroups_path(self.cgroups.fresh(spec.id)),
            hostname=spec.hostname,
            layout=SandboxLayout(
                rootfs=paths.rootfs,
                etc_hosts=etc / "hosts",
                etc_hostname=etc / "hostname",
                etc_resolv_conf=etc / "resolv.conf",
                extra_mounts=(
                    *bundle.mounts(joined=spec.runtime == "runc"),
                    *self._lxcfs.mounts(),
                ),
            ),
            args=agent_args(),
            env=env,
            resources=self._resources(limits),
            seccomp=self._seccomp_of(spec),
            id_base=self._views.id_base(spec.id),
            id_range=ID_RANGE,
            nofile=self._nofile,
            shm_bytes=max(64, limits.memory_mb // 2) << 20,
        )

    async def stop(self, sandbox_id: str) -> None:
        """End every process of the sandbox and release its container, keeping its disk
        (subvolume), its network address and its bucket mounts' state: `start_existing`
        runs it again. Idempotent."""
        check_sandbox_id(sandbox_id)
        paths = self._paths(sandbox_id)
        async with self._lock(sandbox_id):
            pending = self._pending_networks.pop(sandbox_id, None)
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            with halting(paths):
                await self._stop_container(sandbox_id)
            # The rootfs overlay and bucket binds under it are host mounts: they outlive
            # the container (start mounts them again).
            await asyncio.to_thread(unmount_all_under, paths.bundle)

    def disk_path(self, sandbox_id: str) -> Path:
        """The sandbox's disk: the btrfs subvolume holding its writable layer."""
        check_sandbox_id(sandbox_id)
        return self._storage.path(sandbox_id)

    # -- destroy / sweep -------------------------------------------------------------------

    async def destroy(self, sandbox_id: str) -> None:
        """Remove every trace of a sandbox: its processes, runc state, cgroups, rootfs mount,
        subvolume (with its quota group), bundle dir and socket. Idempotent.

        Raises:
            SandboxRuntimeError: some trace could not be removed (the others were); calling
                again retries.
        """
        check_sandbox_id(sandbox_id)
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
        # NB: the container goes first: its mounts are torn down (by name, below) only once
        # no sandbox code is left to move directories or plant symlinks under the rootfs.
        stopped = False
        try:
            with halting(paths):
                await self._stop_container(sandbox_id)
            stopped = True
        except (SandboxRuntimeError, OSError) as e:
            errors.append(f"container: {e}")
        try:
            await self.buckets.remove_all(sandbox_id, paths.rootfs)
        except (SandboxRuntimeError, OSError) as e:
            errors.append(f"bucket mounts: {e}")
        try:
            await self._networks.remove(sandbox_id)
        except (SandboxRuntimeError, OSError) as e:
            errors.append(f"network: {e}")
        # NB: the mount table is read in a thread: with a thousand sandboxes it is thousands
        # of lines, and a mass destroy parsing it on the event loop starved every request.
        try:
            if stopped:  # else a name under the rootfs may lead anywhere: keep it for a retry
                await asyncio.to_thread(unmount_all_under, paths.bundle)
        except OSError as e:
            errors.append(f"rootfs mount: {e}")
        try:
            self._storage.delete(sandbox_id)
            self._views.release(sandbox_id)
        except SandboxRuntimeError as e:
            errors.append(str(e))
        try:
            if await asyncio.to_thread(mounts_under, paths.bundle):
                # rmtree would walk into them: the sandbox's files, a bucket's objects.
                errors.append("bundle dir: mounts are left under it")
            else:
                remove_dir(paths.bundle)
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
        await self.cgroups.kill_tasks(sandbox_id)
        await self._runc.delete(sandbox_id)
        await self._gvisor.delete(sandbox_id)
        # runc removes its cgroups, but not if it crashed or its state was lost mid-create.
        await self.cgroups.remove(sandbox_id)

    async def sweep(self, keep: Collection[str]) -> list[str]:
        """Destroy every sandbox of this home whose id is not in `keep`; returns their ids.

        Looks at everything a sandbox leaves (runc state, bundle dirs, mounts, subvolumes), so
        half-created and half-destroyed sandboxes are found too.
        """
        found = {c.id for c in [*await self._runc.list(), *await self._gvisor.list()]}
        if self._sandboxes.is_dir():
            found.update(p.name for p in self._sandboxes.iterdir())
        found.update(p.relative_to(self._sandboxes).parts[0] for p in mounts_under(self._sandboxes))
        found.update(self._storage.names())
        found.update(self.buckets.sandbox_ids())
        found.update(self._networks.ids(), self._views.ids())
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

    async def init_pid(self, sandbox_id: str) -> int | None:
        """The host pid of the sandbox's PID 1 (its agent), or None when it has none."""
        check_sandbox_id(sandbox_id)
        try:
            return await self._init_pid(sandbox_id)
        except SandboxStartError:
            return None

    def halted(self, sandbox_id: str) -> bool:
        """Whether the sandbox was stopped or destroyed on purpose (its init's end is no death)."""
        return self._paths(sandbox_id).halted.exists()

    def agent_oom_killed(self, sandbox_id: str) -> bool:
        """Whether the OOM killer ended a task of the sandbox outside user code's `work`
        cgroup: its agent (what a host-wide OOM, or a sandbox without `work`, can do)."""
        return workcgroup.outside_work_oom_kills(self.cgroups.of(sandbox_id)) > 0

    async def _init_pid(self, sandbox_id: str) -> int:
        try:
            state = json.loads((self._home / "runc" / sandbox_id / "state.json").read_bytes())
            return int(state["init_process_pid"])
        except (OSError, ValueError, KeyError, TypeError):
            container = await self._runc.state(sandbox_id) or await self._gvisor.state(sandbox_id)
            if container is None or not container.pid:
                raise SandboxStartError(f"sandbox {sandbox_id!r} has no running init") from None
            return container.pid

    async def set_network_policy(self, sandbox_id: str, policy: NetworkPolicy) -> None:
        """Replace a running sandbox's egress policy; effective for its next packet."""
        check_sandbox_id(sandbox_id)
        await self._networks.set_policy(sandbox_id, policy)
        # The resolver follows the policy, unless the sandbox wrote its own resolv.conf.
        # NB: rewritten in place: the sandbox sees this inode through a bind mount.
        path = self._paths(sandbox_id).etc / "resolv.conf"
        if read_text_or_empty(path).startswith(RESOLV_MARKER):
            rewrite_in_place(path, resolv_conf(read_text_or_empty(self.config.resolv), policy))
        hosts = self._paths(sandbox_id).etc / "hosts"
        with contextlib.suppress(FileNotFoundError):
            if (text := hosts.read_text()) != (pinned := pin_hosts(text, policy.hosts)):
                rewrite_in_place(hosts, pinned)

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
        check_sandbox_id(sandbox_id)
        container = await self._runc.state(sandbox_id) or await self._gvisor.state(sandbox_id)
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
        return {c.id: c.status for c in [*await self._runc.list(), *await self._gvisor.list()]}

    async def update_limits(self, sandbox_id: str, limits: Limits) -> None:
        """Apply new cpu, memory, swap and pids limits to a running sandbox (its cgroups).
        The disk quota is fixed at create."""
        check_sandbox_id(sandbox_id)
        r = self._resources(limits)
        args = ["--cpu-quota", str(r.cpu.quota), "--cpu-period", str(CPU_PERIOD_US)]
        args += ["--cpu-share", str(r.cpu.shares), "--pids-limit", str(r.pids_limit)]
        args += ["--memory", str(r.memory.limit)]
        if r.memory.swap:
            args += ["--memory-swap", str(r.memory.swap)]
        await self._runc.update(sandbox_id, *args)
        work = workcgroup.work_limits_of(limits, self._memsw)
        workcgroup.update(self.cgroups.of(sandbox_id), work)

    def storage_usage(self) -> tuple[int, int]:
        """(used, total) bytes of the sandboxes' storage pool."""
        try:
            st = os.statvfs(self._storage.root)
        except OSError:
            return 0, 0
        return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_blocks * st.f_frsize

    async def usage(self, sandbox_id: str, *, disk: bool = True) -> SandboxUsage:
        """What the sandbox uses now: CPU time, memory, tasks, network bytes, and (a btrfs
        call, some milliseconds) its disk unless `disk` is False."""
        check_sandbox_id(sandbox_id)
        net = self._networks.get(sandbox_id)
        subvolume = self._storage.path(sandbox_id) if disk else None
        cgroup = self.cgroups.of(sandbox_id)
        return await sandbox_usage(cgroup, net.ifname if net else None, subvolume)

    async def pause(self, sandbox_id: str, frozen: bool = True) -> None:
        """Freeze every process of the sandbox (cgroup freezer); memory stays as it is."""
        check_sandbox_id(sandbox_id)
        if self._gvisor.owns(sandbox_id):
            await self._gvisor.pause(sandbox_id, frozen)
        else:
            await set_frozen(sandbox_id, self.cgroups.of(sandbox_id), frozen)

    async def resume(self, sandbox_id: str) -> None:
        await self.pause(sandbox_id, frozen=False)

    # -- helpers ---------------------------------------------------------------------------

    def _paths(self, sandbox_id: str) -> SandboxPaths:
        return SandboxPaths.of(self._sandboxes / sandbox_id, self._storage.path(sandbox_id))

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    def _require_setup(self) -> AgentBundle:
        if self._bundle is None:
            raise SandboxRuntimeError("Runtime.setup() must be awaited before sandboxes start")
        return self._bundle

    def _validate(self, spec: SandboxSpec) -> None:
        """Refuse a bad spec before anything is created for it."""
        check_sandbox_id(spec.id)
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
