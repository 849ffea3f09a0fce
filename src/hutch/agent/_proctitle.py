"""The agent's name in ``ps`` and ``top``: ``hutch-agent``, not the loader's command line.

PID 1 is started as ``/.hutch/lib/ld-linux-x86-64.so.2 --library-path … python3.11 -I -S -c …``
(it must run in any image, see runtime/_agent_bundle.py), which is what ``ps`` would show.
``top`` shows the thread name (``comm``), set with ``prctl(PR_SET_NAME)``. ``ps``'s COMMAND is
``/proc/self/cmdline``: the kernel reads it from the process's own argv area, whose bounds are
in ``/proc/self/stat``. Overwriting that area in place is what ``setproctitle`` does; moving it
(``PR_SET_MM_ARG_START``) would need CAP_SYS_RESOURCE, which the sandbox does not have.
"""

from __future__ import annotations

AGENT_TITLE = b"hutch-agent"
_PR_SET_NAME = 15
# /proc/self/stat fields 48 and 49 (arg_start, arg_end), counted after the ")" that ends comm:
# the fields there start at number 3.
_ARG_START_INDEX = 48 - 3


def set_process_title(title: bytes = AGENT_TITLE) -> None:
    """Make ``comm`` and ``cmdline`` read ``title``. Raises OSError if /proc is unreadable."""
    from ._cfunc import memmove, prctl

    prctl(_PR_SET_NAME, title[:15])  # comm holds 15 bytes
    with open("/proc/self/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    start, end = int(fields[_ARG_START_INDEX]), int(fields[_ARG_START_INDEX + 1])
    size = end - start
    if size < 2:
        return
    title = title[: size - 2]
    # NB: the last byte must not be NUL: the kernel then takes the area as a retitled one and
    # reads /proc/self/cmdline up to the first NUL ("hutch-agent"), not the whole area with the
    # NUL padding that once held the loader's arguments. CPython keeps its own copies of argv.
    area = title + b"\0" * (size - len(title) - 1) + b" "
    memmove(start, area)
