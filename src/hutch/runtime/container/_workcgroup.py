"""The `work` cgroup: where a sandbox's user processes live, so that the agent never does.

A sandbox's cgroup (`hutch/<home tag>/<id>`, made by runc: _cgroups.py) holds the agent,
PID 1. Everything the agent starts (execs, processes, sessions, terminals, code kernels)
moves itself, between fork and exec, into the child cgroup `<that>/work`, whose memory and
pids limits are the sandbox's own less a small reserve for the agent. The sandbox as a whole
(the parent) keeps exactly the limits the user asked for, so the host's accounting and what
`free` shows in the sandbox (LXCFS reads the parent's) stay the numbers the user gave. So:

- memory: user code that runs out of memory hits `work`'s limit first, and the kernel's
  OOM killer then picks its victim inside `work` only: never the agent, whatever the code
  does (one big allocation, many small processes, a fork bomb of Pythons). A negative
  `oom_score_adj` would say the same to the kernel, but needs CAP_SYS_RESOURCE, which this
  host's server does not have.
- pids: a fork bomb fills `work`'s pids, not the agent's reserve, so the agent can still
  spawn the next exec and kill the bomb.

The agent cannot open these files itself: the sandbox's cgroupfs is read-only, and cgroup
v1 allows a task to move another only when the writer's credentials *at open time* are
root's or the task's own uid (a command running as `user` is neither). So the runtime
opens `work/cgroup.procs` here, as host root, and hands the open files to the agent
(fds 4 and up, after the listening socket at fd 3); the agent keeps them close-on-exec
and non-dumpable. Whoever holds them can only move tasks of the sandbox's own pid
namespace *into* `work`, never out of it.

cgroup v1 only (this host's layout). On a unified (v2) host runc places PID 1 in
its cgroup itself, and v2 forbids processes in a cgroup whose children have
controllers, so there the agent would need a cgroup of its own: not done yet; sandboxes
then start without `work` (and the agent is as exposed to OOM as before).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hutch._wire.oom_control import read_oom_kills
from hutch.runtime.container._cgroups import CGROUP_ROOT, is_unified

WORK = "work"
# What user code may never take from the agent: an idle agent is about 13 MB resident; file
# transfers and frame buffers are bounded well under this. Small sandboxes keep at most a
# quarter for it.
AGENT_MEMORY_RESERVE_MB = 64
AGENT_PIDS_RESERVE = 16
# The hierarchies where `work` has limits of its own.
_CONTROLLERS = ("memory", "pids")


@dataclass(frozen=True, slots=True)
class WorkLimits:
    """The limits of `work`: what the user asked the sandbox to have."""

    memory_bytes: int
    memsw_bytes: int  # 0: the host does not account swap
    pids: int


class SandboxLimits(Protocol):
    @property
    def memory_mb(self) -> int: ...
    @property
    def swap_mb(self) -> int: ...
    @property
    def pids(self) -> int: ...


def work_limits_of(limits: SandboxLimits, memsw: bool) -> WorkLimits:
    return work_limits(
        memory_mb=limits.memory_mb, swap_mb=limits.swap_mb, pids=limits.pids, memsw=memsw
    )


def work_limits(*, memory_mb: int, swap_mb: int, pids: int, memsw: bool) -> WorkLimits:
    """`work`'s limits in a sandbox with these limits (see AGENT_MEMORY_RESERVE_MB)."""
    memory = max(1, memory_mb - min(AGENT_MEMORY_RESERVE_MB, memory_mb // 4))
    return WorkLimits(
        memory_bytes=memory << 20,
        memsw_bytes=(memory + swap_mb) << 20 if memsw else 0,
        pids=max(1, pids - min(AGENT_PIDS_RESERVE, pids // 4)),
    )


def supported() -> bool:
    return not is_unified() and all((CGROUP_ROOT / c).is_dir() for c in _CONTROLLERS)


def _work_dir(controller: str, cgroup: str) -> Path:
    return CGROUP_ROOT / controller / cgroup / WORK


def prepare(cgroup: str, limits: WorkLimits) -> list[int]:
    """Make `work` in each hierarchy (before runc: it then finds the parent made and sets
    the parent's own limits), set its limits, and open its `cgroup.procs`, then its
    `tasks`, for the agent (the order of agent_env's fd numbers).

    Returns the open fds (close-on-exec; the caller hands them to runc and closes them),
    or none when the host's cgroup layout has no `work` (see the module docstring).
    """
    if not supported():
        return []
    fds: list[int] = []
    try:
        for controller in _CONTROLLERS:
            work = _work_dir(controller, cgroup)
            work.mkdir(parents=True, exist_ok=True)
            _set_limits(controller, work, limits)
            fds.append(os.open(work / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
        # `tasks` moves one thread: the agent's spawner thread (agent/_spawner.py), whose
        # children are born in `work` without a fork of the agent.
        for controller in _CONTROLLERS:
            work = _work_dir(controller, cgroup)
            fds.append(os.open(work / "tasks", os.O_WRONLY | os.O_CLOEXEC))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def update(cgroup: str, limits: WorkLimits) -> None:
    """New limits for a running sandbox's `work` (after the parent's were changed)."""
    if not supported():
        return
    for controller in _CONTROLLERS:
        work = _work_dir(controller, cgroup)
        if work.is_dir():
            _set_limits(controller, work, limits)


def _set_limits(controller: str, work: Path, limits: WorkLimits) -> None:
    if controller == "pids":
        (work / "pids.max").write_text(str(limits.pids))
        return
    knobs = [("memory.limit_in_bytes", limits.memory_bytes)]
    if limits.memsw_bytes and (work / "memory.memsw.limit_in_bytes").exists():
        knobs.append(("memory.memsw.limit_in_bytes", limits.memsw_bytes))
    # The kernel keeps memory <= memory+swap at every step: raising needs memsw first,
    # lowering needs memory first. One of the two orders always works.
    try:
        for name, value in knobs:
            (work / name).write_text(str(value))
    except OSError:
        for name, value in reversed(knobs):
            (work / name).write_text(str(value))
    # Never let the kernel pause user code at the limit instead of killing it.
    with contextlib.suppress(OSError):
        (work / "memory.oom_control").write_text("0")


def agent_env() -> tuple[str, ...]:
    """What tells the agent where its `work` fds are (runc's preserved fds 4, 5, …)."""
    if not supported():
        return ()
    n = len(_CONTROLLERS)
    procs = ",".join(str(4 + i) for i in range(n))
    tasks = ",".join(str(4 + n + i) for i in range(n))
    return (f"HUTCH_AGENT_WORK_FDS={procs}", f"HUTCH_AGENT_WORK_TASK_FDS={tasks}")


def _oom_kills_in(directory: Path) -> int:
    return read_oom_kills(str(directory / "memory.oom_control")) or 0


def work_oom_kills(cgroup: str) -> int:
    """How many tasks the OOM killer has ended in the sandbox's `work` (one file read: the
    OOM watch asks this of every running sandbox every few seconds)."""
    return _oom_kills_in(CGROUP_ROOT / "memory" / cgroup / WORK)


def outside_work_oom_kills(cgroup: str) -> int:
    """How many tasks the OOM killer has ended in the sandbox outside `work`: its agent.
    NB: cgroup v1 counts a kill only in the cgroup of the task it ended, not in its parents
    (checked on this kernel with a 20 MB child), so the sandbox's own count is exactly that."""
    return _oom_kills_in(CGROUP_ROOT / "memory" / cgroup)
