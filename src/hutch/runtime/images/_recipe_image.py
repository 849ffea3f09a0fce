"""Images built on another stored image from a recipe directory (e.g. `images/agents/`).

A recipe here is the default image's recipe format plus a ``"base"`` in ``config.json`` and an
optional npm project (``package.json`` + ``package-lock.json``)::

    config.json        {"base": "default", "image": {env, working_dir, user, ...}}
    packages.txt       Debian packages to add (apt-get install)
    package.json       npm packages, installed with ``npm ci`` into /opt/hutch-<name>
    package-lock.json
    files/             copied over the rootfs first
    setup.sh           runs last, as root, in the chroot

The build copies the base image's rootfs, shifts its ownership back out of the sandbox id range,
runs the steps in a chroot with private mount and pid namespaces (the default image's builder),
and stores the result under the recipe's name, labelled with the recipe digest and the base
image's id: it is rebuilt when either changes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from hutch.runtime._idmap import unshift_ownership
from hutch.runtime.images._build_progress import MonotonicProgress, Progress
from hutch.runtime.images._chroot_build import (
    CHROOT_ENV,
    ChrootBuilder,
    Recipe,
    check_host,
    copy_files_over,
    exclusive,
)
from hutch.runtime.images._default_image import recipe_digest
from hutch.runtime.images._store import Image, ImageNotFound, ImageStore

RECIPE_LABEL = "hutch.recipe-digest"
BASE_LABEL = "hutch.base-image"


class RecipeImageBuildError(RuntimeError):
    """Building an image from a recipe failed; the message says which step and why."""


def recipe_dir_for(name: str) -> Path:
    """`images/<name>` of the source tree this module was loaded from."""
    recipe = Path(__file__).resolve().parents[4] / "images" / name
    if not (recipe / "config.json").is_file():
        raise FileNotFoundError(
            f"no image recipe {name!r} at {recipe}: run from a Hutch source checkout"
        )
    return recipe


def recipe_base(recipe_dir: Path) -> str | None:
    """The ``base`` a recipe builds on (None: a debootstrap recipe like `images/default`)."""
    base = json.loads((recipe_dir / "config.json").read_text()).get("base")
    return str(base) if base else None


def ensure_recipe_image(
    store: ImageStore,
    name: str,
    recipe_dir: Path,
    *,
    cache_dir: Path,
    progress: Progress | None = None,
    force: bool = False,
) -> Image:
    """The stored image `name`, built from `recipe_dir` on its base image if missing or stale.

    Raises:
        RecipeImageBuildError: the base image is missing, or a build step failed.
    """
    report = MonotonicProgress(progress)
    base_name = recipe_base(recipe_dir)
    if base_name is None:
        raise RecipeImageBuildError(f"recipe {recipe_dir} has no 'base' in its config.json")
    try:
        base = store.get(base_name)
    except ImageNotFound:
        raise RecipeImageBuildError(
            f"image {name!r} builds on {base_name!r}, which is not stored: "
            f"run `hutch image build {base_name}` first"
        ) from None
    digest = recipe_digest(recipe_dir)
    labels = {RECIPE_LABEL: digest, BASE_LABEL: base.id}
    if not force and (image := _current(store, name, labels)) is not None:
        report(1.0, f"{name} image is up to date")
        return image
    check_host()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with exclusive(cache_dir / f"build-{name}.lock"):
        if not force and (image := _current(store, name, labels)) is not None:
            report(1.0, f"{name} image is up to date")
            return image
        recipe = Recipe.load(recipe_dir)
        builder = ChrootBuilder(recipe, cache_dir, report)
        # NB: its own work dir and log: the default image may be building at the same time.
        builder.work = cache_dir / f"build-{name}"
        builder.rootfs = builder.work / "rootfs"
        builder.log_path = cache_dir / f"build-{name}.log"
        try:
            rootfs = _build(builder, base, recipe_dir, name)
            report(0.94, "storing the image")
            image = store.add_rootfs(name, rootfs, recipe.config, move=True, labels=labels)
        except OSError as e:
            raise RecipeImageBuildError(f"building the {name} image failed: {e}") from e
        except RecipeImageBuildError:
            raise
        except RuntimeError as e:  # DefaultImageBuildError: a step failed, its output attached
            message = str(e).replace("the default image", f"the {name} image")
            raise RecipeImageBuildError(message) from e
        finally:
            builder.cleanup()
    report(1.0, f"{name} image built: {image.size_bytes / 2**20:.0f} MiB")
    return image


def _current(store: ImageStore, name: str, labels: dict[str, str]) -> Image | None:
    try:
        image = store.get(name)
    except ImageNotFound:
        return None
    ok = all(image.labels.get(k) == v for k, v in labels.items())
    return image if ok else None


def _build(builder: ChrootBuilder, base: Image, recipe_dir: Path, name: str) -> Path:
    report = builder.report
    builder.cleanup()
    builder.work.mkdir(parents=True, exist_ok=True)
    (builder.archives / "partial").mkdir(parents=True, exist_ok=True)
    root = builder.rootfs
    with open(builder.log_path, "w") as builder.log:
        report(0.0, f"copying the {base.name} image")
        builder.run(
            ["cp", "-a", "--reflink=auto", str(base.rootfs), str(root)], step="copy base image"
        )
        report(0.1, "shifting ownership out of the sandbox id range")
        unshift_ownership(root)
        etc = root / "etc"
        for file in ("resolv.conf", "hosts"):  # the host's resolver, for the build only
            if Path("/etc", file).is_file():
                shutil.copy(Path("/etc", file), etc / file)
        if builder.recipe.files_dir is not None:
            copy_files_over(builder.recipe.files_dir, root)
        if builder.recipe.packages:
            builder.apt(["update"], report.span(0.15, 0.2), "updating package lists")
            builder.apt(
                ["install", "-y", "--no-install-recommends", *builder.recipe.packages],
                report.span(0.2, 0.4),
                "installing packages",
            )
        if (recipe_dir / "package.json").is_file():
            _npm_ci(builder, recipe_dir, f"/opt/hutch-{name}", report.span(0.4, 0.86))
        if builder.recipe.setup_script is not None:
            report(0.88, "running setup.sh")
            shutil.copy(builder.recipe.setup_script, root / "hutch-setup.sh")
            builder.in_chroot(["/bin/sh", "-eu", "/hutch-setup.sh"], step="setup.sh")
            (root / "hutch-setup.sh").unlink()
        report(0.9, "cleaning up")
        builder.finish_rootfs()
    return root


def _npm_ci(builder: ChrootBuilder, recipe_dir: Path, prefix: str, report: Progress) -> None:
    if not (recipe_dir / "package-lock.json").is_file():
        raise RecipeImageBuildError(
            f"{recipe_dir}/package.json needs its package-lock.json: run "
            "`npm install --package-lock-only --ignore-scripts` there and commit it"
        )
    target = builder.rootfs / prefix.lstrip("/")
    target.mkdir(parents=True, exist_ok=True)
    for file in ("package.json", "package-lock.json"):
        shutil.copy(recipe_dir / file, target / file)
    report(0.0, "npm ci (downloading the packages)")
    added = 0

    def on_output(line: str) -> None:
        nonlocal added
        # npm prints no machine-readable progress; "added N packages" and http lines do.
        if line.startswith("npm http fetch"):
            added += 1
            report(min(0.9, added / 60), line[:70])

    argv = ["npm", "ci", "--omit=dev", "--no-audit", "--no-fund", "--loglevel=http"]
    env = dict(CHROOT_ENV)
    # NB: trust what the host trusts for the download (a site's TLS-inspecting proxy CA), for
    # the build only: the image keeps Debian's CA bundle.
    host_ca = Path("/etc/ssl/certs/ca-certificates.crt")
    build_ca = builder.rootfs / "tmp/hutch-build-ca.crt"
    if host_ca.is_file():
        shutil.copy(host_ca, build_ca)
        env["NODE_EXTRA_CA_CERTS"] = "/tmp/hutch-build-ca.crt"
    try:
        builder.in_chroot(
            [*argv, "--prefix", prefix],
            step="npm ci",
            on_output=on_output,
            env=env,
        )
    finally:
        build_ca.unlink(missing_ok=True)
    report(1.0, "npm packages installed")
