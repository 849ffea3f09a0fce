"""A sandbox's root filesystem: the image read-only below, its own writable layer above."""

from __future__ import annotations

from pathlib import Path

from hutch.runtime.container._mounts import MS_NODEV, MS_NOSUID, MS_SHARED, mount, umount

# overlayfs splits its options on these; a path holding one would be misread.
_RESERVED = (",", ":", "\\")


def overlay_options(*, lower: Path, upper: Path, work: Path) -> str:
    for path in (lower, upper, work):
        if any(c in str(path) for c in _RESERVED):
            raise ValueError(f"overlay paths may not contain , : or \\: {path}")
    # xino=off: the layers are on different filesystems (ext4 image store, btrfs pool); inode
    # number composition would only add a warning per mount.
    return f"lowerdir={lower},upperdir={upper},workdir={work},xino=off"


def mount_overlay(*, lower: Path, upper: Path, work: Path, target: Path) -> None:
    """Mount the overlay on `target` (in the host's mount namespace, before runc runs).

    nosuid and nodev: sandbox processes run with no_new_privs, so setuid bits would do nothing
    for them anyway; this also keeps host processes that might look into the tree safe.
    """
    data = overlay_options(lower=lower, upper=upper, work=work)
    mount("overlay", target, "overlay", MS_NOSUID | MS_NODEV, data)
    # A shared peer: the sandbox's mount namespace gets a slave copy of it (runc makes "/"
    # rslave), so a mount made here later (a bucket mount) appears inside the running sandbox.
    mount("", target, "", MS_SHARED, "")


def unmount_overlay(target: Path) -> bool:
    """Unmount the rootfs; False if it was not mounted."""
    return umount(target)
