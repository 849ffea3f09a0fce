"""User processes live in the sandbox's `work` cgroup, the agent outside it.

The runtime hands the agent open `cgroup.procs` files of `work` (see
hutch.runtime._workcgroup for why they must be opened on the host); every process the agent
starts writes "0" (itself) to them between fork and exec, so that it and everything it ever
forks are charged to `work`'s memory and pids limits, and the OOM killer, when it comes,
picks among user processes only.

The fds are a fact about this process, set once at start-up: they live in this module
rather than being threaded through every spawn site.
"""

from __future__ import annotations

import os

from hutch._wire.oom_control import read_oom_kills

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from ._spawner import WorkSpawner

_fds: tuple[int, ...] = ()
_task_fds: tuple[int, ...] = ()
_spawner: WorkSpawner | None = None
_spawner_tried = False
# gVisor has no host cgroup for user processes: there a per-uid process limit (RLIMIT_NPROC,
# which the sentry enforces) set in each child bounds a fork bomb, the agent keeping no limit
# of its own, so it can still fork when the bomb has taken the rest (HUTCH_AGENT_NPROC).
_nproc = 0
_limit_nproc: Callable[[], None] | None = None
# The static launcher that sets that limit in the child itself, so the agent need not fork
# (HUTCH_AGENT_LAUNCHER; see _launch).
_launcher: str | None = None
# Inside the sandbox its cgroupfs is rooted at its own cgroup: `work` is a child of it.
OOM_CONTROL = "/sys/fs/cgroup/memory/work/memory.oom_control"


def configure(spec: str | None, task_spec: str | None = None) -> str | None:
    """Take the comma-separated fds from HUTCH_AGENT_WORK_FDS (`cgroup.procs`) and
    HUTCH_AGENT_WORK_TASK_FDS (`tasks`, for the spawner thread); returns a problem, if any."""
    global _fds, _task_fds
    if not spec:
        return None
    try:
        fds = tuple(int(x) for x in spec.split(","))
        for fd in fds:
            os.set_inheritable(fd, False)
    except (ValueError, OSError) as e:
        return f"ignoring HUTCH_AGENT_WORK_FDS={spec!r}: {e}"
    _fds = fds
    if task_spec:
        try:
            task_fds = tuple(int(x) for x in task_spec.split(","))
            for fd in task_fds:
                os.set_inheritable(fd, False)
        except (ValueError, OSError) as e:
            return f"ignoring HUTCH_AGENT_WORK_TASK_FDS={task_spec!r}: {e}"
        _task_fds = task_fds
    return None


def configure_nproc(spec: str | None) -> str | None:
    """Take HUTCH_AGENT_NPROC (the process limit of every child); returns a problem, if any."""
    global _nproc, _limit_nproc
    if not spec:
        return None
    try:
        _nproc = int(spec)
    except ValueError:
        return f"ignoring HUTCH_AGENT_NPROC={spec!r}: not a number"
    import functools
    import resource

    # Bound now: nothing may be imported between fork and exec.
    _limit_nproc = functools.partial(resource.setrlimit, resource.RLIMIT_NPROC, (_nproc, _nproc))
    return None


def configure_launcher(path: str | None) -> str | None:
    """Take HUTCH_AGENT_LAUNCHER (the launcher's path); returns a problem, if any."""
    global _launcher
    if not path:
        return None
    if not os.access(path, os.X_OK):
        return f"ignoring HUTCH_AGENT_LAUNCHER={path!r}: not an executable file"
    _launcher = path
    return None


def nproc_launcher() -> tuple[str, int] | None:
    """(launcher, limit) when children get their process limit from the launcher rather than
    from ``enter_work`` (under gVisor: no `work` cgroup to enter), else None."""
    if _launcher is None or _nproc <= 0 or _fds:
        return None
    return _launcher, _nproc


def spawner() -> WorkSpawner | None:
    """The thread that starts children inside `work` (started on the first spawn), or None:
    then each child moves itself (``enter_work``)."""
    global _spawner, _spawner_tried
    if not _spawner_tried:
        _spawner_tried = True
        if _fds and _task_fds:
            from ._spawner import WorkSpawner  # NB: threading and queue: not before the hello

            candidate = WorkSpawner(_task_fds)
            if candidate.start():
                _spawner = candidate
            else:
                import sys

                print(f"hutch-agent: {candidate.problem}", file=sys.stderr, flush=True)
    return _spawner


def enter_work() -> None:
    """preexec_fn: move the child (not yet exec'd) into `work`. Must not raise for an
    ordinary reason: a child that cannot move still runs, only less contained."""
    for fd in _fds:
        try:
            os.write(fd, b"0")
        except OSError:
            pass
    if _limit_nproc is not None:
        try:
            _limit_nproc()
        except (OSError, ValueError):
            pass


def active() -> bool:
    """Whether children must go through `enter_work` (or the spawner)."""
    return bool(_fds) or _nproc > 0


def oom_kills() -> int:
    """How many processes the OOM killer has killed in `work` so far (-1: unknown)."""
    if not _fds:
        return -1
    count = read_oom_kills(OOM_CONTROL)
    return -1 if count is None else count


def oom_killed_since(before: int) -> bool:
    """Whether the OOM killer struck in `work` since `oom_kills()` returned `before`: for a
    process that died of SIGKILL, the best evidence there is (the kernel keeps no per-process
    record once it is reaped; a concurrent OOM kill of another process can be mistaken for
    this one's, never the other way round)."""
    return before >= 0 and oom_kills() > before
