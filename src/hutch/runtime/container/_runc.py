"""An async driver over the runc CLI, with its state under our own `--root`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hutch.runtime.container._errors import RuncError, SandboxStartError
from hutch.runtime.container._spawn import exit_code, run_tool, spawn

# runc gets a fixed environment: it would honour LISTEN_FDS (systemd socket activation) of the
# server's and hand those fds to the container.
# GOMAXPROCS=1: runc's work is one sequence of syscalls, but Go starts a scheduler thread and GC
# workers per CPU; with one, `runc run` of a sandbox took ~2 ms less CPU (of ~25) and the
# create's other processes got that core. runc passes GOMAXPROCS on to its `runc init` too.
_RUNC_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "GOMAXPROCS": "1",
}


@dataclass(frozen=True, slots=True)
class ContainerState:
    id: str
    status: str  # created | running | pausing | paused | stopped
    pid: int
    bundle: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ContainerState:
        return cls(
            id=str(data["id"]),
            status=str(data["status"]),
            pid=int(data.get("pid") or 0),
            bundle=str(data.get("bundle") or ""),
        )


@dataclass(frozen=True, slots=True)
class RuncOutput:
    """What one runc invocation (or `runc exec` of a host-side helper) returned: not an API
    exec result, which is the agent's (hutch._wire.agent_ops.ExecResult)."""

    exit_code: int
    stdout: bytes
    stderr: bytes


class Runc:
    def __init__(self, binary: str, root: Path) -> None:
        found = shutil.which(binary)
        if found is None:
            raise RuncError(f"runc not found: {binary!r}; install it (apt-get install runc)")
        self.binary = found
        self.root = root

    def _argv(self, *args: str) -> list[str]:
        return [self.binary, "--root", str(self.root), *args]

    async def run_detached(
        self,
        container_id: str,
        bundle: Path,
        *,
        fd3: int,
        stderr_fd: int,
        log: Path,
        extra_fds: Sequence[int] = (),
    ) -> None:
        """`runc run --detach` with `fd3` as the container's fd 3 (and `extra_fds` as 4, 5, …).

        runc runs in a new session, and the container process is its child, so once runc exits
        the container belongs to no process of ours: killing the server leaves it running.
        Its stdin/stdout are /dev/null and its stderr `stderr_fd`; runc's own errors go to `log`.

        Raises:
            SandboxStartError: runc failed; the message holds runc's error.
        """
        argv = self._argv(
            "--log",
            str(log),
            "--log-format",
            "json",
            "run",
            "--detach",
            # NB: no session keyring per container: every sandbox's root is the same host
            # uid, and the kernel allows that uid 200 keys (kernel.keys.maxkeys), so the
            # 201st sandbox failed with "disk quota exceeded".
            "--no-new-keyring",
            "--preserve-fds",
            str(1 + len(extra_fds)),
            "--bundle",
            str(bundle),
            container_id,
        )
        pid = spawn(argv, stderr=stderr_fd, fds=(fd3, *extra_fds), env=_RUNC_ENV, new_session=True)
        status = await exit_code(pid)
        if status != 0:
            raise SandboxStartError(
                f"runc run {container_id} failed (exit {status}): {read_runc_error(log)}"
            )

    async def _call(self, *args: str, check: bool = True, stdin: bytes | None = None) -> RuncOutput:
        # NB: posix_spawn (_spawn), not asyncio's subprocess: on the server's uvloop that
        # forks the whole server, and a create, a stop or a pause each run runc.
        out = await run_tool(
            self._argv(*args), stdin, capture_stdout=True, env=_RUNC_ENV, new_session=True
        )
        result = RuncOutput(out.exit_code, out.stdout, out.stderr)
        if check and result.exit_code != 0:
            raise RuncError(
                f"runc {' '.join(args)} failed (exit {result.exit_code}): "
                f"{result.stderr.decode(errors='replace').strip()}"
            )
        return result

    def has_state(self, container_id: str) -> bool:
        """Whether runc keeps state for the container (its dir under `--root`). A runc
        process costs 5-15 ms; a stopped sandbox's start asked runc twice about a container
        that `stop` had already deleted."""
        return (self.root / container_id).exists()

    async def state(self, container_id: str) -> ContainerState | None:
        if not self.has_state(container_id):
            return None
        result = await self._call("state", container_id, check=False)
        if result.exit_code != 0:
            if _does_not_exist(result.stderr):
                return None
            raise RuncError(f"runc state {container_id}: {result.stderr.decode().strip()}")
        return ContainerState.from_json(json.loads(result.stdout))

    async def list(self) -> list[ContainerState]:
        if not self.root.is_dir():
            return []
        result = await self._call("list", "--format", "json")
        data = json.loads(result.stdout or b"null") or []
        return [ContainerState.from_json(d) for d in data]

    async def delete(self, container_id: str) -> None:
        """Kill (SIGKILL) and delete the container, its cgroups and state; fine if none."""
        if not self.has_state(container_id):
            return
        result = await self._call("delete", "--force", container_id, check=False)
        if result.exit_code != 0 and not _does_not_exist(result.stderr):
            raise RuncError(
                f"runc delete --force {container_id} failed: {result.stderr.decode().strip()}"
            )

    async def update(self, container_id: str, *args: str) -> None:
        """`runc update` the container's cgroup limits (e.g. `--memory 512M`)."""
        await self._call("update", *args, container_id)

    async def pause(self, container_id: str) -> None:
        await self._call("pause", container_id)

    async def resume(self, container_id: str) -> None:
        await self._call("resume", container_id)

    async def exec(
        self, container_id: str, argv: Sequence[str], *, stdin: bytes | None = None
    ) -> RuncOutput:
        """Run a process in the container (with its spec's user, capabilities and seccomp)."""
        return await self._call("exec", container_id, *argv, check=False, stdin=stdin)


def _does_not_exist(stderr: bytes) -> bool:
    return b"does not exist" in stderr


def read_runc_error(log: Path) -> str:
    """The error lines of a runc `--log-format json` log, or its tail."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no runc log)"
    messages = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            messages.append(line)
            continue
        if entry.get("level") in ("error", "fatal"):
            messages.append(str(entry.get("msg", line)))
    return "; ".join(messages or lines[-5:]) or "(empty runc log)"
