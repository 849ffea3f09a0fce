"""Typed builders for an OCI runtime `config.json`, and the one spec every sandbox gets.

Each dataclass is immutable and serialises itself once with `to_json()`; nothing builds the spec by
mutating nested dicts. `sandbox_spec()` is a pure function from a sandbox's settings to a `Spec`, so
the whole security posture is unit-testable without root.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

JSON = dict[str, Any]

OCI_VERSION = "1.0.2"

# Docker's default capability set, less NET_RAW (raw sockets let a sandbox spoof packets on its
# veth; ping keeps working through `net.ipv4.ping_group_range`).
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
)

# As Docker: kernel interfaces that leak host information or allow host-wide effects.
MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
)
READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

NAMESPACES: tuple[str, ...] = ("pid", "ipc", "uts", "mount", "network", "cgroup", "user")

CPU_PERIOD_US = 100_000


def namespaced_sysctls(id_range: int) -> tuple[tuple[str, str], ...]:
    """Namespaced sysctls, as Docker sets them: unprivileged ICMP sockets (NET_RAW is dropped)
    and low ports for non-root users, inside the sandbox's own network namespace.

    The ping group range may only name groups mapped in the user namespace.
    """
    return (
        ("net.ipv4.ip_unprivileged_port_start", "0"),
        ("net.ipv4.ping_group_range", f"0 {id_range - 1}"),
    )


def _drop_none(d: JSON) -> JSON:
    return {k: v for k, v in d.items() if v is not None}


@dataclass(frozen=True, slots=True)
class User:
    uid: int = 0
    gid: int = 0
    umask: int = 0o022

    def to_json(self) -> JSON:
        return {"uid": self.uid, "gid": self.gid, "umask": self.umask}


@dataclass(frozen=True, slots=True)
class Capabilities:
    bounding: tuple[str, ...]
    effective: tuple[str, ...]
    permitted: tuple[str, ...]
    # Empty inheritable set: a non-empty one lets file capabilities of an exec'd binary grow
    # (CVE-2022-24769).
    inheritable: tuple[str, ...] = ()
    ambient: tuple[str, ...] = ()

    @classmethod
    def of(cls, caps: tuple[str, ...]) -> Capabilities:
        return cls(bounding=caps, effective=caps, permitted=caps)

    def to_json(self) -> JSON:
        return {
            "bounding": list(self.bounding),
            "effective": list(self.effective),
            "permitted": list(self.permitted),
            "inheritable": list(self.inheritable),
            "ambient": list(self.ambient),
        }


@dataclass(frozen=True, slots=True)
class Rlimit:
    type: str
    soft: int
    hard: int

    def to_json(self) -> JSON:
        return {"type": self.type, "soft": self.soft, "hard": self.hard}


@dataclass(frozen=True, slots=True)
class Process:
    args: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str = "/"
    user: User = User()
    capabilities: Capabilities = Capabilities.of(DEFAULT_CAPABILITIES)
    rlimits: tuple[Rlimit, ...] = ()
    no_new_privileges: bool = True
    terminal: bool = False

    def to_json(self) -> JSON:
        return {
            "terminal": self.terminal,
            "user": self.user.to_json(),
            "args": list(self.args),
            "env": list(self.env),
            "cwd": self.cwd,
            "capabilities": self.capabilities.to_json(),
            "rlimits": [r.to_json() for r in self.rlimits],
            "noNewPrivileges": self.no_new_privileges,
        }


@dataclass(frozen=True, slots=True)
class Mount:
    destination: str
    type: str
    source: str
    options: tuple[str, ...] = ()

    @classmethod
    def bind(cls, source: Path, destination: str, *, readonly: bool) -> Mount:
        options = ("rbind", "ro" if readonly else "rw", "nosuid", "nodev")
        return cls(destination=destination, type="bind", source=str(source), options=options)

    def to_json(self) -> JSON:
        return {
            "destination": self.destination,
            "type": self.type,
            "source": self.source,
            "options": list(self.options),
        }


@dataclass(frozen=True, slots=True)
class IdMapping:
    container_id: int
    host_id: int
    size: int

    def to_json(self) -> JSON:
        return {"containerID": self.container_id, "hostID": self.host_id, "size": self.size}


@dataclass(frozen=True, slots=True)
class DeviceRule:
    allow: bool
    type: Literal["a", "b", "c"] = "a"
    major: int | None = None
    minor: int | None = None  # None = any
    access: str = "rwm"

    def to_json(self) -> JSON:
        return _drop_none(
            {
                "allow": self.allow,
                "type": self.type,
                "major": self.major,
                "minor": self.minor,
                "access": self.access,
            }
        )


# Deny everything, then the minimal /dev: null zero full random urandom tty ptmx pts/*.
# (runc appends its own defaults after these; the user namespace forbids mknod anyway.)
DEVICE_RULES: tuple[DeviceRule, ...] = (
    DeviceRule(allow=False),
    DeviceRule(allow=True, type="c", major=1, minor=3),  # null
    DeviceRule(allow=True, type="c", major=1, minor=5),  # zero
    DeviceRule(allow=True, type="c", major=1, minor=7),  # full
    DeviceRule(allow=True, type="c", major=1, minor=8),  # random
    DeviceRule(allow=True, type="c", major=1, minor=9),  # urandom
    DeviceRule(allow=True, type="c", major=5, minor=0),  # tty
    DeviceRule(allow=True, type="c", major=5, minor=2),  # ptmx
    DeviceRule(allow=True, type="c", major=136, minor=None),  # pts/*
)


@dataclass(frozen=True, slots=True)
class Memory:
    limit: int  # bytes
    swap: int  # bytes of memory + swap (cgroup v1 memsw), as the OCI spec defines it

    def to_json(self) -> JSON:
        return {"limit": self.limit, "swap": self.swap}


@dataclass(frozen=True, slots=True)
class Cpu:
    shares: int
    quota: int  # microseconds per period
    period: int = CPU_PERIOD_US

    def to_json(self) -> JSON:
        return {"shares": self.shares, "quota": self.quota, "period": self.period}


@dataclass(frozen=True, slots=True)
class Resources:
    memory: Memory
    cpu: Cpu
    pids_limit: int
    devices: tuple[DeviceRule, ...] = DEVICE_RULES

    def to_json(self) -> JSON:
        return {
            "devices": [d.to_json() for d in self.devices],
            "memory": self.memory.to_json(),
            "cpu": self.cpu.to_json(),
            "pids": {"limit": self.pids_limit},
        }


def resources(
    *, cpu: float, memory_mb: int, swap_mb: int, pids: int, memsw: bool = True
) -> Resources:
    """Cgroup limits for a sandbox.

    Args:
        cpu: CPUs' worth of time per period (0.5 = half a core).
        memory_mb: memory limit.
        swap_mb: swap allowed on top of the memory limit.
        pids: maximum number of tasks.
        memsw: whether the host accounts swap (`memory.memsw.*` exists); without it runc would
            fail to set a swap limit, so none is set.
    """
    if cpu <= 0 or memory_mb <= 0 or swap_mb < 0 or pids <= 0:
        raise ValueError("cpu, memory_mb and pids must be positive and swap_mb not negative")
    limit = memory_mb << 20
    swap = (memory_mb + swap_mb) << 20 if memsw else 0
    return Resources(
        memory=Memory(limit=limit, swap=swap),
        # Quota floor of 1 ms: the kernel refuses less.
        cpu=Cpu(shares=max(2, round(1024 * cpu)), quota=max(1000, round(cpu * CPU_PERIOD_US))),
        pids_limit=pids,
    )


@dataclass(frozen=True, slots=True)
class SeccompArg:
    index: int
    value: int
    op: str
    value_two: int = 0

    def to_json(self) -> JSON:
        return {"index": self.index, "value": self.value, "valueTwo": self.value_two, "op": self.op}


@dataclass(frozen=True, slots=True)
class SyscallRule:
    names: tuple[str, ...]
    action: str
    args: tuple[SeccompArg, ...] = ()
    errno_ret: int | None = None

    def to_json(self) -> JSON:
        return _drop_none(
            {
                "names": list(self.names),
                "action": self.action,
                "args": [a.to_json() for a in self.args] or None,
                "errnoRet": self.errno_ret,
            }
        )


@dataclass(frozen=True, slots=True)
class Seccomp:
    default_action: str
    default_errno_ret: int | None
    architectures: tuple[str, ...]
    syscalls: tuple[SyscallRule, ...]
    # A unix socket runc hands the filter's notification fd to (SCMP_ACT_NOTIFY rules), and
    # what it passes along with it (_statfs_view: the sandbox's qgroup).
    listener_path: str | None = None
    listener_metadata: str | None = None

    def allowed_names(self) -> frozenset[str]:
        """Syscalls allowed unconditionally (no argument filter)."""
        return frozenset(
            name
            for rule in self.syscalls
            if rule.action == "SCMP_ACT_ALLOW" and not rule.args
            for name in rule.names
        )

    def to_json(self) -> JSON:
        return _drop_none(
            {
                "defaultAction": self.default_action,
                "defaultErrnoRet": self.default_errno_ret,
                "architectures": list(self.architectures),
                "syscalls": [s.to_json() for s in self.syscalls],
                "listenerPath": self.listener_path,
                "listenerMetadata": self.listener_metadata,
            }
        )


@dataclass(frozen=True, slots=True)
class Linux:
    uid_mappings: tuple[IdMapping, ...]
    gid_mappings: tuple[IdMapping, ...]
    resources: Resources
    cgroups_path: str
    seccomp: Seccomp
    namespaces: tuple[str, ...] = NAMESPACES
    masked_paths: tuple[str, ...] = MASKED_PATHS
    readonly_paths: tuple[str, ...] = READONLY_PATHS
    sysctl: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> JSON:
        return {
            "uidMappings": [m.to_json() for m in self.uid_mappings],
            "gidMappings": [m.to_json() for m in self.gid_mappings],
            "namespaces": [{"type": ns} for ns in self.namespaces],
            "resources": self.resources.to_json(),
            "cgroupsPath": self.cgroups_path,
            "seccomp": self.seccomp.to_json(),
            "maskedPaths": list(self.masked_paths),
            "readonlyPaths": list(self.readonly_paths),
            "sysctl": dict(self.sysctl),
        }


@dataclass(frozen=True, slots=True)
class Spec:
    process: Process
    root: Path
    hostname: str
    mounts: tuple[Mount, ...]
    linux: Linux

    def to_json(self) -> JSON:
        return {
            "ociVersion": OCI_VERSION,
            "process": self.process.to_json(),
            "root": {"path": str(self.root), "readonly": False},
            "hostname": self.hostname,
            "mounts": [m.to_json() for m in self.mounts],
            "linux": self.linux.to_json(),
        }

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()


def base_mounts(*, shm_bytes: int) -> tuple[Mount, ...]:
    """The kernel filesystems every sandbox gets (what runc's default spec has, tightened)."""
    nse = ("nosuid", "noexec", "nodev")
    return (
        Mount("/proc", "proc", "proc", nse),
        Mount("/dev", "tmpfs", "tmpfs", ("nosuid", "strictatime", "mode=755", "size=65536k")),
        Mount(
            "/dev/pts",
            "devpts",
            "devpts",
            ("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"),
        ),
        # Size-limited, and its pages are charged to the sandbox's memory cgroup anyway.
        Mount("/dev/shm", "tmpfs", "shm", (*nse, "mode=1777", f"size={shm_bytes}")),
        Mount("/dev/mqueue", "mqueue", "mqueue", nse),
        Mount("/sys", "sysfs", "sysfs", (*nse, "ro")),
        Mount("/sys/fs/cgroup", "cgroup", "cgroup", (*nse, "relatime", "ro")),
    )


@dataclass(frozen=True, slots=True)
class SandboxLayout:
    """Host paths a sandbox's spec refers to."""

    rootfs: Path
    etc_hosts: Path
    etc_hostname: Path
    etc_resolv_conf: Path
    extra_mounts: tuple[Mount, ...] = ()  # the agent's runtime and code, read-only


def sandbox_spec(
    *,
    cgroups_path: str,
    hostname: str,
    layout: SandboxLayout,
    args: tuple[str, ...],
    env: tuple[str, ...],
    resources: Resources,
    seccomp: Seccomp,
    id_base: int,
    id_range: int,
    nofile: int,
    shm_bytes: int,
) -> Spec:
    """The locked-down spec of one sandbox whose PID 1 runs `args` as root in its user namespace."""
    mounts = (
        *base_mounts(shm_bytes=shm_bytes),
        # The sandbox may edit these (as in Docker); they live in its quota-limited subvolume.
        Mount.bind(layout.etc_hosts, "/etc/hosts", readonly=False),
        Mount.bind(layout.etc_hostname, "/etc/hostname", readonly=False),
        Mount.bind(layout.etc_resolv_conf, "/etc/resolv.conf", readonly=False),
        *layout.extra_mounts,
    )
    ids = (IdMapping(container_id=0, host_id=id_base, size=id_range),)
    return Spec(
        process=Process(
            args=args,
            env=env,
            rlimits=(Rlimit("RLIMIT_NOFILE", soft=nofile, hard=nofile),),
        ),
        root=layout.rootfs,
        hostname=hostname,
        mounts=mounts,
        linux=Linux(
            uid_mappings=ids,
            gid_mappings=ids,
            resources=resources,
            cgroups_path=cgroups_path,
            seccomp=seccomp,
            sysctl=namespaced_sysctls(id_range),
        ),
    )


def merge_env(*layers: Mapping[str, str] | tuple[str, ...]) -> tuple[str, ...]:
    """`K=V` strings from layers in order, later keys winning, first-seen order kept."""
    merged: dict[str, str] = {}
    for layer in layers:
        items = (
            layer.items()
            if isinstance(layer, Mapping)
            else (kv.partition("=")[::2] for kv in layer)
        )
        for key, value in items:
            if not key or "=" in key or "\0" in key or "\0" in value:
                raise ValueError(f"invalid environment variable name or value: {key!r}")
            merged[key] = value
    return tuple(f"{k}={v}" for k, v in merged.items())
