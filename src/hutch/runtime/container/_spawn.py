"""Running a host tool (`ip`, `nft`, `nsenter`) from the server without forking the server.

NB: the server runs on uvloop, whose subprocess_exec (libuv's uv_spawn) does a plain fork()
of the whole server: its page tables, then a copy-on-write fault for each page the server
writes until the child has exec'd. Traced during a cold create (bench/create_timeline.py and
perf): the server's loop stood still ~20 ms per spawn under load, so the ping it owed the
new agent went out 40 ms after it had connected, and py-spy put 39% of the server's busy time
in `create_subprocess_exec`. `os.posix_spawn` is glibc's clone(CLONE_VM | CLONE_VFORK):
nothing is copied, and the server waits only for the child's exec.
"""

from __future__ import annotations

import asyncio
import os

# A pipe holds 64 KiB: input up to this size is written before the child runs, at once.
_PIPE_SIZE = 64 * 1024


async def run_tool(argv: list[str], stdin: bytes | None = None) -> tuple[int, bytes]:
    """Run `argv` (looked up on PATH) with `stdin` (else /dev/null) and stdout on /dev/null;
    returns its exit code and its stderr.

    Raises:
        FileNotFoundError: no such program.
    """
    loop = asyncio.get_running_loop()
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    in_r, in_w = os.pipe2(os.O_CLOEXEC) if stdin is not None else (devnull, -1)
    try:
        pid = _spawn(argv, in_r, devnull, err_w)
    except BaseException:
        for fd in (err_r, in_w):
            if fd >= 0:
                os.close(fd)
        raise
    finally:
        for fd in {devnull, err_w, in_r}:
            os.close(fd)
    try:
        if stdin is not None:
            try:
                await _feed(loop, in_w, stdin)
            finally:
                os.close(in_w)  # the child's EOF
        stderr, code = await asyncio.gather(_drain(loop, err_r), _exit_code(loop, pid))
    finally:
        os.close(err_r)
    return code, stderr


def _spawn(argv: list[str], stdin: int, stdout: int, stderr: int) -> int:
    """posix_spawn: returns once the child has exec'd (microseconds, fine on the loop)."""
    return os.posix_spawnp(
        argv[0],
        argv,
        os.environ,
        file_actions=[
            (os.POSIX_SPAWN_DUP2, stdin, 0),
            (os.POSIX_SPAWN_DUP2, stdout, 1),
            (os.POSIX_SPAWN_DUP2, stderr, 2),
        ],
    )


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


async def _exit_code(loop: asyncio.AbstractEventLoop, pid: int) -> int:
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
