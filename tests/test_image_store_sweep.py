"""The image store's pass over its shared files (files/): only when something may have left a
file that no image links to. Opening a store with nothing to drop must not stat every shared
file (158k with a dozen images: 7-9 s on a loaded host, twice per server start); whatever
can leave such a file must still get it dropped by the next sweep."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hutch.runtime._idmap import HOST_ID_BASE, shift_ownership
from hutch.runtime.images import _store as _images
from hutch.runtime.images._store import ImageConfig, ImageStore

CONFIG = ImageConfig(env=("PATH=/bin",), working_dir="/", user="root")


@pytest.fixture(autouse=True)
def shift_only_as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    def shift(rootfs: Path, base: int = HOST_ID_BASE) -> None:
        if os.geteuid() == 0:
            shift_ownership(rootfs, base)

    monkeypatch.setattr(_images, "shift_ownership", shift)


@pytest.fixture()
def passes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every pass over files/, as it happens."""
    seen: list[Path] = []
    real = _images._drop_unshared

    def counted(files: Path) -> None:
        seen.append(files)
        real(files)

    monkeypatch.setattr(_images, "_drop_unshared", counted)
    return seen


def rootfs(path: Path, content: bytes) -> Path:
    (path / "bin").mkdir(parents=True)
    (path / "bin/tool").write_bytes(content)
    return path


def shared(store: ImageStore) -> list[str]:
    return sorted(os.listdir(store.root / "files"))


def test_opening_a_clean_store_does_not_walk_its_shared_files(
    tmp_path: Path, passes: list[Path]
) -> None:
    store = ImageStore(tmp_path / "store")
    store.add_rootfs("a", rootfs(tmp_path / "a", b"a\n"), CONFIG)
    passes.clear()
    ImageStore(store.root)
    ImageStore(store.root)
    assert passes == []
    assert len(shared(store)) == 1


def test_a_removed_image_leaves_no_shared_file(tmp_path: Path, passes: list[Path]) -> None:
    store = ImageStore(tmp_path / "store")
    store.add_rootfs("a", rootfs(tmp_path / "a", b"a\n"), CONFIG)
    store.add_rootfs("b", rootfs(tmp_path / "b", b"b\n"), CONFIG)
    assert len(shared(store)) == 2
    store.remove("a")
    assert len(shared(store)) == 1
    store.prune()
    store.remove("b")
    assert shared(store) == []


def test_an_add_that_fails_after_sharing_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ImageStore(tmp_path / "store")
    store.add_rootfs("a", rootfs(tmp_path / "a", b"a\n"), CONFIG)
    before = shared(store)

    def broken(root: Path) -> tuple[str, int]:
        raise OSError("disk gone")

    monkeypatch.setattr(_images, "_tree_digest", broken)
    with pytest.raises(OSError, match="disk gone"):
        store.add_rootfs("b", rootfs(tmp_path / "b", b"b\n"), CONFIG)
    ImageStore(store.root)  # the next server start
    assert shared(store) == before


def test_an_adder_that_died_mid_add_leaves_nothing_behind(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    store.add_rootfs("a", rootfs(tmp_path / "a", b"a\n"), CONFIG)
    before = shared(store)
    # What a killed adder leaves: its stage in tmp/ (no lock held) with a file it offered.
    stage = store.root / "tmp" / "deadbeef"
    (stage / "rootfs").mkdir(parents=True)
    (stage / "rootfs/new").write_bytes(b"offered\n")
    os.link(stage / "rootfs/new", store.root / "files" / ("f" * 64))
    ImageStore(store.root)
    assert not stage.exists()
    assert shared(store) == before
