"""The host side of Hutch: images, and runc sandboxes built from them.

`Runtime` turns a `SandboxSpec` into a running, locked-down container whose PID 1 is the Hutch
agent, and removes every trace of it again. `ImageStore` holds the root filesystems.
"""

from hutch.runtime._idmap import HOST_ID_BASE, ID_RANGE, shift_ownership
from hutch.runtime.container._errors import (
    AgentBundleError,
    RuncError,
    SandboxExists,
    SandboxMissing,
    SandboxRuntimeError,
    SandboxStartError,
    StorageError,
)
from hutch.runtime.container._nft import NetworkPolicy
from hutch.runtime.container._runtime import (
    Limits,
    Runtime,
    RuntimeConfig,
    SandboxSpec,
    SandboxState,
)
from hutch.runtime.images._default_image import (
    DefaultImageBuildError,
    default_recipe_dir,
    ensure_default_image,
    recipe_digest,
    render_progress_bar,
)
from hutch.runtime.images._store import Image, ImageConfig, ImageNotFound, ImageStore

__all__ = [
    "HOST_ID_BASE",
    "ID_RANGE",
    "AgentBundleError",
    "DefaultImageBuildError",
    "Image",
    "ImageConfig",
    "ImageNotFound",
    "ImageStore",
    "Limits",
    "NetworkPolicy",
    "RuncError",
    "Runtime",
    "RuntimeConfig",
    "SandboxExists",
    "SandboxMissing",
    "SandboxRuntimeError",
    "SandboxSpec",
    "SandboxStartError",
    "SandboxState",
    "StorageError",
    "default_recipe_dir",
    "ensure_default_image",
    "recipe_digest",
    "render_progress_bar",
    "shift_ownership",
]
