"""An async driver over gVisor's runsc CLI (Debian's 2022 build), state under our own `--root`.

The same operations as `_runc.Runc` where runsc has them. This build differs from runc in what
matters here: no `--preserve-fds` (the agent binds its socket itself: see `_gvisor`), no
`update` (limits are written to the cgroups directly), and only the ptrace platform works
(kvm hangs on these machines).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from hutch.runtime.container._errors import RuncError, SandboxStartError
from hutch.runtime.container._runc import ContainerState, RuncOutput
from hutch.runtime.container._spawn import exit_code, run_tool, spawn

# As for runc: a fixed environment, never the server's (LISTEN_FDS and the like).
_RUNSC_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

# Flags every invocation gets: runsc reads some of them again in later commands (`exec`,
# `delete`), so they must not differ between create and the rest.
# - ptrace: the only platform that works here (kvm hung on these VMs).
# - network=host: see `run_detached`.
# - host-uds=create: the agent may *create* a host unix socket (its listening socket, in the
#   one directory we bind-mount for it) but no process inside may *open* (connect to) any
#   host socket: not another sandbox's agent, not the API's.
# - file-access=shared: the sentry revalidates what it cached of the rootfs, so a bucket
#   mounted on the host (propagated into the gofer) shows even over a directory the sandbox
#   had already looked at; with `exclusive` the old directory stays.
# - dcache=0: the sentry keeps a file's gofer handles (and so the gofer's host descriptor)
#   with its dentry, not with the sandbox's open file, and rclone uploads a bucket's file on
#   the host's last close: with dentries cached, a file written into a bucket stayed open on
#   the host until the sentry evicted it. No dentry cache: the sentry drops the dentry with
#   the sandbox's last close and queues the close of its handles, which the agent then sends
#   while a bucket is mounted (agent/_close_flush.py, docs/security.md). This runsc has no
#   narrower switch: a mount's `cache=none`, which gives each open file its own descriptor,
#   is not accepted from the OCI spec, and buckets are mounted after the start.
_GLOBAL_FLAGS = (
    *("--platform", "ptrace", "--network", "host", "--host-uds", "create"),
    *("--file-access", "shared", "--dcache", "0"),
)


def runsc_binary(name: str = "runsc") -> str | None:
    """The runsc executable's path, or None when it is not installed."""
    return shutil.which(name)


class Runsc:
    def __init__(self, binary: str, root: Path) -> None:
        found = runsc_binary(binary)
        if found is None:
            raise RuncError(f"runsc not found: {binary!r}; install it (apt-get install runsc)")
        self.binary = found
        self.root = root

    def _argv(self, *args: str) -> list[str]:
        return [self.binary, "--root", str(self.root), *_GLOBAL_FLAGS, *args]

    async def run_detached(
        self, container_id: str, bundle: Path, *, netns: Path, stderr_fd: int, log: Path
    ) -> None:
        """`runsc run --detach` inside the network namespace `netns`: the sandbox (sentry and
        gofer) outlives this call and the server; its stderr is `stderr_fd` and runsc's own
        log goes to `log`.

        NB: with `--network=sandbox` (gVisor's netstack) this runsc refuses to boot on this
        kernel: it takes any netns holding /proc/sys/net/core/rmem_default for the host's,
        and since Linux 6.x every netns has it. So the sandbox uses `--network=host` from
        within its own netns: the sentry's sockets are host sockets there, behind the same
        veth and nft rules as a runc sandbox's.

        Raises:
            SandboxStartError: runsc failed; the message holds its error.
        """
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        argv = [
            "nsenter",
            f"--net={netns}",
            "--",
            *self._argv(
                "--log", str(log), "run", "--detach", "--bundle", str(bundle), container_id
            ),
        ]
        pid = spawn(argv, stderr=stderr_fd, env=_RUNSC_ENV, new_session=True)
        status = await exit_code(pid)
        if status != 0:
            raise SandboxStartError(
                f"runsc run {container_id} failed (exit {status}): {read_runsc_error(log)}"
            )

    async def call(self, *args: str, netns: Path | None = None, check: bool = True) -> RuncOutput:
        """One runsc command, inside the sandbox's netns when it is given.

        NB: runsc talks to a sandbox over an abstract unix socket, which lives in the
        sandbox's network namespace: every command that reaches a running sandbox (pause,
        resume, kill, delete of a live one) must run there, or runsc finds no sandbox.
        """
        argv = self._argv(*args)
        if netns is not None:
            argv = ["nsenter", f"--net={netns}", "--", *argv]
        out = await run_tool(argv, capture_stdout=True, env=_RUNSC_ENV, new_session=True)
        result = RuncOutput(out.exit_code, out.stdout, out.stderr)
        if check and result.exit_code != 0:
            raise RuncError(
                f"runsc {' '.join(args)} failed (exit {result.exit_code}): "
                f"{result.stderr.decode(errors='replace').strip()}"
            )
        return result

    def _state_file(self, container_id: str) -> Path:
        return self.root / f"{container_id}_sandbox:{container_id}.state"

    def state(self, container_id: str) -> ContainerState | None:
        """The container's state from runsc's state file (None if it has none).

        Read here rather than by `runsc state`, which cannot reach the sandbox from outside
        its netns, and costs a Go process start: the status the file holds, "stopped" when
        the sandbox process is gone.
        """
        data = _read_state(self._state_file(container_id))
        if data is None:
            return None
        pid = int((data.get("sandbox") or {}).get("pid") or 0)
        status = str(data.get("status") or "stopped")
        if pid <= 0 or not _alive(pid):
            status, pid = "stopped", 0
        bundle = str(data.get("bundleDir") or "")
        return ContainerState(id=container_id, status=status, pid=pid, bundle=bundle)

    def list(self) -> list[ContainerState]:
        if not self.root.is_dir():
            return []
        suffix = ".state"
        found = []
        for path in self.root.iterdir():
            name = path.name
            if name.endswith(suffix) and "_sandbox:" in name:
                state = self.state(name.partition("_sandbox:")[0])
                if state is not None:
                    found.append(state)
        return found

    async def delete(self, container_id: str, *, netns: Path | None) -> None:
        """Kill and delete the container and its state; fine if there is none."""
        state = self.state(container_id)
        if state is not None and state.status != "stopped":
            result = await self.call("delete", "--force", container_id, netns=netns, check=False)
            if result.exit_code != 0 and not _does_not_exist(result.stderr):
                raise RuncError(
                    f"runsc delete --force {container_id} failed: {result.stderr.decode().strip()}"
                )
        # A sandbox killed from outside (or lost in a host reboot) leaves its files, and
        # runsc cannot load a container whose sandbox is gone: they are removed here.
        for path in self.root.glob(f"{container_id}_sandbox:{container_id}.*"):
            path.unlink(missing_ok=True)


def _read_state(path: Path, tries: int = 5) -> dict | None:  # type: ignore[type-arg]
    """The state file's JSON, or None if there is none (or it stays unreadable).

    NB: runsc rewrites the file in place (truncate, then write) at each change of state,
    twice inside `runsc run` (created, then running): a read in between, as `list` makes of
    every sandbox while another one starts, sees a torn file. The next read, a moment later,
    sees the whole file. (Once thought to fail a start's liveness check; watched with
    inotify, the file is not written after `runsc run` returns: see `GvisorSandboxes.start`.)
    """
    for attempt in range(tries):
        try:
            data = json.loads(path.read_bytes())
        except OSError:
            return None
        except ValueError:
            if attempt + 1 < tries:
                time.sleep(0.001 * (attempt + 1))
            continue
        return data if isinstance(data, dict) else None
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _does_not_exist(stderr: bytes) -> bool:
    return b"does not exist" in stderr or b"not found" in stderr


def read_runsc_error(log: Path) -> str:
    """The last lines of runsc's log that say what went wrong."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no runsc log)"
    wanted = [line for line in lines if " W" in line[:2] or "rror" in line or "fatal" in line]
    return "; ".join((wanted or lines)[-5:]) or "(empty runsc log)"
