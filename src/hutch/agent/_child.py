"""Starting a child as `subprocess.Popen` starts one, without importing `subprocess`.

`import subprocess` brings `locale`, `re`, `enum`, `selectors`, `warnings` and more with it:
~5 ms of the agent's CPU on a quiet machine, 10-18 ms at load 6. The agent imported it in its
deferred start-up, which runs before its first op, so the first exec in a new sandbox waited
for it (docs/performance.md, "create15"). What Popen does for the agent's spawns is small: it
calls CPython's `_posixsubprocess.fork_exec` (vfork, then the exec, in C) with the argv, the
candidate paths of the program, the environment as bytes and an error pipe, and turns what
the child writes into that pipe into the OSError the exec failed with. `start` does exactly
that, with Popen's own argument handling, and returns the pid and a `returncode` slot (all the
agent keeps of a Popen: its reaper owns the exit).

`fork_exec`'s parameters are CPython's private API and change between versions: these are
Python 3.11's, the interpreter the agent bundle carries. Under any other version `start` is
`subprocess.Popen` (`NATIVE` says which).
"""

from __future__ import annotations

import builtins
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Protocol

    class Started(Protocol):
        """A started child as the agent keeps it: a `Child`, or a Popen."""

        pid: int
        returncode: int | None


NATIVE = sys.version_info[:2] == (3, 11)
_ERRPIPE_MAX = 50_000  # as Popen: what a child writes into its error pipe, at most


class ChildError(Exception):
    """The child failed before its exec for a reason that is no OSError (as Popen's
    SubprocessError: an exception in `preexec_fn`)."""


class Child:
    """A started child: its pid, and the exit status its reaper sets (as on a Popen)."""

    __slots__ = ("pid", "returncode")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None


def start(
    argv: Sequence[str],
    *,
    executable: str | None,
    env: Mapping[str, str],
    cwd: str | None,
    stdin: int | None,
    stdout: int,
    stderr: int,
    pass_fds: Sequence[int] = (),
    preexec_fn: Callable[[], None] | None = None,
    user: int | None = None,
    group: int | None = None,
    extra_groups: Sequence[int] | None = None,
) -> Child:
    """`subprocess.Popen(argv, executable=…, env=…, cwd=…, stdin=stdin or DEVNULL,
    stdout=…, stderr=…, pass_fds=…, close_fds=True, start_new_session=True,
    restore_signals=True, preexec_fn=…, user=…, group=…, extra_groups=…)`, with Popen's
    errors: OSError (with the program or the cwd as its filename) when the exec or the chdir
    fails, ValueError for an environment name with "=" in it.
    """
    from _posixsubprocess import fork_exec  # a C module: no import cost

    program = argv[0] if executable is None else executable
    encoded = os.fsencode(program)
    if os.path.dirname(encoded):
        candidates: tuple[bytes, ...] = (encoded,)
    else:
        # As Popen and os.execvpe: every directory of the child's PATH, in order.
        candidates = tuple(os.path.join(os.fsencode(d), encoded) for d in os.get_exec_path(env))
    env_list = []
    for name, value in env.items():
        key = os.fsencode(name)
        if b"=" in key:
            raise ValueError("illegal environment variable name")
        env_list.append(key + b"=" + os.fsencode(value))
    devnull = os.open(os.devnull, os.O_RDWR) if stdin is None else -1
    errpipe_read, errpipe_write = os.pipe2(os.O_CLOEXEC)
    try:
        pid = fork_exec(
            list(argv),
            candidates,
            True,  # close_fds
            tuple(sorted({*map(int, pass_fds), errpipe_write})),
            cwd,  # type: ignore[arg-type]  # None (stay), as Popen passes it; typeshed says str
            env_list,
            devnull if stdin is None else stdin,  # p2cread
            -1,  # p2cwrite
            -1,  # c2pread
            stdout,  # c2pwrite
            -1,  # errread
            stderr,  # errwrite
            errpipe_read,
            errpipe_write,
            True,  # restore_signals
            True,  # start_new_session
            -1,  # process_group
            group,
            None if extra_groups is None else list(extra_groups),
            user,
            -1,  # umask
            preexec_fn,  # type: ignore[arg-type]  # None too, as Popen passes it
            True,  # vfork when there is no preexec_fn (Popen's _USE_VFORK on Linux)
        )
    finally:
        os.close(errpipe_write)
        if devnull != -1:
            os.close(devnull)
    try:
        failure = bytearray()
        while part := os.read(errpipe_read, _ERRPIPE_MAX):
            failure += part
            if len(failure) > _ERRPIPE_MAX:
                break
    finally:
        os.close(errpipe_read)
    if failure:
        _raise_child_failure(pid, bytes(failure), program, cwd)
    return Child(pid)


def _raise_child_failure(pid: int, failure: bytes, program: str, cwd: str | None) -> None:
    """What Popen raises for what its child wrote into the error pipe before exiting."""
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass  # the agent's reaper took it first
    try:
        name, hex_errno, text = failure.split(b":", 2)
        message = text.decode()
    except ValueError:
        name, hex_errno, message = (
            b"ChildError",
            b"0",
            f"bad exception data from child: {failure!r}",
        )
    kind = getattr(builtins, name.decode("ascii", "replace"), None)
    if not (isinstance(kind, type) and issubclass(kind, OSError)) or not hex_errno:
        raise ChildError(message)
    errno = int(hex_errno, 16)
    # Python 3.11's protocol: "noexec" when the child never reached its exec (its chdir
    # failed: the cwd is the filename), else the program is.
    filename = cwd if message == "noexec" else program
    message = os.strerror(errno) if errno != 0 else ("" if message == "noexec" else message)
    raise kind(errno, message, filename)
