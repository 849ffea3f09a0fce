"""cgroup v1's `memory.oom_control`, read by the agent (its sandbox's `work`) and by the
runtime (a sandbox's cgroups on the host). Stdlib only, like the rest of `_wire`."""

from __future__ import annotations


def read_oom_kills(path: str) -> int | None:
    """The `oom_kill` counter of the `memory.oom_control` file at `path`: how many tasks the
    OOM killer has ended in that cgroup and its children. None if it cannot be read."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None
