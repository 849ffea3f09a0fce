"""The safe path resolver: nothing under a sandbox's rootfs leads the host elsewhere."""

from __future__ import annotations

import errno
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch.runtime.container._mounts import mount_table, mounts_under, unmount_all_under
from hutch.runtime.container._safepath import mount_id_of, open_beneath, open_root, unmount_in_root


def _tmpfs(path: Path) -> int:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "t", path], check=True)
    return next(e.mount_id for e in reversed(mount_table()) if e.mountpoint == str(path))


@pytest.fixture()
def tree() -> Iterator[Path]:
    """root/ (the "rootfs") and host/ side by side, with a tmpfs in each."""
    top = Path(tempfile.mkdtemp(prefix="hutch-safepath-", dir="/var/tmp"))
    yield top
    for e in reversed(mount_table()):
        if e.mountpoint.startswith(str(top) + "/"):
            subprocess.run(["umount", "-l", e.mountpoint], check=False)
    subprocess.run(["rm", "-rf", "--one-file-system", top], check=False)


def _mounted(path: Path) -> bool:
    return any(e.mountpoint == str(path) for e in mount_table())


def test_symlinks_and_escapes_are_refused(tree: Path) -> None:
    root, host = tree / "root", tree / "host"
    (root / "dir").mkdir(parents=True)
    host.mkdir()
    (root / "abs").symlink_to(host)
    (root / "rel").symlink_to("../host")
    (root / "dir" / "self").symlink_to("/dir")
    root_fd = open_root(root)
    try:
        for path, err in (
            ("abs", errno.ELOOP),
            ("abs/x", errno.ELOOP),
            ("rel", errno.ELOOP),
            ("dir/self", errno.ELOOP),
            ("dir/../../host", errno.EXDEV),
            ("/proc/self/root", errno.ENOENT),  # leading "/" is stripped: root/proc/...
        ):
            with pytest.raises(OSError) as exc:
                os.close(open_beneath(root_fd, path))
            assert exc.value.errno == err, path
        fd = open_beneath(root_fd, "dir")
        assert os.path.samestat(os.fstat(fd), os.stat(root / "dir"))
        os.close(fd)
    finally:
        os.close(root_fd)


@pytest.mark.sandbox  # mounts a tmpfs: root
def test_unmount_goes_by_mount_id_and_never_outside_the_root(tree: Path) -> None:
    root, host = tree / "root", tree / "host"
    inside = _tmpfs(root / "a" / "data")
    outside = _tmpfs(host / "data")
    fd = os.open(root / "a" / "data", os.O_PATH)
    assert mount_id_of(fd) == inside
    os.close(fd)

    # A mount id that is not under the root is never touched.
    assert unmount_in_root(root, outside) is False
    assert _mounted(host / "data")

    # The directory on the way is now a symlink to the host: the name leads to the host's
    # mount, and the resolver refuses it (it looks again, then gives up) rather than follow.
    os.rename(root / "a", root / "moved")
    (root / "a").symlink_to(host)
    assert unmount_in_root(root, inside) is True  # found under its new name, by id
    assert not _mounted(root / "moved" / "data")
    assert _mounted(host / "data")
    assert unmount_in_root(root, inside) is False  # gone already


@pytest.mark.sandbox  # mounts a tmpfs: root
def test_mounts_under_finds_names_with_spaces_and_nothing_beside_the_prefix(tree: Path) -> None:
    # A destroy reads only the mountinfo lines that name its bundle dir: in their escaped
    # form (a space is \\040 there), and a sibling that merely starts alike is not below it.
    box = tree / "sb 1"
    _tmpfs(box / "rootfs")
    _tmpfs(box / "rootfs" / "a b")
    _tmpfs(tree / "sb 10" / "rootfs")
    assert mounts_under(box) == [box / "rootfs" / "a b", box / "rootfs"]
    unmount_all_under(box)
    assert mounts_under(box) == []
    assert mounts_under(tree / "sb 10") == [tree / "sb 10" / "rootfs"]
