"""What ``hutch exec`` says about a stdin it was not asked to send."""

from __future__ import annotations

import os
import stat
import sys


def unsent_stdin_warning(fd: int | None = None) -> str | None:
    """A warning when this process's stdin is a pipe or a file but ``-i`` was not given.

    As with ``docker exec``, stdin is only sent with ``-i``: reading it unasked would swallow
    the input of a shell loop (``while read x; do hutch exec …; done < list``). A pipe without
    ``-i`` is almost always a forgotten ``-i``, so say so instead of silently dropping it.
    A terminal or /dev/null (a character device) gets no warning.
    """
    try:
        st = os.fstat(sys.stdin.fileno() if fd is None else fd)
    except (OSError, ValueError):  # closed, or replaced by something without a descriptor
        return None
    if stat.S_ISFIFO(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_size > 0):
        return (
            "hutch: warning: stdin is a pipe or a file but is not sent to the command; "
            "add -i to send it (hutch exec -i ID -- CMD), or </dev/null to silence this"
        )
    return None
