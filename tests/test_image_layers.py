"""Applying untrusted layers: never a write outside the rootfs; whiteouts; ownership shift;
corrupt, truncated and other-architecture archives refused with nothing stored."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from hutch.runtime import HOST_ID_BASE, ImageStore
from hutch.runtime.images._oci_import import (
    ImageArchitectureError,
    ImageInvalid,
    apply_layer,
    import_archive,
)


def _layer(path: Path, entries: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for e in entries:
            if isinstance(e, tuple):
                tar.addfile(e[0], io.BytesIO(e[1]))
            else:
                tar.addfile(e)
    return path


def _file(name: str, data: bytes = b"x", uid: int = 0) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.uid, info.gid = len(data), 0o644, uid, uid
    return info, data


def _entry(name: str, kind: bytes, linkname: str = "", mode: int = 0o755) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, mode
    return info


@pytest.fixture()
def box(tmp_path: Path) -> tuple[Path, Path]:
    """(rootfs, outside): a rootfs dir and a sibling dir that layers must never touch."""
    rootfs, outside = tmp_path / "rootfs", tmp_path / "outside"
    rootfs.mkdir()
    outside.mkdir()
    (outside / "victim").write_text("safe")
    return rootfs, outside


def _untouched(outside: Path) -> None:
    assert sorted(os.listdir(outside)) == ["victim"]
    assert (outside / "victim").read_text() == "safe"


def test_dotdot_entries_are_refused(tmp_path: Path, box: tuple[Path, Path]) -> None:
    rootfs, outside = box
    for name in ("../outside/victim", "a/../../outside/victim", "/../outside/victim"):
        layer = _layer(tmp_path / "l.tar", [_file(name, b"pwned")])
        with pytest.raises(ImageInvalid, match="outside the image"):
            apply_layer(rootfs, layer)
    _untouched(outside)


@pytest.mark.sandbox  # needs root (chown, device nodes, switching users)
def test_symlinks_are_resolved_inside_the_rootfs(tmp_path: Path, box: tuple[Path, Path]) -> None:
    rootfs, outside = box
    layer = _layer(
        tmp_path / "l.tar",
        [
            _entry("abs", tarfile.SYMTYPE, str(outside)),  # absolute: means <rootfs>/<outside>
            _file("abs/victim", b"pwned"),
            _entry("rel", tarfile.SYMTYPE, "../../../../../.." + str(outside)),
            _file("rel/new", b"pwned"),
            _entry("victim-link", tarfile.SYMTYPE, str(outside / "victim")),
            _file("victim-link", b"replaces the link, never writes through it"),
        ],
    )
    apply_layer(rootfs, layer)
    _untouched(outside)
    inner = rootfs / str(outside).lstrip("/")
    assert (inner / "victim").read_bytes() == b"pwned"
    assert (inner / "new").read_bytes() == b"pwned"
    assert not (rootfs / "victim-link").is_symlink()


def test_hard_links_stay_inside(tmp_path: Path, box: tuple[Path, Path]) -> None:
    rootfs, outside = box
    layer = _layer(tmp_path / "l.tar", [_entry("h", tarfile.LNKTYPE, str(outside / "victim"))])
    with pytest.raises(ImageInvalid, match="does not have"):
        apply_layer(rootfs, layer)
    layer = _layer(
        tmp_path / "l2.tar",
        [_entry("d", tarfile.SYMTYPE, str(outside)), _entry("h", tarfile.LNKTYPE, "d/victim")],
    )
    with pytest.raises(ImageInvalid):
        apply_layer(rootfs, layer)
    assert os.stat(outside / "victim").st_nlink == 1
    _untouched(outside)


@pytest.mark.sandbox  # needs root (chown, device nodes, switching users)
def test_device_nodes_are_dropped(tmp_path: Path, box: tuple[Path, Path]) -> None:
    rootfs, _ = box
    dev = _entry("sda", tarfile.BLKTYPE, mode=0o666)
    dev.devmajor, dev.devminor = 8, 0
    mem = _entry("mem", tarfile.CHRTYPE, mode=0o666)
    mem.devmajor, mem.devminor = 1, 1
    apply_layer(rootfs, _layer(tmp_path / "l.tar", [dev, mem, _file("ok")]))
    assert sorted(os.listdir(rootfs)) == ["ok"]


@pytest.mark.sandbox  # needs root (chown, device nodes, switching users)
def test_whiteouts_and_opaque_dirs(tmp_path: Path, box: tuple[Path, Path]) -> None:
    rootfs, _ = box
    apply_layer(
        rootfs,
        _layer(
            tmp_path / "1.tar",
            [_entry("d", tarfile.DIRTYPE), _file("d/a"), _file("d/b"), _file("gone")],
        ),
    )
    apply_layer(
        rootfs,
        _layer(
            tmp_path / "2.tar", [_file(".wh.gone", b""), _file("d/.wh..wh..opq", b""), _file("d/c")]
        ),
    )
    assert sorted(os.listdir(rootfs)) == ["d"]
    assert os.listdir(rootfs / "d") == ["c"]


def _oci_archive(path: Path, layers: list[bytes], config: dict[str, object]) -> Path:
    import hashlib

    blobs: dict[str, bytes] = {}

    def put(data: bytes) -> dict[str, object]:
        d = hashlib.sha256(data).hexdigest()
        blobs[d] = data
        return {"digest": f"sha256:{d}", "size": len(data), "mediaType": "x"}

    manifest = {
        "schemaVersion": 2,
        "config": put(json.dumps(config).encode()),
        "layers": [put(layer) for layer in layers],
    }
    index = {"schemaVersion": 2, "manifests": [put(json.dumps(manifest).encode())]}
    with tarfile.open(path, "w") as tar:
        for name, data in [
            ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
            ("index.json", json.dumps(index).encode()),
            *[(f"blobs/sha256/{d}", b) for d, b in blobs.items()],
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _layer_bytes(
    tmp_path: Path, entries: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]
) -> bytes:
    return _layer(tmp_path / "layer.tar", entries).read_bytes()


def _store_is_clean(store: ImageStore) -> None:
    assert store.list() == []
    assert os.listdir(store.root / "images") == []
    assert [p for p in os.listdir(store.root / "tmp") if not p.endswith(".lock")] == []


@pytest.mark.sandbox  # needs root (chown, device nodes, switching users)
def test_import_shifts_ownership_and_keeps_config(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    setuid = _file("bin/tool", b"#!/bin/sh\n", uid=1000)
    setuid[0].mode = 0o4755
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["A=1"], "WorkingDir": "/app", "User": "1000", "Cmd": ["sh"]},
    }
    archive = _oci_archive(tmp_path / "a.tar", [_layer_bytes(tmp_path, [setuid])], config)
    image = import_archive(store, archive, "t:1")
    st = os.lstat(image.rootfs / "bin/tool")
    assert (st.st_uid, st.st_gid) == (HOST_ID_BASE + 1000, HOST_ID_BASE + 1000)
    assert stat.S_IMODE(st.st_mode) == 0o4755
    assert image.config.working_dir == "/app" and image.config.user == "1000"
    assert "A=1" in image.config.env and image.config.cmd == ("sh",)


def test_corrupt_and_truncated_archives_store_nothing(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    config = {"architecture": "amd64", "os": "linux", "config": {}}
    good = _oci_archive(
        tmp_path / "a.tar", [_layer_bytes(tmp_path, [_file("f", b"x" * 5000)])], config
    )
    data = good.read_bytes()
    truncated = tmp_path / "t.tar"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageInvalid):
        import_archive(store, truncated, "t:1")
    corrupt = tmp_path / "c.tar"
    corrupt.write_bytes(data.replace(b"x" * 100, b"y" * 100, 1))
    with pytest.raises(ImageInvalid, match="corrupt"):
        import_archive(store, corrupt, "t:1")
    garbage = tmp_path / "g.tar"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(ImageInvalid):
        import_archive(store, garbage, "t:1")
    evil = _oci_archive(
        tmp_path / "e.tar", [_layer_bytes(tmp_path, [_file("ok"), _file("../x")])], config
    )
    with pytest.raises(ImageInvalid):
        import_archive(store, evil, "t:1")
    _store_is_clean(store)


def test_other_architecture_is_refused(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    config = {"architecture": "s390x", "os": "linux", "config": {}}
    archive = _oci_archive(tmp_path / "a.tar", [_layer_bytes(tmp_path, [_file("f")])], config)
    with pytest.raises(ImageArchitectureError, match="s390x"):
        import_archive(store, archive, "t:1")
    _store_is_clean(store)


@pytest.mark.sandbox  # needs root (chown, device nodes, switching users)
def test_layers_two_images_share_take_disk_once(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    config = {"architecture": "amd64", "os": "linux", "config": {}}
    base = _layer_bytes(tmp_path, [_file("usr/lib/big.so", os.urandom(256 << 10))])
    top = _layer(tmp_path / "top.tar", [_file("app.py", b"print(1)\n")]).read_bytes()
    one = import_archive(store, _oci_archive(tmp_path / "1.tar", [base], config), "one:1")
    two = import_archive(store, _oci_archive(tmp_path / "2.tar", [base, top], config), "two:1")
    assert one.id != two.id
    a, b = os.stat(one.rootfs / "usr/lib/big.so"), os.stat(two.rootfs / "usr/lib/big.so")
    assert os.path.samestat(a, b), "the shared layer's file is one inode"
    store.remove("one:1")
    assert (two.rootfs / "usr/lib/big.so").stat().st_nlink == 2  # two:1 and the share pool
    store.remove("two:1")
    assert os.listdir(store.root / "files") == [], "nothing stays behind the last image"


@pytest.mark.parametrize("name", [".wh...", "dir/.wh...", ".wh..", "dir/.wh..", ".wh."])
def test_whiteouts_of_dot_and_dotdot_are_refused(
    tmp_path: Path, box: tuple[Path, Path], name: str
) -> None:
    # `.wh...` would whiteout "..": the rootfs's parent, the import's staging dir.
    rootfs, outside = box
    (rootfs / "keep").write_text("kept")
    layer = _layer(tmp_path / "l.tar", [_entry("dir", tarfile.DIRTYPE), _file(name)])
    with pytest.raises(ImageInvalid, match="whiteout"):
        apply_layer(rootfs, layer)
    _untouched(outside)
    assert (rootfs / "keep").read_text() == "kept"
