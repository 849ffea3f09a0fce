"""Running a host tool (`runc`, `runsc`, `ip`, `nft`, `nsenter`, `btrfs`, `unshare`) from the
server without forking the server.

NB: the server runs on uvloop, whose subprocess_exec (libuv's uv_spawn) does a plain fork()
of the whole server: its page tables, then a copy-on-write fault for each page the server
writes until the child has exec'd. Traced during a cold create (bench/create_timeline.py and
perf): the server's loop stood still ~20 ms per spawn under load, so the ping it owed the
new agent went out 40 ms after it had connected, and py-spy put 39% of the server's busy time
in `create_subprocess_exec`. `os.posix_spawn` is glibc's clone(CLONE_VM | CLONE_VFORK):
nothing is copied, and the server waits only for the child's exec.

`run_tool` runs a tool to its end and returns what it wrote; `spawn` + `exit_code` start one
that keeps running (or gets fds of its own, as `runc run` does) and wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import functools
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

_T = TypeVar("_T")
_CLONE_NEWNET = 0x40000000

# A pipe holds 64 KiB: input up to this size is written before the child runs, at once.
_PIPE_SIZE = 64 * 1024
# The parent's copies of the child's fds go at or above this number, above every target.
_HIGH_FD = 64


@dataclass(frozen=True, slots=True)
class ToolOutput:
    exit_code: int
    stdout: bytes  # b"" unless asked for
    stderr: bytes


async def run_tool(
    argv: Sequence[str],
    stdin: bytes | None = None,
    *,
    capture_stdout: bool = False,
    env: Mapping[str, str] | None = None,
    new_session: bool = False,
    netns: str | None = None,
) -> ToolOutput:
    """Run `argv` (looked up on PATH) to its end with `stdin` (else /dev/null) and stdout on
    /dev/null (or captured); returns its exit code, stdout and stderr.

    `netns` (a network namespace's path, say `/proc/PID/ns/net`): the tool runs in it, as
    under `nsenter --net=PATH`, without an `nsenter` process (see `in_netns`).

    `env` (else the server's) is its environment; `new_session` puts it in a session of its
    own (a Ctrl-C at the server's terminal does not reach it). Cancelling the call leaves
    the tool to finish and reaps it, as asyncio's `communicate` leaves it running.

    Raises:
        FileNotFoundError: no such program.
    """
    loop = asyncio.get_running_loop()
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC) if capture_stdout else (-1, -1)
    in_r, in_w = os.pipe2(os.O_CLOEXEC) if stdin is not None else (-1, -1)
    try:
        start = functools.partial(
            spawn,
            argv,
            stdin=in_r if in_r >= 0 else None,
            stdout=out_w if out_w >= 0 else None,
            stderr=err_w,
            env=env,
            new_session=new_session,
        )
        pid = start() if netns is None else in_netns(netns, start)
    except BaseException:
        for fd in (err_r, in_w, out_r):
            if fd >= 0:
                os.close(fd)
        raise
    finally:
        for fd in (err_w, in_r, out_w):
            if fd >= 0:
                os.close(fd)
    to_close = [fd for fd in (err_r, out_r, in_w) if fd >= 0]

    async def feed() -> bytes:
        if stdin is not None:
            await _feed(loop, in_w, stdin)
            to_close.remove(in_w)
            os.close(in_w)  # the child's EOF
        return b""

    # NB: fed while its output is read: a tool that writes much before it has read all
    # its input would otherwise block on a full pipe, and we on its input.
    try:
        _, out, err, code = await asyncio.gather(
            feed(),
            _drain(loop, out_r) if out_r >= 0 else _nothing(),
            _drain(loop, err_r),
            exit_code(pid),
        )
    finally:
        for fd in to_close:
            os.close(fd)
    return ToolOutput(code, out, err)


def spawn(
    argv: Sequence[str],
    *,
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int,
    fds: Sequence[int] = (),
    env: Mapping[str, str] | None = None,
    new_session: bool = False,
) -> int:
    """Start `argv` (looked up on PATH) with `stdin`, `stdout` (None: /dev/null), `stderr`
    as its fds 0-2 and `fds` as its 3, 4, …, and no other fd of the server's; returns its
    pid (wait for it with `exit_code`). posix_spawn returns once the child has exec'd:
    microseconds, fine on the loop.

    Raises:
        FileNotFoundError: no such program.
    """
    # Copies above every target number first: dup2 in order would otherwise clobber a
    # source that happens to sit at a later target (say fds=(7, 3)).
    sources: list[int] = []
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC) if None in (stdin, stdout) else -1
    try:
        for fd in (devnull if stdin is None else stdin, devnull if stdout is None else stdout):
            sources.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD))
        for fd in (stderr, *fds):
            sources.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD))
        return os.posix_spawnp(
            argv[0],
            list(argv),
            os.environ if env is None else env,
            file_actions=[
                *_inherited_closes(),
                *((os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(sources)),
            ],
            setsid=new_session,
        )
    finally:
        for fd in sources:
            os.close(fd)
        if devnull >= 0:
            os.close(devnull)


@functools.cache
def _setns() -> Callable[[int, int], int]:
    return ctypes.CDLL(None, use_errno=True).setns


def in_netns(path: str, fn: Callable[[], _T]) -> _T:
    """`fn()` called in the network namespace at `path`, and its result (or exception).

    A network namespace is a thread's own (setns(2) with CLONE_NEWNET changes the calling
    thread only), and what a thread spawns or opens under /proc/sys/net belongs to the
    namespace of that thread: so `fn` runs in a thread made for it, which enters the
    namespace and ends after `fn`, never going back to a pool in the wrong namespace. This
    replaced an `nsenter` (and a `sh`) per tool of a sandbox's network attach: ~1 ms of CPU
    each. Blocks the caller for a thread's start, the setns and `fn` (a spawn: its exec).
    """
    outcome: list[_T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _setns()(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {path}: {os.strerror(err)}")
            finally:
                os.close(fd)
            outcome.append(fn())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="hutch-netns", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def _inherited_closes() -> list[tuple[int, int]]:
    """Close actions for the server's fds that an exec would keep (not close-on-exec: say
    inherited from whatever started the server), as subprocess's close_fds closes them.
    Python opens every fd close-on-exec, so this is nearly always empty."""
    closes = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):  # the listing's own fd, or one closed since
                if not fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC:
                    closes.append((os.POSIX_SPAWN_CLOSE, fd))
    return closes


async def exit_code(pid: int) -> int:
    """The exit code of our child `pid` (-N for signal N), waited for through a pidfd: no
    blocked thread. Cancelled, it still reaps the child (once it exits) in a thread."""
    loop = asyncio.get_running_loop()
    pidfd = os.pidfd_open(pid)
    exited: asyncio.Future[None] = loop.create_future()

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(pidfd, on_exit)
    try:
        await exited
    except asyncio.CancelledError:
        # Still reap it, or it lingers as a zombie for the life of the server.
        loop.run_in_executor(None, os.waitpid, pid, 0)
        raise
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    return _reap(pid)


def _reap(pid: int) -> int:
    _, status = os.waitpid(pid, 0)  # the pidfd said it exited: this does not block
    return os.waitstatus_to_exitcode(status)


async def _feed(loop: asyncio.AbstractEventLoop, fd: int, data: bytes) -> None:
    """Write all of `data` to `fd` (a small input at once; a big one from a thread, while
    the child reads it)."""
    try:
        if len(data) <= _PIPE_SIZE:
            os.write(fd, data)  # NB: fits the empty pipe: never blocks
        else:
            await loop.run_in_executor(None, _write_all, fd, data)
    except BrokenPipeError:
        pass  # the child exited without reading it all: its exit code says why


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def _nothing() -> bytes:
    return b""


async def _drain(loop: asyncio.AbstractEventLoop, fd: int) -> bytes:
    """Everything written to the pipe `fd` until its writers are gone."""
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        if chunk:
            chunks.append(chunk)
        elif not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
    return b"".join(chunks)
