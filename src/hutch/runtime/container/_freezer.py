"""Pause and resume through the cgroup freezer directly: a write and a short poll, instead
of a `runc pause` process (tens of ms of Go start-up each). runc reads the same freezer
state, so `runc state`/`list` still report the sandbox as paused."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from hutch.runtime.container._cgroups import CGROUP_ROOT, is_unified
from hutch.runtime.container._errors import SandboxRuntimeError


def freezer_dir(cgroup: str) -> Path:
    if is_unified():
        return CGROUP_ROOT / cgroup
    return CGROUP_ROOT / "freezer" / cgroup


async def set_frozen(sandbox_id: str, cgroup: str, frozen: bool, patience: float = 10.0) -> None:
    """Freeze (or thaw) every task of the sandbox and wait until the kernel says it is done.

    Raises:
        SandboxRuntimeError: the sandbox has no freezer cgroup (it is not running), or the
            state did not settle within `patience` seconds.
    """
    directory = freezer_dir(cgroup)
    if is_unified():
        knob, want, check = "cgroup.freeze", ("1" if frozen else "0"), "cgroup.events"
    else:
        knob, want, check = "freezer.state", ("FROZEN" if frozen else "THAWED"), "freezer.state"
    try:
        (directory / knob).write_text(want)
    except FileNotFoundError:
        raise SandboxRuntimeError(f"sandbox {sandbox_id!r} has no running container") from None
    except OSError as e:
        action = "freeze" if frozen else "thaw"
        raise SandboxRuntimeError(f"cannot {action} {sandbox_id}: {e}") from e
    deadline = time.monotonic() + patience
    delay = 0.0002
    while not _settled(directory / check, want, frozen):
        if time.monotonic() > deadline:
            raise SandboxRuntimeError(
                f"sandbox {sandbox_id!r} did not {'freeze' if frozen else 'thaw'} in {patience} s"
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.02)


def _settled(path: Path, want: str, frozen: bool) -> bool:
    text = path.read_text()
    if path.name == "cgroup.events":
        return f"frozen {1 if frozen else 0}" in text
    return text.strip() == want
