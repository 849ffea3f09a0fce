"""User and group names for file entries, read from the image's /etc/passwd and /etc/group.

A listing of 10,000 files must not parse /etc/passwd 10,000 times, and a user added by
`useradd` a moment ago must show by name in the next listing: the tables are cached and read
again when the file's mtime or size changes (one stat per listing, not per entry).
"""

from __future__ import annotations

import os

from ._procs import _read_db

_Key = tuple[int, int]


class _Table:
    def __init__(self, path: str) -> None:
        self._path = path
        self._key: _Key | None = None
        self._names: dict[int, str] = {}

    def names(self) -> dict[int, str]:
        try:
            s = os.stat(self._path)
            key: _Key | None = (s.st_mtime_ns, s.st_size)
        except OSError:
            key = None
        if key != self._key:
            self._key = key
            self._names = {
                int(entry[2]): entry[0]
                for entry in _read_db(self._path)
                if len(entry) >= 3 and entry[2].isdigit()
            }
        return self._names


_users = _Table("/etc/passwd")
_groups = _Table("/etc/group")


class Names:
    """One listing's view of the tables: `owner(uid)` / `group(gid)` as names, or the number
    as text when the image has no entry for it (as `ls -l` shows it)."""

    def __init__(self) -> None:
        self._users = _users.names()
        self._groups = _groups.names()

    def owner(self, uid: int) -> str:
        return self._users.get(uid, str(uid))

    def group(self, gid: int) -> str:
        return self._groups.get(gid, str(gid))
