"""The cgroups runc makes for a sandbox (`/sys/fs/cgroup/<hierarchy>/hutch/<id>`), cleaned up
without runc: after a crash mid-create or a lost runc state, nobody else will."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from hutch.runtime.container._errors import SandboxRuntimeError

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PARENT = "hutch"


def cgroups_path(sandbox_id: str) -> str:
    """The spec's `cgroupsPath`: under one parent, so all sandboxes are easy to find."""
    return f"/{CGROUP_PARENT}/{sandbox_id}"


def is_unified() -> bool:
    return (CGROUP_ROOT / "cgroup.controllers").exists()


def host_accounts_swap() -> bool:
    """Whether a memory+swap limit can be set (cgroup v1 `memory.memsw.*` needs swapaccount)."""
    if is_unified():
        return True  # runc maps memory+swap onto memory.swap.max
    return (CGROUP_ROOT / "memory" / "memory.memsw.limit_in_bytes").exists()


def sandbox_cgroups(sandbox_id: str) -> list[Path]:
    """The sandbox's cgroup directory in every hierarchy where it exists."""
    if is_unified():
        hierarchies = [CGROUP_ROOT]
    else:
        try:
            hierarchies = [d for d in CGROUP_ROOT.iterdir() if d.is_dir()]
        except FileNotFoundError:
            return []
    return [d for h in hierarchies if (d := h / CGROUP_PARENT / sandbox_id).is_dir()]


def _tasks(cgroup: Path) -> list[int]:
    pids: list[int] = []
    for sub in _walk_dirs(cgroup):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in (sub / "cgroup.procs").read_text().split()]
    return pids


def _thaw(cgroup: Path) -> None:
    # A frozen (paused) task never acts on SIGKILL.
    for knob, thawed in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
        with contextlib.suppress(OSError):
            if (cgroup / knob).exists():
                (cgroup / knob).write_text(thawed)


async def kill_cgroup_tasks(sandbox_id: str, patience: float = 10.0) -> None:
    """SIGKILL every task in the sandbox's cgroups and wait (up to `patience` seconds) until
    they are gone."""
    cgroups = sandbox_cgroups(sandbox_id)
    deadline = time.monotonic() + patience
    delay = 0.0005
    while True:
        pids = sorted({pid for cgroup in cgroups for pid in _tasks(cgroup)})
        if not pids:
            return
        if time.monotonic() > deadline:
            raise SandboxRuntimeError(f"tasks of sandbox {sandbox_id!r} survive SIGKILL: {pids}")
        for cgroup in cgroups:
            _thaw(cgroup)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


async def remove_cgroups(sandbox_id: str) -> None:
    """Kill what is left in the sandbox's cgroups and remove them, in every hierarchy."""
    await kill_cgroup_tasks(sandbox_id)
    for cgroup in sandbox_cgroups(sandbox_id):
        for sub in sorted(_walk_dirs(cgroup), key=lambda p: len(p.parts), reverse=True):
            try:
                sub.rmdir()
            except FileNotFoundError:
                pass
            except OSError as e:
                raise SandboxRuntimeError(f"cannot remove cgroup {sub}: {e}") from e


def _walk_dirs(root: Path) -> Iterator[Path]:
    yield root
    for dirpath, dirnames, _ in os.walk(root):
        for name in dirnames:
            yield Path(dirpath) / name
