"""Images built on a stored image from a recipe (images/agents): the parts that need no build."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hutch.runtime import HOST_ID_BASE, ImageStore, shift_ownership
from hutch.runtime._idmap import unshift_ownership
from hutch.runtime.images._recipe_image import (
    RecipeImageBuildError,
    ensure_recipe_image,
    recipe_base,
    recipe_dir_for,
)


def test_agents_recipe_is_complete() -> None:
    recipe = recipe_dir_for("agents")
    assert recipe_base(recipe) == "default"
    for name in ("package.json", "package-lock.json", "packages.txt", "setup.sh"):
        assert (recipe / name).is_file(), name
    with pytest.raises(FileNotFoundError):
        recipe_dir_for("no-such-recipe")


def test_missing_base_image_says_what_to_run(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    with pytest.raises(RecipeImageBuildError, match="hutch image build default"):
        ensure_recipe_image(store, "agents", recipe_dir_for("agents"), cache_dir=tmp_path / "c")


@pytest.mark.sandbox  # needs root (chown, device nodes, switching users)
def test_unshift_undoes_shift(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "home/user").mkdir(parents=True)
    (root / "bin").mkdir()
    tool = root / "bin/tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o4755)
    os.chown(root / "home/user", 1000, 1000)
    (root / "link").symlink_to("bin/tool")
    shift_ownership(root)
    assert (root / "home/user").stat().st_uid == HOST_ID_BASE + 1000
    unshift_ownership(root)
    assert (root / "home/user").stat().st_uid == 1000
    assert tool.stat().st_uid == 0 and tool.stat().st_mode & 0o4000  # setuid kept
    assert os.lstat(root / "link").st_uid == 0
