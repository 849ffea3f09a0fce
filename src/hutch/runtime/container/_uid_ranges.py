"""One host uid range per sandbox: allocated, kept with the home, claimed host-wide.

Sandbox `<id>` of a home gets range number `n` (kept in `HUTCH_HOME/uids/<id>`, so a restart
or a recovery keeps it), claimed host-wide in `/run/hutch/uids/<n>` so that two homes on one
host never hand out the same range. Its ids are host `FIRST_BASE + n * ID_RANGE` and the
65535 after it: never the canonical range of stored images and disks (`HOST_ID_BASE`), which
no process runs as, and below 2^32 - 1 (the invalid id).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from hutch.runtime._idmap import HOST_ID_BASE, ID_RANGE

FIRST_BASE = HOST_ID_BASE + 16 * ID_RANGE
MAX_RANGES = (2**32 - 2 - FIRST_BASE) // ID_RANGE
CLAIMS_DIR = Path("/run/hutch/uids")


class UidRangesExhausted(OSError):
    """Every uid range of this host is taken."""


class UidRanges:
    """The ranges of one `HUTCH_HOME`."""

    def __init__(self, home: Path, claims: Path = CLAIMS_DIR) -> None:
        self._state = home / "uids"
        self._claims = claims
        self._tag = str(home.resolve())

    @staticmethod
    def base_of(index: int) -> int:
        return FIRST_BASE + index * ID_RANGE

    def get(self, sandbox_id: str) -> int | None:
        """The first host id of the sandbox's range, None if it has none."""
        try:
            return self.base_of(int((self._state / sandbox_id).read_text()))
        except (OSError, ValueError):
            return None

    def ids(self) -> list[str]:
        if not self._state.is_dir():
            return []
        return [p.name for p in self._state.iterdir() if not p.name.startswith(".")]

    def allocate(self, sandbox_id: str) -> int:
        """The sandbox's range: its kept one (claimed again after a reboot), or a free one."""
        self._state.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._claims.mkdir(mode=0o700, parents=True, exist_ok=True)
        owner = f"{self._tag}/{sandbox_id}"
        with contextlib.suppress(OSError, ValueError):
            kept = int((self._state / sandbox_id).read_text())
            if self._claim(kept, owner):
                return self.base_of(kept)
        index = next((i for i in range(MAX_RANGES) if self._claim(i, owner)), None)
        if index is None:
            raise UidRangesExhausted(f"all {MAX_RANGES} sandbox uid ranges are in use")
        tmp = self._state / f".{sandbox_id}"
        tmp.write_text(str(index))
        os.replace(tmp, self._state / sandbox_id)
        return self.base_of(index)

    def release(self, sandbox_id: str) -> None:
        """Give the range back (destroy). Idempotent."""
        path = self._state / sandbox_id
        with contextlib.suppress(OSError, ValueError):
            index = int(path.read_text())
            claim = self._claims / str(index)
            if claim.read_text() == f"{self._tag}/{sandbox_id}":
                claim.unlink()
        path.unlink(missing_ok=True)

    def _claim(self, index: int, owner: str) -> bool:
        path = self._claims / str(index)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            try:
                return path.read_text() == owner
            except OSError:
                return False
        with os.fdopen(fd, "w") as f:
            f.write(owner)
        return True
