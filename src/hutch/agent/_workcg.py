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

_fds: tuple[int, ...] = ()
# Inside the sandbox its cgroupfs is rooted at its own cgroup: `work` is a child of it.
OOM_CONTROL = "/sys/fs/cgroup/memory/work/memory.oom_control"


def configure(spec: str | None) -> str | None:
    """Take the comma-separated fds from HUTCH_AGENT_WORK_FDS; returns a problem, if any."""
    global _fds
    if not spec:
        return None
    try:
        fds = tuple(int(x) for x in spec.split(","))
        for fd in fds:
            os.set_inheritable(fd, False)
    except (ValueError, OSError) as e:
        return f"ignoring HUTCH_AGENT_WORK_FDS={spec!r}: {e}"
    _fds = fds
    return None


def enter_work() -> None:
    """preexec_fn: move the child (not yet exec'd) into `work`. Must not raise for an
    ordinary reason: a child that cannot move still runs, only less contained."""
    for fd in _fds:
        try:
            os.write(fd, b"0")
        except OSError:
            pass


def active() -> bool:
    return bool(_fds)


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
