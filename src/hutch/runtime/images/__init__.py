"""Images: a content-addressed store of flattened root filesystems, and how images get in.

Owns the store, the default image built from its recipe with debootstrap, recipe images,
imports of OCI archives and registry images, and Dockerfile builds. May import
`hutch.runtime._idmap` (images are stored shifted into the sandboxes' uid range); it never
imports `hutch.runtime.container`. Other packages import these names from `hutch.runtime`.
"""

from hutch.runtime.images._build_progress import Progress, render_progress_bar
from hutch.runtime.images._chroot_build import DefaultImageBuildError
from hutch.runtime.images._default_image import (
    DEFAULT_IMAGE_NAME,
    default_recipe_dir,
    ensure_default_image,
    recipe_digest,
)
from hutch.runtime.images._image_defaults import image_agent_env, image_command, image_shell
from hutch.runtime.images._oci_build import (
    BuildError,
    build_image,
    check_offline_bases,
    check_untrusted_dockerfile,
)
from hutch.runtime.images._oci_import import (
    ImageArchitectureError,
    ImageInvalid,
    RegistryError,
    import_archive,
    pull,
)
from hutch.runtime.images._recipe_image import (
    RecipeImageBuildError,
    ensure_recipe_image,
    recipe_dir_for,
)
from hutch.runtime.images._store import (
    Image,
    ImageConfig,
    ImageNotFound,
    ImageStore,
    check_image_name,
)

__all__ = [
    "DEFAULT_IMAGE_NAME",
    "BuildError",
    "DefaultImageBuildError",
    "Image",
    "ImageArchitectureError",
    "ImageConfig",
    "ImageInvalid",
    "ImageNotFound",
    "ImageStore",
    "Progress",
    "RecipeImageBuildError",
    "RegistryError",
    "build_image",
    "check_image_name",
    "check_offline_bases",
    "check_untrusted_dockerfile",
    "default_recipe_dir",
    "ensure_default_image",
    "ensure_recipe_image",
    "image_agent_env",
    "image_command",
    "image_shell",
    "import_archive",
    "pull",
    "recipe_digest",
    "recipe_dir_for",
    "render_progress_bar",
]
