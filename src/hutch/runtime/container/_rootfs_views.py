"""A sandbox's root filesystem as its own uid range sees it (`RuntimeConfig.uid_ranges`).

Off: the overlay is mounted straight over the image and the sandbox's disk, and every
sandbox runs as the canonical range `HOST_ID_BASE` (all sandboxes share host uids). On: the
sandbox gets a range of its own (`_uid_ranges`), and the overlay is mounted over idmapped
views of the image and of its disk (`_idmapped`), under its bundle dir:

    sandboxes/<id>/lower    the image's rootfs, canonical ids shown as the sandbox's range
    sandboxes/<id>/store    its disk (upper, work, etc), the same way
    sandboxes/<id>/rootfs   overlayfs over the two

`stop` and `destroy` unmount everything under the bundle dir (deepest first), these too.
"""

from __future__ import annotations

from pathlib import Path

from hutch.runtime._idmap import HOST_ID_BASE, ID_RANGE
from hutch.runtime.container._idmapped import mount_idmapped
from hutch.runtime.container._mounts import umount
from hutch.runtime.container._overlay import mount_overlay, unmount_overlay
from hutch.runtime.container._uid_ranges import UidRanges
from hutch.runtime.container._userns_cache import UsernsCache


class RootfsViews:
    """Root filesystems of the sandboxes of one `HUTCH_HOME`."""

    def __init__(self, home: Path, uid_ranges: bool) -> None:
        self._ranges = UidRanges(home) if uid_ranges else None
        self._userns = UsernsCache()

    def id_base(self, sandbox_id: str) -> int:
        """The first host id of the sandbox's user namespace."""
        base = self._ranges.get(sandbox_id) if self._ranges is not None else None
        return HOST_ID_BASE if base is None else base

    def etc(self, storage: Path, bundle: Path) -> Path:
        """Where its etc files (hosts, resolv.conf...) are bound from: through its view."""
        return storage / "etc" if self._ranges is None else bundle / "store" / "etc"

    async def mount(
        self, sandbox_id: str, image: Path, storage: Path, bundle: Path, target: Path
    ) -> None:
        """Mount the sandbox's rootfs on `target` (replacing stale mounts of a failed start)."""
        unmount_overlay(target)
        if self._ranges is None:
            mount_overlay(
                lower=image, upper=storage / "upper", work=storage / "work", target=target
            )
            return
        base = self._ranges.allocate(sandbox_id)
        lower, store = bundle / "lower", bundle / "store"
        for view in (store, lower):
            umount(view)
            view.mkdir(mode=0o755, exist_ok=True)
        userns = await self._userns.get(base, ID_RANGE)
        mount_idmapped(image, lower, userns)
        mount_idmapped(storage, store, userns)
        mount_overlay(lower=lower, upper=store / "upper", work=store / "work", target=target)

    def ids(self) -> list[str]:
        """Sandbox ids holding a range (for the sweep after a crash)."""
        return self._ranges.ids() if self._ranges is not None else []

    def release(self, sandbox_id: str) -> None:
        """Give the sandbox's range back (destroy)."""
        if self._ranges is not None:
            self._ranges.release(sandbox_id)
