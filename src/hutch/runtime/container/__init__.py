"""Sandboxes on this host: OCI bundles run with runc, and what each one is made of.

Owns the bundle (`config.json`, seccomp, mounts), the overlay root filesystem and its btrfs
storage, cgroups, the network namespace with its nftables rules, bucket mounts and the agent
bundle bind-mounted into every sandbox. May import `hutch.runtime.images` (a sandbox starts
from an image) and `hutch.runtime._idmap`; nothing in `hutch.runtime.images` imports it.
Other packages import these names from `hutch.runtime`.
"""

from hutch.runtime.container._backups import (
    BackupFailed,
    BackupIO,
    BackupTarget,
    receive_dir,
    remove_received,
)
from hutch.runtime.container._bucket_spec import (
    BucketError,
    BucketMount,
    BucketMountFailed,
    BucketNotMounted,
    BucketPathBusy,
    BucketPathInvalid,
    BucketRequest,
    Credentials,
)
from hutch.runtime.container._errors import (
    AgentBundleError,
    RuncError,
    SandboxExists,
    SandboxMissing,
    SandboxRuntimeError,
    SandboxStartError,
    StorageError,
)
from hutch.runtime.container._nft import NetworkPolicy, normalize_cidr
from hutch.runtime.container._oom_watch import OomKill, OomWatch
from hutch.runtime.container._public_net import nameservers
from hutch.runtime.container._runtime import Runtime
from hutch.runtime.container._snapshots import snapshot_subvolume
from hutch.runtime.container._spec import (
    Limits,
    RuntimeConfig,
    SandboxSpec,
    SandboxState,
)
from hutch.runtime.container._trust import split_pem
from hutch.runtime.container._usage import SandboxUsage

__all__ = [
    "AgentBundleError",
    "BackupFailed",
    "BackupIO",
    "BackupTarget",
    "BucketError",
    "BucketMount",
    "BucketMountFailed",
    "BucketNotMounted",
    "BucketPathBusy",
    "BucketPathInvalid",
    "BucketRequest",
    "Credentials",
    "Limits",
    "NetworkPolicy",
    "OomKill",
    "OomWatch",
    "RuncError",
    "Runtime",
    "RuntimeConfig",
    "SandboxExists",
    "SandboxMissing",
    "SandboxRuntimeError",
    "SandboxSpec",
    "SandboxStartError",
    "SandboxState",
    "SandboxUsage",
    "StorageError",
    "nameservers",
    "normalize_cidr",
    "receive_dir",
    "remove_received",
    "snapshot_subvolume",
    "split_pem",
]
