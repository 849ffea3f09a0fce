"""Building the default image from its recipe (`images/default/`) with debootstrap.

The build runs once per recipe: the recipe's digest is stored as a label on the image, and
`ensure_default_image` returns the stored image while the digest matches. Steps:

1. `debootstrap --variant=minbase` from the host's configured Debian mirror (its .debs cached);
2. in a chroot: the recipe's `files/`, `apt-get install` of `packages.txt`, then `setup.sh`;
3. apt lists and caches and host leftovers (resolv.conf, hostname) removed;
4. the rootfs moved into the image store (which shifts its ownership into the sandbox id range).

Run `python -m hutch.runtime.images._default_image` to build it with a progress bar.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from hutch.runtime.images._build_progress import MonotonicProgress, Progress, render_progress_bar
from hutch.runtime.images._chroot_build import (
    ChrootBuilder,
    DefaultImageBuildError,
    Recipe,
    check_host,
    exclusive,
)
from hutch.runtime.images._store import Image, ImageNotFound, ImageStore

DEFAULT_IMAGE_NAME = "default"
RECIPE_LABEL = "hutch.recipe-digest"
# Part of the recipe digest: bump it when a change to this builder changes what it produces.
_BUILDER_VERSION = "1"


def default_recipe_dir() -> Path:
    """The `images/default` recipe of the source tree this module was loaded from."""
    recipe = Path(__file__).resolve().parents[4] / "images" / "default"
    if not (recipe / "packages.txt").is_file():
        raise FileNotFoundError(
            f"the default image recipe is not at {recipe}: run from a Hutch source checkout, "
            "or pass the recipe directory explicitly"
        )
    return recipe


def recipe_digest(recipe_dir: Path) -> str:
    """A digest of every file in the recipe (names, contents, executable bits) and the builder."""
    h = hashlib.sha256(f"hutch-default-image-builder-{_BUILDER_VERSION}\n".encode())
    for path in sorted(p for p in recipe_dir.rglob("*") if not p.is_dir() or p.is_symlink()):
        rel = path.relative_to(recipe_dir).as_posix()
        if path.is_symlink():
            h.update(f"L {rel} {os.readlink(path)}\n".encode())
            continue
        executable = "x" if os.access(path, os.X_OK) else "-"
        h.update(f"F {rel} {executable} ".encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
        h.update(b"\n")
    return h.hexdigest()


def ensure_default_image(
    store: ImageStore,
    recipe_dir: Path,
    *,
    cache_dir: Path,
    progress: Progress | None = None,
    force: bool = False,
) -> Image:
    """The stored `default` image, built first if missing or built from another recipe.

    Needs root, debootstrap and access to the host's Debian mirror. Concurrent calls (other
    processes too) wait for one build.

    Args:
        store: where the image is stored, as `default`.
        recipe_dir: the recipe, usually `default_recipe_dir()`.
        cache_dir: keeps downloaded packages (so a rebuild does not download again), the build
            tree and `build.log`.
        progress: called with (fraction 0..1, message) as the build goes.
        force: rebuild even if the stored image matches the recipe.

    Raises:
        DefaultImageBuildError: the build failed; the message has the output's last lines.
    """
    report = MonotonicProgress(progress)
    digest = recipe_digest(recipe_dir)
    if not force and (image := _current(store, digest)) is not None:
        report(1.0, "default image is up to date")
        return image
    check_host()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with exclusive(cache_dir / "build.lock"):
        # Someone else may have built it while we waited for the lock.
        if not force and (image := _current(store, digest)) is not None:
            report(1.0, "default image is up to date")
            return image
        builder = ChrootBuilder(Recipe.load(recipe_dir), cache_dir, report)
        try:
            rootfs = builder.build()
            report(0.92, "storing the image")
            image = store.add_rootfs(
                DEFAULT_IMAGE_NAME,
                rootfs,
                builder.recipe.config,
                move=True,
                labels={RECIPE_LABEL: digest, "hutch.suite": builder.recipe.suite},
            )
        except OSError as e:
            raise DefaultImageBuildError(f"building the default image failed: {e}") from e
        finally:
            # A failed build's tree is of no use (its log is kept) and may be gigabytes.
            builder.cleanup()
    report(1.0, f"default image built: {image.size_bytes / 2**20:.0f} MiB")
    return image


def _current(store: ImageStore, digest: str) -> Image | None:
    try:
        image = store.get(DEFAULT_IMAGE_NAME)
    except ImageNotFound:
        return None
    return image if image.labels.get(RECIPE_LABEL) == digest else None


# -- CLI ----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hutch.runtime.images._default_image",
        description="Build the default image (once per recipe) into Hutch's image store.",
    )
    home = Path(os.environ.get("HUTCH_HOME", "/var/lib/hutch"))
    parser.add_argument("--home", type=Path, default=home, help="Hutch's state dir (HUTCH_HOME)")
    parser.add_argument("--recipe", type=Path, default=None, help="recipe dir (images/default)")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        recipe = args.recipe or default_recipe_dir()
        image = ensure_default_image(
            ImageStore(args.home / "images"),
            recipe,
            cache_dir=args.home / "cache",
            progress=render_progress_bar(sys.stderr),
            force=args.force,
        )
    except (DefaultImageBuildError, FileNotFoundError) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was stored", file=sys.stderr)
        return 130
    print(
        f"{image.name} {image.id[:12]} {image.size_bytes / 2**20:.0f} MiB "
        f"({time.monotonic() - started:.0f} s) {image.rootfs}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
