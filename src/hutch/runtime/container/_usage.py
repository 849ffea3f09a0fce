"""What one sandbox uses right now, read from the kernel: its cgroups (CPU time, memory,
tasks), its veth's counters (network) and its subvolume's quota group (disk)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from hutch.runtime.container._cgroups import CGROUP_ROOT, is_unified
from hutch.runtime.container._spawn import run_tool

# cgroup v1 reports "no limit" as the largest page-aligned signed 64-bit value.
_UNLIMITED = 1 << 62


@dataclass(frozen=True, slots=True)
class SandboxUsage:
    """Counters and levels of one sandbox. CPU time and network bytes only ever grow: a rate
    is the difference of two readings over the time between them."""

    cpu_seconds: float  # CPU time of all its processes since it started
    cpu_limit: float  # CPUs' worth of time it may use (its quota)
    memory_bytes: int  # memory charged to it now (page cache included, as the limit counts it)
    memory_limit_bytes: int
    pids: int
    pids_limit: int
    net_rx_bytes: int  # received by the sandbox
    net_tx_bytes: int  # sent by the sandbox
    disk_bytes: int | None  # its writable layer (None: the quota group cannot be read)
    disk_limit_bytes: int | None


def _read_int(path: Path, default: int = 0) -> int:
    try:
        text = path.read_text().strip()
    except OSError:
        return default
    if text == "max":
        return _UNLIMITED
    try:
        return int(text)
    except ValueError:
        return default


def cgroup_usage(cgroup: str) -> tuple[float, float, int, int, int, int]:
    """(cpu_seconds, cpu_limit, memory, memory_limit, pids, pids_limit) of the sandbox whose
    cgroups are `cgroup`."""
    if is_unified():
        base = CGROUP_ROOT / cgroup
        usec = 0
        with contextlib.suppress(OSError):
            for line in (base / "cpu.stat").read_text().splitlines():
                if line.startswith("usage_usec "):
                    usec = int(line.split()[1])
        cpu_max = "max 100000"
        with contextlib.suppress(OSError):
            cpu_max = (base / "cpu.max").read_text()
        quota, _, period = cpu_max.strip().partition(" ")
        cpu_limit = int(quota) / int(period or 100000) if quota.isdigit() else 0.0
        return (
            usec / 1e6,
            cpu_limit,
            _read_int(base / "memory.current"),
            _read_int(base / "memory.max"),
            _read_int(base / "pids.current"),
            _read_int(base / "pids.max"),
        )

    def v1(controller: str) -> Path:
        return CGROUP_ROOT / controller / cgroup

    quota_us = _read_int(v1("cpu") / "cpu.cfs_quota_us", -1)
    period_us = _read_int(v1("cpu") / "cpu.cfs_period_us", 100000) or 100000
    return (
        _read_int(v1("cpuacct") / "cpuacct.usage") / 1e9,
        quota_us / period_us if quota_us > 0 else 0.0,
        _read_int(v1("memory") / "memory.usage_in_bytes"),
        _read_int(v1("memory") / "memory.limit_in_bytes"),
        _read_int(v1("pids") / "pids.current"),
        _read_int(v1("pids") / "pids.max"),
    )


def veth_bytes(ifname: str | None) -> tuple[int, int]:
    """(received by the sandbox, sent by the sandbox): the host end's tx and rx."""
    if ifname is None:
        return 0, 0
    stats = Path("/sys/class/net") / ifname / "statistics"
    return _read_int(stats / "tx_bytes"), _read_int(stats / "rx_bytes")


async def qgroup_usage(subvolume: Path) -> tuple[int, int | None] | None:
    """(referenced bytes, limit) of the subvolume's quota group, or None if unreadable."""
    out = await run_tool(
        ["btrfs", "qgroup", "show", "-rf", "--raw", str(subvolume)], capture_stdout=True
    )
    if out.exit_code != 0:
        return None
    for line in out.stdout.decode(errors="replace").splitlines():
        fields = line.split()
        # qgroupid  rfer  excl  max_rfer
        if len(fields) >= 4 and fields[0].startswith("0/") and fields[1].isdigit():
            limit = int(fields[3]) if fields[3].isdigit() else None
            return int(fields[1]), limit
    return None


async def sandbox_usage(cgroup: str, ifname: str | None, subvolume: Path | None) -> SandboxUsage:
    """The sandbox's usage from its cgroups `cgroup`, its veth `ifname` and (unless None) the
    quota group of its `subvolume`."""
    cpu, cpu_limit, memory, memory_limit, pids, pids_limit = cgroup_usage(cgroup)
    rx, tx = veth_bytes(ifname)
    quota = await qgroup_usage(subvolume) if subvolume is not None else None
    return SandboxUsage(
        cpu_seconds=cpu,
        cpu_limit=cpu_limit,
        memory_bytes=memory,
        memory_limit_bytes=memory_limit,
        pids=pids,
        pids_limit=pids_limit,
        net_rx_bytes=rx,
        net_tx_bytes=tx,
        disk_bytes=quota[0] if quota else None,
        disk_limit_bytes=quota[1] if quota else None,
    )
