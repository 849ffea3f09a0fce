"""Starting a child with a hard RLIMIT_NPROC without forking the agent (gVisor).

Under gVisor no host cgroup bounds the sandbox's processes: each child gets a hard
RLIMIT_NPROC instead (see ``_workcg``). Setting it between fork and exec takes a
``preexec_fn``, and with one subprocess forks the whole agent rather than vfork-ing it: under
runsc's ptrace platform that fork of a Python process was most of an exec (measured in a
sandbox: Popen of /bin/true 20 ms by vfork, 45-85 ms with a preexec_fn).

So the child is vfork-ed into a tiny static launcher (``/.hutch/preload/hutch-launch``, built
on the host with the preload library, see hutch.runtime.container._gvisor_launch) that sets
the limit on itself and execs the program; the limit is in place before any of the
program's code runs. The launcher looks the program up the way subprocess would (the
candidates are passed to it) and reports a failed exec through a pipe, so a missing or
unrunnable program still raises OSError from ``spawn``, as it does under runc.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from ._child import Started


def candidates(program: str, env: Mapping[str, str]) -> list[str]:
    """The paths subprocess would try for ``program``: itself when it holds a slash, else
    ``program`` in each directory of the child's PATH."""
    if os.path.dirname(program):
        return [program]
    return [os.path.join(d, program) for d in os.get_exec_path(dict(env))]


# As many supplementary groups as the launcher takes; a user in more is started the slow way.
MAX_GROUPS = 64
# Under runc the launcher is built into the agent's code bundle (/.hutch/code), next to the
# `hutch` package: False until looked for.
_bundled: str | None | bool = False


def bundled_launcher() -> str | None:
    """The launcher in the agent's code bundle, when the host could build it (a C compiler):
    children that run as another user go through it, since subprocess forks the whole agent
    (no vfork) when it changes the user itself."""
    global _bundled
    if _bundled is False:
        code = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        path = os.path.join(code, "hutch-launch")
        _bundled = path if os.access(path, os.X_OK) else None
    return _bundled if isinstance(_bundled, str) else None


def launcher_argv(
    launcher: str,
    nproc: int | None,
    err_fd: int,
    paths: list[str],
    user: tuple[int, int, list[int]] | None = None,
) -> list[str]:
    """The launcher's own arguments, before the program's argv. `nproc` None: no limit;
    `user`: (uid, gid, groups) to become before the exec."""
    ids = [] if user is None else ["-u", str(user[0]), str(user[1]), ",".join(map(str, user[2]))]
    limit = "-" if nproc is None else str(nproc)
    return [launcher, *ids, limit, str(err_fd), str(len(paths)), *paths]


def launch(
    launcher: str,
    nproc: int | None,
    args: Sequence[str],
    env: Mapping[str, str],
    start: Callable[[list[str], tuple[int, ...]], Started],
    executable: str | None = None,
    user: tuple[int, int, list[int]] | None = None,
) -> Started:
    """``start(argv, pass_fds)`` (a Popen with no ``preexec_fn``) through the launcher;
    ``executable`` is the program to run with ``args`` as its argv, when not ``args[0]``;
    ``user``: (uid, gid, groups) it switches to first (then ``start`` passes no user= itself).

    Raises:
        OSError: as subprocess would, with the program as its filename, when the program
            cannot be executed (the launcher has then exited and been reaped).
    """
    program = executable if executable is not None else args[0]
    paths = candidates(program, env)
    if not paths:
        raise FileNotFoundError(2, os.strerror(2), program)
    err_r, err_w = os.pipe()
    try:
        try:
            popen = start([*launcher_argv(launcher, nproc, err_w, paths, user), *args], (err_w,))
        finally:
            os.close(err_w)
        # EOF: the launcher's exec of the program closed the pipe (it is close-on-exec
        # there). Four bytes: the errno of the failed exec.
        report = b""
        while len(report) < 4:
            chunk = os.read(err_r, 4 - len(report))
            if not chunk:
                break
            report += chunk
    finally:
        os.close(err_r)
    if len(report) < 4:
        return popen
    try:
        _, status = os.waitpid(popen.pid, 0)
        popen.returncode = os.waitstatus_to_exitcode(status)
    except ChildProcessError:  # reaped already
        popen.returncode = 127
    errno = int.from_bytes(report, sys.byteorder)  # the launcher writes a native int
    raise OSError(errno, os.strerror(errno), program)
