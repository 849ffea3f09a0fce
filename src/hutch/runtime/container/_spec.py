"""What the runtime is asked for: a sandbox's spec and limits, and the runtime's own settings."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hutch.runtime.container._netns import DEFAULT_SUBNET
from hutch.runtime.container._nft import NetworkPolicy
from hutch.runtime.images import Image

SandboxState = Literal["running", "paused", "stopped", "missing"]

SANDBOX_ID_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")


def _debug_agent_default() -> bool:
    return os.environ.get("HUTCH_DEBUG_AGENT") == "1"


def _disk_statfs_default() -> bool:
    # On unless HUTCH_DISK_STATFS=0 (then `df /` in a sandbox shows the storage pool).
    return os.environ.get("HUTCH_DISK_STATFS", "1") != "0"


def _uid_ranges_default() -> bool:
    # On unless HUTCH_UID_RANGES=0 (the opt-out: every sandbox in the one canonical range).
    return os.environ.get("HUTCH_UID_RANGES", "1") != "0"


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandbox."""

    cpu: float = 1.0
    memory_mb: int = 1024
    swap_mb: int = 0  # swap on top of memory: the memory+swap limit is memory_mb + swap_mb
    pids: int = 512
    disk_mb: int = 4096


@dataclass(frozen=True)
class SandboxSpec:
    """What to run: `image` with `env` (over the image's) and `limits`."""

    id: str
    image: Image
    env: Mapping[str, str]
    limits: Limits
    runtime: Literal["runc", "gvisor"] = "runc"
    hostname: str = "sandbox"
    network: NetworkPolicy = field(default_factory=NetworkPolicy)  # default: no egress
    # A subvolume whose copy is the new sandbox's disk (a snapshot, or a disk to fork).
    disk_from: Path | None = None
    # Its own extra CA certificates (PEM, one each), kept with its disk: see _trust.
    ca_certificates: tuple[str, ...] = ()


@dataclass(frozen=True)
class RuntimeConfig:
    """Settings of the host-side runtime.

    Attributes:
        home: `HUTCH_HOME`; everything the runtime keeps lives under it.
        storage_size_gb: size of the sparse btrfs pool file holding the writable layers.
        runc: the runc binary (name on PATH or path).
        agent_package: the `hutch` package whose `_wire` and `agent` run in sandboxes
            (default: this installation's).
        debug_agent: send the agent's stderr to `sandboxes/<id>/agent.log` (default: the
            `HUTCH_DEBUG_AGENT=1` environment variable). Off in production: sandbox root could
            reopen its PID 1's stderr and fill the host disk through it.
        network_subnet: the addresses of sandbox veths.
        resolv: the host's resolver settings that sandboxes' resolv.conf copies (and
            whose name servers an internet sandbox may send DNS to, private or not).
        ca_certificates: extra CA certificates (PEM, one each) every sandbox trusts.
        uid_ranges: give each sandbox a host uid range of its own, over idmapped views of its
            image (`_rootfs_views`; default: on, off with `HUTCH_UID_RANGES=0`).
    """

    home: Path
    storage_size_gb: int = 64
    runc: str = "runc"
    agent_package: Path | None = None
    debug_agent: bool = field(default_factory=_debug_agent_default)
    network_subnet: str = DEFAULT_SUBNET
    resolv: Path = Path("/etc/resolv.conf")
    ca_certificates: tuple[str, ...] = ()
    uid_ranges: bool = field(default_factory=_uid_ranges_default)
    # CIDRs no sandbox may reach whatever its policy (a cluster's node network).
    blocked_cidrs: tuple[str, ...] = ()
    # statfs of a sandbox's root answers with its disk limit (_statfs_daemon).
    disk_statfs: bool = field(default_factory=_disk_statfs_default)


def check_sandbox_id(sandbox_id: str) -> None:
    if not SANDBOX_ID_RE.fullmatch(sandbox_id):
        raise ValueError(
            f"invalid sandbox id {sandbox_id!r}: 1-63 characters of a-z, 0-9 and '-', "
            "starting and ending with a letter or digit"
        )
