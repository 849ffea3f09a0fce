"""What write_file knew when it began: whether its target existed.

The watcher (agent/_watch.py) reports a write_file as a create or a modify of the final name.
It cannot find that out itself: it reads inotify's events after the fact, when the temporary file
may already have been renamed onto the target. The write, in the same process, knows; it leaves
the answer here, keyed by its temporary path, for the watcher to read at the rename.
"""

from __future__ import annotations

from collections import OrderedDict

KEEP = 4096  # writes remembered; a watcher reads its events within milliseconds

_existed: OrderedDict[str, bool] = OrderedDict()


def began(temp_path: str, target_existed: bool) -> None:
    _existed[temp_path] = target_existed
    while len(_existed) > KEEP:
        _existed.popitem(last=False)


def target_existed(temp_path: str) -> bool | None:
    """Whether the write through `temp_path` replaced a file; None if it is not known."""
    # NB: read, not taken: several watchers may see the same write.
    return _existed.get(temp_path)
