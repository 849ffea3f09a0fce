"""Which processes the OOM killer ended in sandboxes' `work` cgroups, for the `oom_killed`
event: the `oom_kill` counter of each sandbox's `work` says that it happened (cgroup v1's
`memory.oom_control`), the kernel's log (`/dev/kmsg`, read from where it stood when the watch
began) says whom: `oom-kill:...,task_memcg=/hutch/<home tag>/<id>/work,task=python3,pid=1234,...`
(the sandbox's cgroup, _cgroups.py, and below it).

The pid is the host's (the process is gone by the time anyone asks, so it cannot be mapped to
the sandbox's pid namespace any more); the command is the kernel's `comm` (15 characters).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from hutch.runtime.container import _workcgroup as workcgroup
from hutch.runtime.container._cgroups import CGROUP_PARENT, CGROUP_ROOT

KMSG = "/dev/kmsg"
_OOM_LINE = re.compile(
    rf"oom-kill:.*task_memcg=/(?P<memcg>{CGROUP_PARENT}/[^,]+),"
    r"task=(?P<task>[^,]*),pid=(?P<pid>\d+)"
)


@dataclass(frozen=True)
class OomKill:
    runtime_id: str
    count: int  # kills since the last report (the counter's step)
    host_pid: int | None  # from the kernel's log, when it could be read
    command: str | None


def parse_oom_line(line: str) -> tuple[str, str, int] | None:
    """(cgroup below the hierarchy's root, command, host pid) of one `oom-kill:` line of the
    kernel's log, if it was in a sandbox's cgroup (or one below it)."""
    match = _OOM_LINE.search(line)
    if match is None:
        return None
    return match["memcg"], match["task"], int(match["pid"])


class OomWatch:
    """Report each new OOM kill in the `work` cgroups of the sandboxes asked about."""

    def __init__(self, cgroup_of: Callable[[str], str]) -> None:
        """`cgroup_of`: a runtime id's cgroup name (`Runtime.cgroups.of`)."""
        self._cgroup_of = cgroup_of
        self._counts: dict[str, int] = {}
        self._fd: int | None = None
        with contextlib.suppress(OSError):
            fd = os.open(KMSG, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(fd, 0, os.SEEK_END)  # only what happens from now on
            self._fd = fd
        self._seen: list[tuple[str, str, int]] = []  # (cgroup, command, pid), oldest first
        # NB: what a sandbox that already ran when the watch began counts is not news; one
        # made later starts from zero, however late it is first asked about (on a node, the
        # first call may come after a new sandbox's first kill).
        self._before_watch = _existing_counts(CGROUP_ROOT / "memory" / CGROUP_PARENT)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _read_kmsg(self) -> None:
        while self._fd is not None:
            try:
                record = os.read(self._fd, 8192)
            except BlockingIOError:
                return
            except BrokenPipeError:
                continue  # records were overwritten before we read them: go on
            except OSError:
                return
            if not record:
                return
            found = parse_oom_line(record.decode("utf-8", "replace"))
            if found is not None:
                self._seen.append(found)

    def check(self, runtime_ids: Iterable[str]) -> list[OomKill]:
        """The kills since the last check in the sandboxes whose containers exist (running or
        paused). A sandbox whose cgroup was there when the watch began starts from its count
        then (what happened before the watch is not news); one made later starts from zero
        (its cgroup is new: a create, or a start after a stop)."""
        self._read_kmsg()
        kills: list[OomKill] = []
        wanted = set(runtime_ids)
        cgroups = {rid: self._cgroup_of(rid) for rid in wanted}
        for rid, cgroup in cgroups.items():
            count = workcgroup.work_oom_kills(cgroup)
            before = self._counts.get(rid)
            if before is None:
                before = self._before_watch.pop(cgroup, 0)
            self._counts[rid] = count
            if count <= before:
                continue
            mine = [e for e in self._seen if _within(e[0], cgroup)]
            self._seen = [e for e in self._seen if not _within(e[0], cgroup)]
            _, task, pid = mine[-1] if mine else (None, None, None)
            kills.append(OomKill(rid, count - before, pid, task))
        for rid in set(self._counts) - wanted:
            del self._counts[rid]
        # A line seen before its counter moved waits for the next check; others' go.
        self._seen = [e for e in self._seen if any(_within(e[0], c) for c in cgroups.values())]
        return kills


def _existing_counts(parent: Path) -> dict[str, int]:
    """cgroup name -> its `work`'s kill count, of every sandbox cgroup below `parent` now:
    `hutch/<home tag>/<id>`, and the flat `hutch/<id>` of an older Hutch."""
    counts: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for child in parent.iterdir():
            below = [child] if (child / workcgroup.WORK).is_dir() else []
            if not below and child.is_dir():
                with contextlib.suppress(OSError):
                    below = [c for c in child.iterdir() if (c / workcgroup.WORK).is_dir()]
            for cgroup in below:
                name = str(cgroup.relative_to(parent.parent))
                counts[name] = workcgroup.work_oom_kills(name)
    return counts


def _within(cgroup: str, sandbox_cgroup: str) -> bool:
    # NB: by the whole name: another home's sandbox may have the same id.
    return cgroup == sandbox_cgroup or cgroup.startswith(f"{sandbox_cgroup}/")
