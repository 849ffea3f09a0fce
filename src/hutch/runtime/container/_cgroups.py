"""The cgroups runc makes for a sandbox (`/sys/fs/cgroup/<hierarchy>/hutch/<home tag>/<id>`),
cleaned up without runc: after a crash mid-create or a lost runc state, nobody else will.

Every Hutch home on a host (several `hutch node`s on one machine, test servers side by side)
shares the cgroup tree, and sandbox ids are not unique across homes (a user picks one; a
sandbox moved between nodes keeps its own). Under one flat `hutch/<id>` a destroy or sweep of
`<id>` in one home killed the other home's sandbox of that id: so each home has a parent of
its own. A sandbox made before that (`hutch/<id>`) keeps its cgroup until it next starts; its
bundle's config.json says which it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from hutch.runtime.container._errors import SandboxRuntimeError

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PARENT = "hutch"


def home_cgroup_parent(home: Path) -> str:
    """`hutch/<tag>`: the parent of one home's sandbox cgroups in every hierarchy."""
    return f"{CGROUP_PARENT}/{hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:8]}"


def cgroup_name(home: Path, sandbox_id: str) -> str:
    """Where a container made now for sandbox `sandbox_id` of `home` has its cgroups (below
    each hierarchy's root)."""
    return f"{home_cgroup_parent(home)}/{sandbox_id}"


def cgroups_path(name: str) -> str:
    """The spec's `cgroupsPath` of the cgroup `name`."""
    return f"/{name}"


class HomeCgroups:
    """The cgroup names of one home's sandboxes: the home's own parent, or the flat
    `hutch/<id>` of a container made by an older Hutch (read from its bundle's spec)."""

    def __init__(self, home: Path) -> None:
        self._home = home
        self._bundles = home / "sandboxes"
        self._names: dict[str, str] = {}

    def fresh(self, sandbox_id: str) -> str:
        """The name for a container about to be made (and from then on, the sandbox's)."""
        name = self._names[sandbox_id] = cgroup_name(self._home, sandbox_id)
        return name

    def of(self, sandbox_id: str) -> str:
        """The name of the sandbox's cgroups, whether they exist or not."""
        name = self._names.get(sandbox_id)
        if name is None:
            name = cgroup_name(self._home, sandbox_id)
            legacy = f"/{CGROUP_PARENT}/{sandbox_id}"
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                spec = json.loads((self._bundles / sandbox_id / "config.json").read_bytes())
                if spec["linux"]["cgroupsPath"] == legacy:
                    name = legacy[1:]
            self._names[sandbox_id] = name
        return name

    def release(self) -> None:
        """Remove the home's parent cgroups if no sandbox is left in them (at a teardown:
        homes come and go, test homes by the hundred)."""
        for hierarchy in _hierarchies():
            with contextlib.suppress(OSError):  # not empty, or not there
                (hierarchy / home_cgroup_parent(self._home)).rmdir()

    async def kill_tasks(self, sandbox_id: str) -> None:
        """SIGKILL every task of the sandbox and wait until they are gone (`kill_cgroup_tasks`)."""
        await kill_cgroup_tasks(self.of(sandbox_id))

    async def remove(self, sandbox_id: str) -> None:
        """Kill what is left in the sandbox's cgroups and remove them (`remove_cgroups`)."""
        await remove_cgroups(self.of(sandbox_id))
        self._names.pop(sandbox_id, None)


def is_unified() -> bool:
    return (CGROUP_ROOT / "cgroup.controllers").exists()


def host_accounts_swap() -> bool:
    """Whether a memory+swap limit can be set (cgroup v1 `memory.memsw.*` needs swapaccount)."""
    if is_unified():
        return True  # runc maps memory+swap onto memory.swap.max
    return (CGROUP_ROOT / "memory" / "memory.memsw.limit_in_bytes").exists()


def _hierarchies() -> list[Path]:
    if is_unified():
        return [CGROUP_ROOT]
    try:
        return [d for d in CGROUP_ROOT.iterdir() if d.is_dir()]
    except FileNotFoundError:
        return []


def sandbox_cgroups(name: str) -> list[Path]:
    """The cgroup directory `name` in every hierarchy where it exists."""
    return [d for h in _hierarchies() if (d := h / name).is_dir()]


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


async def kill_cgroup_tasks(name: str, patience: float = 10.0) -> None:
    """SIGKILL every task in the cgroups `name` (a sandbox's) and wait (up to `patience`
    seconds) until they are gone."""
    cgroups = sandbox_cgroups(name)
    deadline = time.monotonic() + patience
    delay = 0.0005
    while True:
        pids = sorted({pid for cgroup in cgroups for pid in _tasks(cgroup)})
        if not pids:
            return
        if time.monotonic() > deadline:
            raise SandboxRuntimeError(f"tasks in cgroup {name!r} survive SIGKILL: {pids}")
        for cgroup in cgroups:
            _thaw(cgroup)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


async def remove_cgroups(name: str) -> None:
    """Kill what is left in the cgroups `name` (a sandbox's) and remove them, in every
    hierarchy."""
    await kill_cgroup_tasks(name)
    for cgroup in sandbox_cgroups(name):
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
