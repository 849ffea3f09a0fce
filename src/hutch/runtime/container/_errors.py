"""Errors of the host-side sandbox runtime.

```
SandboxRuntimeError
├── StorageError            the btrfs pool or a subvolume could not be set up or removed
├── AgentBundleError        the agent's Python runtime could not be assembled from the host's
├── RuncError               a runc command failed (message holds runc's own error)
│   └── SandboxStartError   the container did not start; everything was rolled back
├── SandboxExists           create() of an id that already has a sandbox   (also FileExistsError)
└── SandboxMissing          start_existing() of an id with no writable layer (also LookupError)
```
"""

from __future__ import annotations


class SandboxRuntimeError(Exception):
    """Base of all runtime errors."""


class StorageError(SandboxRuntimeError):
    pass


class AgentBundleError(SandboxRuntimeError):
    pass


class RuncError(SandboxRuntimeError):
    pass


class SandboxStartError(RuncError):
    pass


class SandboxExists(SandboxRuntimeError, FileExistsError):
    pass


class SandboxMissing(SandboxRuntimeError, LookupError):
    pass
