"""Where a new sandbox goes: the node with the most free capacity that fits it (sans-I/O).

Capacity is what a node reports in its heartbeat; what is taken is what the store promised:
the limits of the sandboxes placed there (cpu and memory while they can run, disk always: a
stopped sandbox keeps its disk). Only `ready` nodes with a fresh heartbeat take sandboxes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from hutch.server.store._nodes import NodeRecord

# States whose cpu and memory a node keeps for the sandbox.
HOLDS_MEMORY = frozenset({"creating", "running", "paused"})


class Takes(Protocol):
    """What a placed sandbox takes of its node (a `SandboxRecord`, a store's
    `PlacedLimits`)."""

    @property
    def status(self) -> str: ...
    @property
    def cpu(self) -> float: ...
    @property
    def memory_mb(self) -> float: ...
    @property
    def disk_mb(self) -> float: ...


@dataclass(frozen=True)
class Need:
    cpu: float
    memory_mb: int
    disk_mb: int
    runtime: str = "runc"  # only nodes that report it (runsc installed for "gvisor")


@dataclass(frozen=True)
class Free:
    node: str
    cpu: float
    memory_mb: int
    disk_mb: int

    def fits(self, need: Need) -> bool:
        return (
            self.cpu >= need.cpu
            and self.memory_mb >= need.memory_mb
            and self.disk_mb >= need.disk_mb
        )

    def score(self) -> tuple[float, float, float]:
        # Most free memory first (what runs out first on a sandbox host), then cpu, then disk.
        return (self.memory_mb, self.cpu, self.disk_mb)


def free_capacity(
    nodes: Iterable[NodeRecord],
    placed: Iterable[tuple[str, Takes]],
) -> dict[str, Free]:
    """Free cpu/memory/disk of each node after what `placed` ((node, sandbox) pairs) takes."""
    taken: dict[str, list[float]] = {}
    for node, record in placed:
        t = taken.setdefault(node, [0.0, 0.0, 0.0])
        if record.status in HOLDS_MEMORY:
            t[0] += record.cpu
            t[1] += record.memory_mb
        t[2] += record.disk_mb
    free = {}
    for n in nodes:
        cpu, mem, disk = taken.get(n.name, [0.0, 0.0, 0.0])
        free[n.name] = Free(n.name, n.cpu - cpu, int(n.memory_mb - mem), int(n.disk_mb - disk))
    return free


def candidates(
    nodes: Iterable[NodeRecord],
    placed: Iterable[tuple[str, Takes]],
    need: Need,
    *,
    now: float,
    fresh_for: float,
) -> list[str]:
    """Names of the nodes that can take `need`, best first (most free capacity)."""
    usable = [
        n
        for n in nodes
        if n.state == "ready" and now - n.last_heartbeat <= fresh_for and need.runtime in n.runtimes
    ]
    free = free_capacity(usable, placed)
    fitting = [f for f in free.values() if f.fits(need)]
    fitting.sort(key=lambda f: (f.score(), f.node), reverse=True)
    return [f.node for f in fitting]
